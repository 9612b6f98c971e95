"""Before/after timing of one command, the two runs side by side, and whether their rows agree.

Run: ``python -m benchmarks.ab_bench --base /path/to/old/checkout [options] -- sweep ...``.
Everything after ``--`` is the ``python -m semclip_bench`` command line. The old code (``--base``,
a checkout or ``git archive`` of the earlier commit) and this checkout run the same command *at
the same time*, each in its own child process with its own empty feature store and output folder,
so on a shared machine both see the same load (a sequential before/after would compare two
different loads). ``--rounds N`` repeats the pair and reports the median of each stage. The rows
of every round are compared with ``benchmarks.compare_runs`` (episodes identical to the last bit
per method). With a reference run's provenance (``--project``, e.g. ``results/sweep``) each of
its stage seconds is multiplied by the measured after/before ratio of that stage: a projection,
stated as one, not a measurement. The result is a keyed section of ``results/performance.md``.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
import tempfile
import threading
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make ``benchmarks`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import os

from benchmarks._sections import write_section
from benchmarks.compare_runs import compare
from benchmarks.sweep_bench import KINDS, run_once


def _pair(command: list[str], base: Path, here: Path, tmp: Path) -> dict[str, dict[str, Any]]:
    """Run ``command`` with the old and the new code at once; their results by label."""
    results: dict[str, dict[str, Any]] = {}
    errors: list[BaseException] = []

    def one(label: str, code: Path) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = str(code)
        env["SEMCLIP_BENCH_FEATURES"] = str(tmp / f"features-{label}")
        try:
            results[label] = run_once(command, tmp / f"out-{label}", env, cwd=code)
        except BaseException as error:  # reported after both have ended
            errors.append(error)

    threads = [
        threading.Thread(target=one, args=("before", base)),
        threading.Thread(target=one, args=("after", here)),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results


def _rows(run: dict[str, Any]):
    from semclip_bench.runner.record.row_store import read_rows

    command = run["command"]
    out = Path(command[command.index("--out") + 1]) / KINDS.get(command[0], command[0])
    return read_rows([out])


def _stages(run: dict[str, Any]) -> dict[str, float]:
    stages: dict[str, float] = {"wall (process)": run["wall"]}
    for name, seconds in run["ranks"][0].get("stage_seconds", {}).items():
        stages[name] = float(seconds)
    return stages


def section_body(
    rounds: list[dict[str, dict[str, Any]]],
    agreement: list[str],
    argv: list[str],
    base_label: str,
    project: Path | None,
) -> str:
    after = rounds[0]["after"]["ranks"][0]
    before = rounds[0]["before"]["ranks"][0]
    names: list[str] = []
    for pair in rounds:
        for label in ("before", "after"):
            names += [n for n in _stages(pair[label]) if n not in names]
    median = {
        label: {
            n: statistics.median(_stages(p[label]).get(n, float("nan")) for p in rounds)
            for n in names
        }
        for label in ("before", "after")
    }
    lines = [
        f"- date: {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- device: {after.get('device', '?')}, both runs at once (same load), "
        f"{len(rounds)} round(s), medians",
        f"- before: {base_label} (commit recorded by the run: {before.get('git_commit', '?')})",
        f"- after: commit {after.get('git_commit', '?')}; torch {after.get('torch', '?')}",
        "- command: python -m semclip_bench "
        + " ".join(map(shlex.quote, rounds[0]["after"]["command"])),
        "- benchmark: python -m benchmarks.ab_bench " + " ".join(map(shlex.quote, argv)),
        "- feature cache: cold (each run its own empty store)",
        "",
        "| stage | before s | after s | after / before |",
        "|---|---|---|---|",
    ]
    for n in names:
        a, b = median["before"][n], median["after"][n]
        ratio = f"{b / a:.1%}" if a > 0 else "-"
        lines.append(f"| {n} | {a:.1f} | {b:.1f} | {ratio} |")
    lines += ["", "Rows (compare_runs, before = reference): ", "", *agreement]
    if project is not None:
        provs = sorted(Path(project).rglob("provenance.json"))
        if provs:
            ref = json.loads(provs[0].read_text())
            stages = ref.get("stage_seconds", {})
            lines += [
                "",
                f"Projection onto `{project}` ({ref.get('device', '?')}, commit "
                f"{ref.get('git_commit', '?')}): each of its stages times the after/before ratio "
                "measured above (stages not measured here are kept). An estimate, not a "
                "measurement: the ratio depends on the method and shot mix.",
                "",
                "| stage | reference s | projected s |",
                "|---|---|---|",
            ]
            total_ref = total_new = 0.0
            for n, seconds in stages.items():
                a, b = median["before"].get(n), median["after"].get(n)
                factor = b / a if a and b is not None and a > 0 else 1.0
                total_ref += float(seconds)
                total_new += float(seconds) * factor
                lines.append(f"| {n} | {float(seconds):.0f} | {float(seconds) * factor:.0f} |")
            lines.append(f"| sum of stages | {total_ref:.0f} | {total_new:.0f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    own, command = (
        (argv[: argv.index("--")], argv[argv.index("--") + 1 :])
        if "--" in argv
        else (
            argv,
            [],
        )
    )
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.ab_bench", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--base", type=Path, required=True, help="checkout of the old code")
    parser.add_argument("--base-label", default="", help="how the section names the old code")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--project", type=Path, default=None, help="reference run to project")
    parser.add_argument("--label", default="", help="added to the section key")
    parser.add_argument("--md", type=Path, default=Path("results/performance.md"))
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args(own)
    if not command or command[0] not in KINDS:
        parser.error("give the command after --, starting with sweep or ablate")
    if "--out" in command:
        parser.error("leave --out out of the command: each run gets its own folder")
    here = Path(__file__).resolve().parents[1]
    base = args.base.resolve()
    rounds: list[dict[str, dict[str, Any]]] = []
    agreement: list[str] = []
    with tempfile.TemporaryDirectory(prefix="ab_bench-") as tmp:
        for i in range(args.rounds):
            folder = Path(tmp) / f"round{i}"
            pair = _pair(command, base, here, folder)
            rounds.append(pair)
            table = compare(_rows(pair["before"]), _rows(pair["after"]))
            summary = ", ".join(
                f"{r.method} {r.identical}/{r.episodes}" for r in table.itertuples()
            )
            agreement.append(f"- round {i + 1}: episodes identical to the last bit: {summary}")
            print(
                f"round {i + 1}: before {pair['before']['wall']:.1f}s, "
                f"after {pair['after']['wall']:.1f}s; {summary}",
                flush=True,
            )
    body = section_body(rounds, agreement, argv, args.base_label or str(base), args.project)
    print(body)
    if not args.no_write:
        device = rounds[0]["after"]["ranks"][0].get("device", "?")
        key = f"ab_bench | {device} | {' '.join(command)}" + (
            f" | {args.label}" if args.label else ""
        )
        write_section(args.md, key, body)
        print(f"written: {args.md}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
