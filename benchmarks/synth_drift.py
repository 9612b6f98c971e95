"""Does sem-synth's content depend on library versions? Generate it in side environments, compare.

Each environment is a fresh virtual environment with only the libraries the generator's package
imports (NumPy, SciPy, OpenCV; Pillow too, as a user's environment would have it) at the versions
named below, and this checkout on ``PYTHONPATH``. In each, the default ``sem-synth`` test and
validation datasets are generated and their content digests (``synth.json``) and dataset digests
(what tables name in their provenance) printed. Identical digests in every environment mean the
data does not drift with these libraries.

    python -m benchmarks.synth_drift                 # every set below, plus this interpreter
    python -m benchmarks.synth_drift --sets oldest   # one set
    python -m benchmarks.synth_drift --out results/synth_drift.md

Needs the package registry (pip downloads the wheels) and a few minutes on 2 cores. Not run in CI.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

#: Version sets: the oldest NumPy/SciPy that pyproject.toml admits with the oldest OpenCV checked,
#: and the newest releases, with each OpenCV minor version the issue names.
VERSION_SETS: dict[str, dict[str, str]] = {
    "oldest": {
        "numpy": "1.26.4",
        "scipy": "1.10.1",
        "opencv-python-headless": "4.10.0.84",
        "pillow": "10.4.0",
    },
    "opencv-5.0": {
        "numpy": "2.2.6",
        "scipy": "1.15.3",
        "opencv-python-headless": "5.0.0.93",
        "pillow": "11.3.0",
    },
    "newest": {
        "numpy": "2.4.6",
        "scipy": "1.17.1",
        "opencv-python-headless": "5.1.0.95",
        "pillow": "13.0.0",
    },
}

#: Run inside each environment: generate both variants and print their digests as JSON.
_PROBE = r"""
import json, sys, tempfile
from pathlib import Path
import cv2, numpy, scipy
from semclip_bench.data.dataset import load_dataset
from semclip_bench.data.digest import dataset_digest
from semclip_bench.data.synth import generate
from semclip_bench.data.synth_cache import variant_config
out = {"numpy": numpy.__version__, "scipy": scipy.__version__, "opencv": cv2.__version__}
try:
    import PIL
    out["pillow"] = PIL.__version__
except ImportError:
    out["pillow"] = "-"
with tempfile.TemporaryDirectory() as tmp:
    for variant in ("test", "val"):
        root = Path(tmp) / variant
        report = generate(root, variant_config(variant), workers=int(sys.argv[1]))
        out[variant] = {
            "content": report.content_digest,
            "dataset": dataset_digest(load_dataset(str(root))),
            "images": report.n_images,
        }
print(json.dumps(out))
"""


def _probe(python: str, workers: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [python, "-c", _PROBE, str(workers)],
        env=env,
        capture_output=True,
        text=True,
        cwd=tempfile.gettempdir(),
    )
    if done.returncode != 0:
        raise SystemExit(f"error: the probe failed under {python}:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _make_env(folder: Path, pins: dict[str, str]) -> str:
    subprocess.run([sys.executable, "-m", "venv", str(folder)], check=True)
    python = str(folder / "bin" / "python")
    wanted = [f"{name}=={version}" for name, version in pins.items()]
    subprocess.run(
        [python, "-m", "pip", "install", "-q", "--only-binary=:all:", *wanted], check=True
    )
    return python


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sets", default=",".join(VERSION_SETS), help="comma-separated names of VERSION_SETS"
    )
    parser.add_argument("--workers", type=int, default=2, help="generator processes")
    parser.add_argument("--out", type=Path, help="also write the table to this Markdown file")
    args = parser.parse_args(argv)
    names = [n for n in args.sets.split(",") if n]
    unknown = [n for n in names if n not in VERSION_SETS]
    if unknown:
        parser.error(f"--sets: unknown {', '.join(unknown)} (known: {', '.join(VERSION_SETS)})")

    rows: list[tuple[str, dict]] = []
    start = time.perf_counter()
    rows.append(("this interpreter", _probe(sys.executable, args.workers)))
    with tempfile.TemporaryDirectory(prefix="synth_drift-") as tmp:
        for name in names:
            python = _make_env(Path(tmp) / name, VERSION_SETS[name])
            rows.append((name, _probe(python, args.workers)))
    seconds = time.perf_counter() - start

    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
    ).stdout.strip()
    lines = [
        "# sem-synth digests across library versions",
        "",
        f"Command: `python -m benchmarks.synth_drift --sets {','.join(names)}` at commit "
        f"`{commit or 'unknown'}`; Python {platform.python_version()}, {platform.machine()}; "
        f"{seconds:.0f} s.",
        "",
        "| environment | numpy | scipy | opencv | pillow | test content | test dataset "
        "| val content | val dataset |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in rows:
        lines.append(
            f"| {name} | {r['numpy']} | {r['scipy']} | {r['opencv']} | {r['pillow']} "
            f"| `{r['test']['content'][:12]}` | `{r['test']['dataset'][:12]}` "
            f"| `{r['val']['content'][:12]}` | `{r['val']['dataset'][:12]}` |"
        )
    keys = {(r["test"]["dataset"], r["val"]["dataset"]) for _, r in rows}
    verdict = (
        "All environments give identical digests."
        if len(keys) == 1
        else f"DIGESTS DIFFER: {len(keys)} distinct results."
    )
    lines += ["", verdict, ""]
    text = "\n".join(lines)
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    return 0 if len(keys) == 1 else 1


if __name__ == "__main__":
    raise SystemExit(main())
