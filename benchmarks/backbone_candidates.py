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
A last table checks the selection targets of a new default backbone on real images
(``docs/tuning.md``): at every K >= 1 each method at least as good as with random weights, and
WinCLIP+ above 75 (``--no-targets`` leaves it out, for the sem-synth study, whose target is the
zero-shot one). ``--zero-shot DIR`` adds the sem-synth zero-shot table of the candidates'
``pretrain evaluate --json`` files (``DIR/<candidate>.json``) and checks that target: every prompt
bank at or above the reference weights' lowest bank, seen and unseen types apart, and the banks
within 0.01 of each other.
"""

from __future__ import annotations

import argparse
import json
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
#: Selection target of the sem-synth zero-shot evaluation: largest gap between prompt banks.
BANK_SPREAD = 0.01


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


def markdown(
    frame: pd.DataFrame, candidates: list[str], reference: str, targets: bool = True
) -> str:
    """The comparison table and (``targets``) the real-image target check, as Markdown."""
    others = [c for c in candidates if c != reference]
    head = ["method", "K", *candidates, *(f"{c} - {reference}" for c in others)]
    lines = ["| " + " | ".join(head) + " |", "|---|---|" + "---:|" * (len(head) - 2)]
    for _, record in frame.iterrows():
        values = [f"{record[c]:.1f}" if np.isfinite(record[c]) else "—" for c in candidates]
        gains = [_gain_cell(record, c) for c in others]
        lines.append(f"| {record['method']} | {record['K']} | " + " | ".join(values + gains) + " |")
    if not targets:
        return "\n".join(lines) + "\n"
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


def zero_shot_scores(folder: Path) -> dict[str, dict[str, dict[str, float]]]:
    """{candidate: {bank: {"seen", "unseen"}}} from ``folder/<candidate>.json`` (``pretrain
    evaluate --json``): the checkpoint's zero-shot iAUROC, and where a file also holds the
    random-init baseline and no ``random_init.json`` exists, that one as ``random_init``."""
    scores: dict[str, dict[str, dict[str, float]]] = {}
    baselines = {}
    for path in sorted(Path(folder).glob("*.json")):
        try:
            result = json.loads(path.read_text())
            entries = {"pretrained": result["pretrained"]["zero_shot"]}
            if "random_init" in result:
                entries["random_init"] = result["random_init"]["zero_shot"]
            parsed = {
                key: {b: {t: float(v[t]) for t in ("seen", "unseen")} for b, v in zs.items()}
                for key, zs in entries.items()
            }
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise UserError(f"{path}: not a pretrain evaluate --json file ({exc})") from exc
        scores[path.stem] = parsed["pretrained"]
        if "random_init" in parsed:
            baselines[path.stem] = parsed["random_init"]
    if "random_init" not in scores and baselines:
        scores["random_init"] = baselines[sorted(baselines)[0]]
    if not scores:
        raise UserError(f"{folder}: no <candidate>.json files")
    return scores


def zero_shot_markdown(scores: dict[str, dict[str, dict[str, float]]], reference: str) -> str:
    """Each candidate's zero-shot iAUROC per bank (seen / unseen types) and the target check
    against ``reference``: every bank at or above the reference's lowest, banks within 0.01."""
    if reference not in scores:
        raise UserError(f"no zero-shot file for {reference!r} (--zero-shot-reference)")
    banks = sorted(scores[reference])
    floor = {t: min(scores[reference][b][t] for b in banks) for t in ("seen", "unseen")}
    head = ["candidate", *(f"{b} seen / unseen" for b in banks), "bank spread", "met"]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 2) + "---|"]
    for cand in sorted(scores, key=lambda c: (c != reference, c)):
        mine = scores[cand]
        if sorted(mine) != banks:
            raise UserError(f"zero-shot file {cand}.json has banks {sorted(mine)}, not {banks}")
        cells = [f"{mine[b]['seen']:.3f} / {mine[b]['unseen']:.3f}" for b in banks]
        spread = max(
            max(mine[b][t] for b in banks) - min(mine[b][t] for b in banks)
            for t in ("seen", "unseen")
        )
        met = spread <= BANK_SPREAD and all(
            mine[b][t] >= floor[t] for b in banks for t in ("seen", "unseen")
        )
        verdict = "yes" if met else "no"
        lines.append(f"| {cand} | " + " | ".join(cells) + f" | {spread:.3f} | {verdict} |")
    return (
        f"Zero-shot iAUROC on sem-synth:val (`pretrain evaluate`), seen / unseen defect types. "
        f"Target: every bank at or above {reference}'s lowest (seen {floor['seen']:.3f}, unseen "
        f"{floor['unseen']:.3f}), the banks within {BANK_SPREAD} of each other.\n\n"
        + "\n".join(lines)
        + "\n"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study", type=Path, help="folder of <candidate>/sweep outputs")
    parser.add_argument("--reference", default="random_init", help="candidate compared against")
    parser.add_argument(
        "--resamples", type=int, default=RESAMPLES, help="bootstrap replicates (0: means only)"
    )
    parser.add_argument("--out", type=Path, help="also write the tables to this file")
    parser.add_argument(
        "--no-targets", action="store_true", help="leave out the real-image target check"
    )
    parser.add_argument(
        "--zero-shot", type=Path, metavar="DIR", help="folder of <candidate>.json evaluations"
    )
    parser.add_argument(
        "--zero-shot-reference", default="shipped", help="candidate the zero-shot target keeps"
    )
    args = parser.parse_args(argv)
    if not args.study.is_dir():
        parser.error(f"{args.study}: not a folder")
    if args.resamples < 0:
        parser.error(f"--resamples: need 0 or more, got {args.resamples}")
    if args.zero_shot is not None and not args.zero_shot.is_dir():
        parser.error(f"--zero-shot {args.zero_shot}: not a folder")
    try:
        rows = candidate_rows(args.study)
        zero_shot = (
            zero_shot_markdown(zero_shot_scores(args.zero_shot), args.zero_shot_reference)
            if args.zero_shot is not None
            else ""
        )
    except UserError as exc:  # an unreadable episodes.csv or evaluation: one line naming it
        raise SystemExit(f"error: {exc}") from None
    frame, candidates = compare_candidates(rows, args.reference, args.resamples)
    command = " ".join(
        ["python -m benchmarks.backbone_candidates", args.study.as_posix()]
        + ["--reference", args.reference]
        + (["--no-targets"] if args.no_targets else [])
        + (["--zero-shot", args.zero_shot.as_posix()] if args.zero_shot is not None else [])
    )
    text = (
        f"# Backbone candidates: `{args.study.as_posix()}`\n\n"
        f"Written by `{command}`. iAUROC in points; gains are paired (same queries, seeds "
        f"and supports), bold where the 95% interval excludes zero.\n\n"
        + markdown(frame, candidates, args.reference, targets=not args.no_targets)
        + ("\n" + zero_shot if zero_shot else "")
    )
    sys.stdout.write(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
