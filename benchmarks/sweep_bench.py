"""Wall-clock of a whole ``sweep``/``ablate`` command, process start included, per stage.

Run: ``python -m benchmarks.sweep_bench [options] -- sweep --shots 0,1,5,10,20 --wandb disabled``.
Everything after ``--`` is the ``python -m semclip_bench`` command line (default: the default
sweep without W&B). It runs in a fresh child process (interpreter start, imports, backbone build,
data loading: everything a user waits for), timed from the parent; the run's own stage seconds
come from the ``provenance.json`` it writes (one per rank with ``--devices N``). The numbers are
printed and written as a section of ``results/performance.md`` (keyed by device, command and
feature-cache mode; a re-run replaces its section).

``--feature-cache``: ``cold`` (default) gives the run an empty on-disk feature store, so its
features are extracted (and written); ``warm`` runs the command twice on one fresh store and
reports both runs (the second reads every feature from disk); ``off`` adds
``--no-feature-cache``; ``as-is`` uses the store the environment names. Each run gets its own
``--out`` folder (unless the command names one) so no episode is resumed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make ``benchmarks`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._sections import write_section

DEFAULT_COMMAND = ("sweep", "--shots", "0,1,5,10,20", "--wandb", "disabled")
MODES = ("cold", "warm", "off", "as-is")
KINDS = {"sweep": "sweep", "ablate": "ablation"}


def _option(command: list[str], flag: str) -> str | None:
    """The value of ``flag`` in a command line (``--flag v`` or ``--flag=v``), else None."""
    for i, arg in enumerate(command):
        if arg == flag and i + 1 < len(command):
            return command[i + 1]
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
    return None


def run_once(
    command: list[str], out: Path, env: dict[str, str], cwd: Path | None = None
) -> dict[str, Any]:
    """Run ``python -m semclip_bench <command>`` in a child process; wall time and provenance."""
    full = [*command]
    if _option(command, "--out") is None:
        full += ["--out", str(out)]
    argv = [sys.executable, "-m", "semclip_bench", *full]
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    before = _children_cpu()
    start = time.perf_counter()
    completed = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True)
    wall = time.perf_counter() - start
    cpu = _children_cpu() - before
    tail = (completed.stdout + completed.stderr)[-3000:]
    if completed.returncode != 0:
        raise RuntimeError(f"command failed (exit {completed.returncode}):\n{tail}")
    kind = KINDS.get(command[0], command[0])
    folder = Path(_option(full, "--out")) / kind
    ranks = [json.loads(p.read_text()) for p in sorted(folder.rglob("provenance.json"))]
    if not ranks:
        raise RuntimeError(f"no provenance.json under {folder}:\n{tail}")
    return {
        "command": full,
        "wall": wall,
        "cpu": cpu,
        "load": load,
        "ranks": ranks,
        "stdout": completed.stdout,
    }


def _children_cpu() -> float:
    """User + system CPU seconds of the finished child processes (and their children)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def tables_seconds(stdout: str) -> float | None:
    """Seconds the command spent writing its tables (its ``tables: PATH (Xs)`` line)."""
    found = re.findall(r"^tables: .* \(([0-9.]+)s\)$", stdout, flags=re.MULTILINE)
    return float(found[-1]) if found else None


def join_seconds(stdout: str) -> float:
    """Seconds from rank 0's return to every rank's exit (its ``processes:`` line; 0 if none)."""
    found = re.findall(r"^processes: every rank exited ([0-9.]+)s after", stdout, re.MULTILINE)
    return float(found[-1]) if found else 0.0


def _stages_table(runs: list[tuple[str, dict[str, Any]]]) -> str:
    names: list[str] = []
    for _, run in runs:
        for prov in run["ranks"]:
            names += [k for k in prov.get("stage_seconds", {}) if k not in names]
    lines = [
        "| run | wall s (process) | CPU s (process) | run s (in process) | "
        + " | ".join(names)
        + " | join | tables | rest | episodes |",
        "|---" * (len(names) + 8) + "|",
    ]
    for label, run in runs:
        for rank, prov in enumerate(run["ranks"]):
            who = label if len(run["ranks"]) == 1 else f"{label}, rank {rank}"
            stages = prov.get("stage_seconds", {})
            cells = [f"{stages[n]:.1f}" if n in stages else "-" for n in names]
            wall = f"{run['wall']:.1f}" if rank == 0 else ""
            cpu = f"{run['cpu']:.1f}" if rank == 0 else ""
            tables = join = rest = ""
            if rank == 0 and (seconds := tables_seconds(run.get("stdout", ""))) is not None:
                joined = join_seconds(run.get("stdout", ""))
                tables, join = f"{seconds:.1f}", f"{joined:.1f}"
                # the slowest rank's run: rank 0 recorded its own before the final barrier
                slowest = max(float(r.get("wall_seconds", 0)) for r in run["ranks"])
                inside = slowest + float(stages.get("startup", 0))
                rest = f"{run['wall'] - inside - joined - seconds:.1f}"
            lines.append(
                f"| {who} | {wall} | {cpu} | {prov.get('wall_seconds', float('nan')):.1f} | "
                + " | ".join(cells)
                + f" | {join} | {tables} | {rest} | {prov.get('episodes_written', '?')} |"
            )
    return "\n".join(lines) + "\n"


def section_body(
    runs: list[tuple[str, dict[str, Any]]], mode: str, argv: list[str], notes: list[str] = ()
) -> str:
    first = runs[0][1]["ranks"][0]
    lines = [
        f"- date: {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- device: {first.get('device', '?')} (devices: {first.get('devices', 1)}, precision: "
        f"{first.get('precision', '?')})",
        f"- commit: {first.get('git_commit', '?')}; torch {first.get('torch', '?')}, "
        f"Python {first.get('python', '?')}",
        f"- backbone: {first.get('backbone', '?')} ({first.get('weights', '?')})",
        "- command: python -m semclip_bench " + " ".join(map(shlex.quote, runs[0][1]["command"])),
        "- benchmark: python -m benchmarks.sweep_bench " + " ".join(map(shlex.quote, argv)),
        f"- feature cache: {mode}",
        *(f"- note: {note}" for note in notes),
    ]
    if hasattr(os, "getloadavg"):  # other processes make CPU timings noisy
        lines.append(
            "- load average (1/5/15 min) at the start: "
            + " / ".join(f"{x:.1f}" for x in runs[0][1]["load"])
            + "; at the end: "
            + " / ".join(f"{x:.1f}" for x in os.getloadavg())
        )
    text = "\n".join(lines) + "\n\n" + _stages_table(runs)
    if len(runs) == 2:
        ratio = runs[1][1]["wall"] / runs[0][1]["wall"]
        text += f"\nSecond run / first run (process wall): {ratio:.1%}.\n"
    text += "\nCache lines:\n\n" + "".join(
        f"- {label}: {prov.get('cache', '')}\n" for label, run in runs for prov in run["ranks"][:1]
    )
    text += (
        "\nwall = the child process from start to exit (interpreter start, imports, backbone, "
        "data, episodes, tables); CPU = its user + system CPU seconds (all its threads and "
        "processes); run = the runner's own wall-clock; stages = provenance "
        "stage_seconds (metrics may overlap the next episode on the scoring thread); join = "
        "from rank 0's return to every rank's exit (several processes); tables = writing the "
        "tables and plots after the run; rest = wall - startup - the slowest rank's run - join - "
        "tables (interpreter start before the clock, process exit).\n"
    )
    return text


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    own, command = argv, []
    if "--" in argv:
        cut = argv.index("--")
        own, command = argv[:cut], argv[cut + 1 :]
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.sweep_bench",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--feature-cache", choices=MODES, default="cold")
    parser.add_argument("--md", type=Path, default=Path("results/performance.md"))
    parser.add_argument("--no-write", action="store_true", help="print only")
    parser.add_argument(
        "--label", default="", help="added to the section key (e.g. 'before', 'after')"
    )
    parser.add_argument("--note", action="append", default=[], help="a line added to the section")
    parser.add_argument(
        "--code",
        type=Path,
        default=Path(__file__).resolve().parents[1],
        help="checkout whose semclip_bench package runs (e.g. an older commit, for before/after); "
        "the command then runs in that folder, so give it absolute paths",
    )
    args = parser.parse_args(own)
    command = command or list(DEFAULT_COMMAND)
    if command[0] not in KINDS:
        parser.error(f"the command after -- must start with sweep or ablate, got {command[0]!r}")
    return args, command


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args, command = parse_args(argv)
    if args.feature_cache == "off" and "--no-feature-cache" not in command:
        command = [*command, "--no-feature-cache"]
    code = args.code.resolve()
    here = Path(__file__).resolve().parents[1]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(code), env.get("PYTHONPATH", "")]))
    if code == here:
        code = None  # run where we are: relative paths in the command keep their meaning
    runs: list[tuple[str, dict[str, Any]]] = []
    with tempfile.TemporaryDirectory(prefix="sweep_bench-") as tmp:
        if args.feature_cache in {"cold", "warm"}:
            env["SEMCLIP_BENCH_FEATURES"] = str(Path(tmp) / "features")
        labels = ["first", "second"] if args.feature_cache == "warm" else [args.feature_cache]
        for label in labels:
            run = run_once(command, Path(tmp) / f"out-{label}", env, cwd=code)
            print(f"{label}: {run['wall']:.1f}s wall ({' '.join(run['command'])})", flush=True)
            for prov in run["ranks"]:
                print(f"  stages: {prov.get('stage_seconds')}\n  {prov.get('cache', '')}")
            runs.append((label, run))
    body = section_body(runs, args.feature_cache, argv, args.note)
    print(body)
    if not args.no_write:
        first = runs[0][1]["ranks"][0]
        key = (
            f"sweep_bench | {first.get('device', '?')} x{first.get('devices', 1)} | "
            f"{' '.join(command)} | cache {args.feature_cache}"
            + (f" | {args.label}" if args.label else "")
        )
        write_section(args.md, key, body)
        print(f"written: {args.md}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
