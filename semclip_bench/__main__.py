"""Entry point for ``python -m semclip_bench``."""

from semclip_bench.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
