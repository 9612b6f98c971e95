"""Paired gains of candidate variants over a base variant, for tuning decisions (docs/tuning.md).

Run: ``python -m benchmarks.paired_gain RUN --pair CANDIDATE:BASE [--pair ...] [--out FILE]``,
where RUN is a sweep's output folder (``<out>/sweep``, holding ``episodes.csv`` and ``scores/``).
For every pair, shot count and metric it prints the mean gain (candidate - base, in points) with
its 95% interval from the protocol's paired hierarchical bootstrap (the same seed and image
resamples for both variants: ``docs/PROTOCOL.md``, "Uncertainty, pairing and the bold rule") and
the share of resamples in which the candidate is ahead. A bold gain has an interval that excludes
zero: a gain (or, negative, a loss) that query sampling and seeds do not explain.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from semclip_bench.runner.record.row_store import drop_duplicate_episodes, read_rows
from semclip_bench.runner.record.uncertainty import compare, episode_replicates

#: Metrics compared, in table order (classification only where both variants classify).
METRICS = ("iAUROC", "iAP", "pAUROC", "pF1max", "AUPRO", "type_accuracy")
RESAMPLES = 1000


def paired_gains(run: Path, pairs: list[tuple[str, str]], resamples: int = RESAMPLES) -> str:
    """A Markdown table of the paired gains of each (candidate, base) pair in ``run``."""
    rows = drop_duplicate_episodes(read_rows([run]))
    ok = rows[rows["status"] == "ok"]
    wanted = {v for pair in pairs for v in pair}
    missing = sorted(wanted - set(ok["variant"]))
    if missing:
        raise SystemExit(f"error: {run}: no finished episodes of {', '.join(missing)}")
    ok = ok[ok["variant"].isin(wanted)]
    reps = episode_replicates(ok, resamples)
    lines = [
        "| candidate | base | K | " + " | ".join(METRICS) + " |",
        "|---|---|---|" + "---|" * len(METRICS),
    ]
    for candidate, base in pairs:
        for shots in sorted(int(k) for k in ok["shots"].unique()):
            cand = ok[(ok["variant"] == candidate) & (ok["shots"] == shots)]
            ref = ok[(ok["variant"] == base) & (ok["shots"] == shots)]
            if cand.empty or ref.empty:
                continue
            seeds = sorted(set(cand["seed"]) & set(ref["seed"]))
            cells = []
            for metric in METRICS:
                a = reps.cell(cand, metric, seeds)
                b = reps.cell(ref, metric, seeds)
                if a is None or b is None or not np.isfinite(a).any():
                    cells.append("—")
                    continue
                c = compare(a, b)
                gain = f"{c.difference:+.1f}"
                if c.low > 0 or c.high < 0:  # the interval excludes zero
                    gain = f"**{gain}**"
                cells.append(f"{gain} [{c.low:+.1f}, {c.high:+.1f}] {100 * c.share_ahead:.0f}%")
            lines.append(f"| {candidate} | {base} | {shots} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a sweep's output folder (<out>/sweep)")
    parser.add_argument(
        "--pair",
        action="append",
        required=True,
        metavar="CANDIDATE:BASE",
        help="variants to compare (repeatable)",
    )
    parser.add_argument("--resamples", type=int, default=RESAMPLES, help="bootstrap replicates")
    parser.add_argument("--out", type=Path, help="also write the table to this file")
    args = parser.parse_args(argv)
    pairs = []
    for text in args.pair:
        candidate, sep, base = text.partition(":")
        if not sep or not candidate or not base:
            parser.error(f"--pair: expected CANDIDATE:BASE, got {text!r}")
        pairs.append((candidate, base))
    if not (args.run / "episodes.csv").exists() and not any(args.run.rglob("episodes.csv")):
        parser.error(f"{args.run}: no episodes.csv under this folder")
    table = paired_gains(args.run, pairs, args.resamples)
    sys.stdout.write(table)
    if args.out:
        args.out.write_text(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
