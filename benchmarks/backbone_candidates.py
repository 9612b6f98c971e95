"""Backbone candidates side by side on one validation study, against the random-init control.

Run: ``python -m benchmarks.backbone_candidates STUDY [--reference random_init] [--out FILE]``,
where STUDY holds one sweep output per candidate (``STUDY/<candidate>/sweep/episodes.csv``, as the
presets ``configs/tuning/studies/backbone_*.yaml`` write them with ``--out STUDY/<candidate>``).

For every method and K it prints each candidate's iAUROC (the table value: mean over categories of
the seed means) and, for every candidate but the reference, its paired gain over the reference:
the same query images, seeds and support draws, since only the weights differ. Where per-image
score files are stored, the gain carries the protocol's 95% interval (paired hierarchical
bootstrap over seeds and query images, ``docs/PROTOCOL.md``) and is bold when the interval
excludes zero; without them (a fresh clone: score files are not committed) the mean gain alone.
A last table checks the selection targets of a new default backbone (``docs/tuning.md``): at
every K >= 1 each method at least as good as with random weights, and WinCLIP+ above 75.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from semclip_bench.errors import UserError
from semclip_bench.runner.record.row_store import drop_duplicate_episodes, read_rows
from semclip_bench.runner.record.uncertainty import compare, episode_replicates

RESAMPLES = 1000
METRIC = "iAUROC"
#: Selection target of the real-image study: WinCLIP+'s iAUROC above this at every K >= 1.
WINCLIP_FLOOR = 75.0


def candidate_rows(study: Path) -> pd.DataFrame:
    """Finished episodes of every candidate under ``study``; column ``candidate`` names it."""
    frames = []
    for folder in sorted(p for p in Path(study).iterdir() if (p / "sweep").is_dir()):
        rows = drop_duplicate_episodes(read_rows([folder / "sweep"]))
        rows = rows[rows["status"] == "ok"].copy()
        rows["candidate"] = folder.name
        rows["method_variant"] = rows["variant"]
        rows["variant"] = rows["variant"] + "@" + folder.name  # unique keys for the replicates
        frames.append(rows)
    if not frames:
        raise SystemExit(f"error: {study}: no <candidate>/sweep folders")
    return pd.concat(frames, ignore_index=True)


def table_value(frame: pd.DataFrame) -> float:
    """The sweep table's value of one cell, in points: mean over categories of the seed means."""
    return float(100 * frame.groupby("category")[METRIC].mean().mean())


def compare_candidates(
    rows: pd.DataFrame, reference: str, resamples: int = RESAMPLES
) -> tuple[pd.DataFrame, list[str]]:
    """One row per (method, K): each candidate's value and each gain over ``reference`` (with
    its interval where replicates exist). Returns the frame and the candidates in column order."""
    candidates = sorted(rows["candidate"].unique(), key=lambda c: (c != reference, c))
    if reference not in candidates:
        raise SystemExit(f"error: no candidate folder named {reference!r} (--reference)")
    reps = episode_replicates(rows, resamples)
    records = []
    for (method, shots), cell in rows.groupby(["method_variant", "shots"], sort=False):
        record: dict = {"method": method, "K": int(shots)}
        base = cell[cell["candidate"] == reference]
        for cand in candidates:
            mine = cell[cell["candidate"] == cand]
            record[cand] = table_value(mine) if not mine.empty else np.nan
            if cand == reference or mine.empty or base.empty:
                continue
            record[f"gain {cand}"] = record[cand] - record[reference]
            seeds = sorted(set(mine["seed"]) & set(base["seed"]))
            a, b = reps.cell(mine, METRIC, seeds), reps.cell(base, METRIC, seeds)
            if a is not None and b is not None:
                c = compare(a, b)
                record[f"interval {cand}"] = (c.low, c.high)
        records.append(record)
    frame = pd.DataFrame(records).sort_values(["K", "method"], kind="stable")
    return frame.reset_index(drop=True), candidates


def _gain_cell(record: pd.Series, cand: str) -> str:
    gain = record.get(f"gain {cand}")
    if gain is None or not np.isfinite(gain):
        return "—"
    interval = record.get(f"interval {cand}")
    if not isinstance(interval, tuple):
        return f"{gain:+.1f}"
    low, high = interval
    text = f"{gain:+.1f}"
    if low > 0 or high < 0:
        text = f"**{text}**"
    return f"{text} [{low:+.1f}, {high:+.1f}]"


def markdown(frame: pd.DataFrame, candidates: list[str], reference: str) -> str:
    """The comparison table and the target check, as Markdown."""
    others = [c for c in candidates if c != reference]
    head = ["method", "K", *candidates, *(f"{c} - {reference}" for c in others)]
    lines = ["| " + " | ".join(head) + " |", "|---|---|" + "---:|" * (len(head) - 2)]
    for _, record in frame.iterrows():
        values = [f"{record[c]:.1f}" if np.isfinite(record[c]) else "—" for c in candidates]
        gains = [_gain_cell(record, c) for c in others]
        lines.append(f"| {record['method']} | {record['K']} | " + " | ".join(values + gains) + " |")
    lines += [
        "",
        f"Targets at K >= 1 (means over seeds): no method below {reference}; "
        f"WinCLIP+ above {WINCLIP_FLOOR:.0f}.",
        "",
        f"| candidate | cells below {reference} | largest shortfall | WinCLIP+ lowest | met |",
        "|---|---:|---|---:|---|",
    ]
    few = frame[frame["K"] >= 1]
    for cand in others:
        gains = few[f"gain {cand}"]
        below = few[gains < 0]
        worst = below.loc[gains[gains < 0].idxmin()] if not below.empty else None
        shortfall = (
            f"{worst[f'gain {cand}']:+.1f} ({worst['method']}, K = {worst['K']})"
            if worst is not None
            else "—"
        )
        winclip = few.loc[few["method"] == "winclip", cand]
        lowest = float(winclip.min()) if not winclip.empty else np.nan
        met = below.empty and np.isfinite(lowest) and lowest > WINCLIP_FLOOR
        lowest_text = f"{lowest:.1f}" if np.isfinite(lowest) else "—"
        lines.append(
            f"| {cand} | {len(below)} of {len(few)} | {shortfall} | {lowest_text} | "
            f"{'yes' if met else 'no'} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study", type=Path, help="folder of <candidate>/sweep outputs")
    parser.add_argument("--reference", default="random_init", help="candidate compared against")
    parser.add_argument(
        "--resamples", type=int, default=RESAMPLES, help="bootstrap replicates (0: means only)"
    )
    parser.add_argument("--out", type=Path, help="also write the tables to this file")
    args = parser.parse_args(argv)
    if not args.study.is_dir():
        parser.error(f"{args.study}: not a folder")
    if args.resamples < 0:
        parser.error(f"--resamples: need 0 or more, got {args.resamples}")
    try:
        rows = candidate_rows(args.study)
    except UserError as exc:  # an unreadable episodes.csv: one line naming it
        raise SystemExit(f"error: {exc}") from None
    frame, candidates = compare_candidates(rows, args.reference, args.resamples)
    text = (
        f"# Backbone candidates: `{args.study.as_posix()}`\n\n"
        f"Written by `python -m benchmarks.backbone_candidates {args.study.as_posix()} "
        f"--reference {args.reference}`. iAUROC in points; gains are paired (same queries, seeds "
        f"and supports), bold where the 95% interval excludes zero.\n\n"
        + markdown(frame, candidates, args.reference)
    )
    sys.stdout.write(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
