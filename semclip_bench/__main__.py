"""Entry point for ``python -m semclip_bench``."""

import gc

from semclip_bench.cli import main

if __name__ == "__main__":
    code = main()
    # Everything is written. Exempt the remaining objects from the cyclic collector: the
    # interpreter's shutdown then skips collecting the ~10^6 objects of torch, Lightning,
    # open_clip and timm, a large share of a short command's wall time; reference-counted
    # cleanup (files, threads) still runs.
    gc.freeze()
    raise SystemExit(code)
