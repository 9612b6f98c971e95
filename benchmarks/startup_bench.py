"""Start-up cost of the CLI: whole-process wall time of ``python -m semclip_bench --help`` (and
other light commands), with the heavy packages each one imports.

Run: ``python -m benchmarks.startup_bench [--runs 7] [--baseline COMMIT] [--device TEXT]``.
Each command runs ``--runs`` times in a fresh interpreter (after one unmeasured warm-up run, so
bytecode is compiled); the median wall time is reported with min and max. ``--baseline COMMIT``
also times the same commands on that commit's package (``git archive`` into a temporary folder)
in alternation with this checkout's, so both see the same machine load. The import profile is
``python -X importtime`` of one run: the summed top-level import time and the heavy packages
loaded. Results are printed and written as a section of ``results/performance.md``.
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make ``benchmarks`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._sections import write_section

REPO = Path(__file__).resolve().parents[1]
COMMANDS: tuple[tuple[str, ...], ...] = (
    ("--help",),
    ("sweep", "--help"),
    ("data", "check", "--help"),
)
HEAVY = ("torch", "lightning", "wandb", "matplotlib", "open_clip", "timm", "pandas", "cv2")


def _git(*args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.strip()


def _extract(commit: str, into: Path) -> Path:
    """The package of ``commit`` (``git archive``), unpacked under ``into``; returns its root."""
    data = subprocess.run(
        ["git", "archive", commit, "semclip_bench"], cwd=REPO, capture_output=True, check=True
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(data)) as archive:
        archive.extractall(into, filter="data")
    return into


def _argv(args: tuple[str, ...], importtime: bool = False) -> list[str]:
    flags = ["-X", "importtime"] if importtime else []
    return [sys.executable, *flags, "-m", "semclip_bench", *args]


def _time_once(root: Path, args: tuple[str, ...]) -> float:
    env = {**os.environ, "PYTHONPATH": str(root)}
    start = time.perf_counter()
    subprocess.run(_argv(args), cwd=root, env=env, capture_output=True, check=True)
    return time.perf_counter() - start


def import_profile(root: Path, args: tuple[str, ...]) -> tuple[float, list[str]]:
    """(summed top-level import seconds, heavy packages imported) of one run under importtime."""
    env = {**os.environ, "PYTHONPATH": str(root)}
    done = subprocess.run(
        _argv(args, importtime=True), cwd=root, env=env, capture_output=True, text=True, check=True
    )
    total, loaded = 0, set()
    for line in done.stderr.splitlines():
        if not line.startswith("import time:") or "cumulative" in line:
            continue
        _, cumulative, name = line[len("import time:") :].split("|", 2)
        name = name[1:]
        if not name.startswith(" "):  # a top-level import: its cumulative time counts once
            total += int(cumulative)
        if name.strip() in HEAVY:
            loaded.add(name.strip())
    return total / 1e6, sorted(loaded)


def measure(roots: dict[str, Path], runs: int) -> dict[tuple[str, str], list[float]]:
    """Wall seconds per (label, command), the labels' runs alternating."""
    times: dict[tuple[str, str], list[float]] = {}
    for args in COMMANDS:
        for root in roots.values():
            _time_once(root, args)  # warm-up: bytecode, file cache
        for _ in range(runs):
            for label, root in roots.items():
                times.setdefault((label, " ".join(args)), []).append(_time_once(root, args))
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=7, help="timed runs per command and tree")
    parser.add_argument("--baseline", help="git commit to compare with (e.g. the one before)")
    parser.add_argument("--device", default="2-core shared CPU VM", help="machine, in words")
    parser.add_argument("--label", default="cli-help", help="section key suffix")
    parser.add_argument("--out", type=Path, default=REPO / "results" / "performance.md")
    args = parser.parse_args(argv)

    head = _git("rev-parse", "--short", "HEAD")
    dirty = " (with uncommitted changes)" if _git("status", "--porcelain", "semclip_bench") else ""
    with tempfile.TemporaryDirectory(prefix="startup-bench-") as tmp:
        roots = {f"{head}{dirty}": REPO}
        if args.baseline:
            base = _git("rev-parse", "--short", args.baseline)
            roots = {base: _extract(args.baseline, Path(tmp)), **roots}
        load = os.getloadavg()
        times = measure(roots, args.runs)
        profiles = {label: import_profile(root, ("--help",)) for label, root in roots.items()}

    lines = [
        f"- date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC",
        f"- device: {args.device} ({os.cpu_count()} CPUs seen)",
        f"- commit: {', '.join(roots)}; Python {sys.version.split()[0]}",
        f"- command: python -m benchmarks.startup_bench --runs {args.runs}"
        + (f" --baseline {args.baseline}" if args.baseline else ""),
        "- timed: `python -m semclip_bench ARGS`, whole process (interpreter start to exit), "
        f"median of {args.runs} runs after one warm-up, trees alternating",
        f"- load average (1/5/15 min) at the start: {' / '.join(f'{x:.1f}' for x in load)}",
        "",
        "| commit | command | wall s median | min | max |",
        "|---|---|---|---|---|",
    ]
    for (label, command), values in times.items():
        lines.append(
            f"| {label} | `{command}` | {statistics.median(values):.3f} | {min(values):.3f} | "
            f"{max(values):.3f} |"
        )
    lines += ["", "`python -X importtime -m semclip_bench --help`:", ""]
    lines += ["| commit | top-level imports s | heavy packages imported |", "|---|---|---|"]
    for label, (seconds, loaded) in profiles.items():
        lines.append(f"| {label} | {seconds:.3f} | {', '.join(loaded) or 'none'} |")
    body = "\n".join(lines)
    print(body)
    write_section(args.out, f"startup_bench | {args.device} | {args.label}", body)
    print(f"\nwritten to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
