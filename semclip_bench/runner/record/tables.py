"""Markdown tables of a report: cells with intervals, chance rows, the paired bold rule.

Aggregation: for each (variant, shots, seed) a metric is averaged over categories; a cell shows
the mean over seeds (the exact point estimate) and, where the episodes' per-image statistics are
stored, its 95% bootstrap interval over query images and seeds (``runner/record/uncertainty.py``).
Rows without stored statistics show the seed std, labelled so.

Bold rule with intervals: within a shot count (and category, in the per-category table) the best
mean of a column is bold only when the paired interval of its difference with every other row of
the group, the constant-score row included, excludes 0. Without intervals for every row of the
group the older rule applies: the best mean, and in a column with a chance level only if it
exceeds that level by more than its seed std. Each paired decision also counts as a win, tie or
loss of each method (``tally``).
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from semclip_bench.runner.record.uncertainty import CHANCE, Replicates, compare, interval_text

DETECTION = ("iAUROC", "iAP", "iF1max", "pAUROC", "pF1max", "AUPRO")
CLASSIFICATION = ("cls_accuracy", "cls_precision", "cls_recall", "cls_f1")
DEFECT_TYPE = ("type_accuracy", "type_f1")
DELTA_METRICS = ("iAUROC", "pAUROC", "pF1max", "AUPRO")
HEADINGS = {
    "iAUROC": "iAUROC",
    "iAP": "iAP",
    "iF1max": "iF1-max",
    "pAUROC": "pAUROC",
    "pF1max": "pF1-max",
    "AUPRO": "AUPRO@0.3",
    "cls_accuracy": "Accuracy",
    "cls_precision": "Macro P",
    "cls_recall": "Macro R",
    "cls_f1": "Macro F1",
    "type_accuracy": "Type accuracy",
    "type_f1": "Type macro-F1",
}
#: Label of the chance-level row of a detection table.
CHANCE_LABEL = "_constant score_"
#: Label of a cell without an interval (rows of older versions without stored per-image
#: statistics, or ``--bootstrap 0``): its ± is the seed std; the report says so once.
NO_SCORES = "seed std"
#: The report's note on such cells.
NO_SCORES_NOTE = (
    "Cells marked '(seed std)' or '(no interval)' have no bootstrap interval: their episodes "
    "have no stored per-image scores (rows written before they were kept) or the report ran with "
    "`--bootstrap 0`; their ± is the sample std over seeds, which leaves out query sampling, and "
    "their bold follows the older rule (best mean, more than a seed std above chance).\n"
)

#: Tally of the paired decisions: variant -> Counter(win=, tie=, loss=).
Tally = dict[str, Counter]


@dataclass
class Cell:
    """One table cell: its text, exact mean (percent; NaN when n/a), seed std and replicates."""

    text: str
    mean: float = math.nan
    std: float = math.nan
    reps: np.ndarray | None = None


@dataclass
class Row:
    prefix: list[str]
    group: Any
    cells: list[Cell]
    extra: list[str] = field(default_factory=list)
    variant: str | None = None  # None: a chance row (never bold, not tallied)


def _reason(frame: pd.DataFrame, metric: str) -> str:
    reasons: Counter[str] = Counter()
    for text in frame["na_reasons"]:
        try:
            value = json.loads(text) if isinstance(text, str) and text else {}
        except json.JSONDecodeError:
            value = {}
        if metric in value:
            reasons[value[metric]] += 1
    return reasons.most_common(1)[0][0] if reasons else "undefined"


def seed_values(frame: pd.DataFrame, metric: str) -> tuple[np.ndarray, str | None]:
    """Per-seed category means of ``metric``; NaN-containing seeds make the cell n/a."""
    per_seed = frame.groupby("seed")[metric].agg(lambda s: s.mean(skipna=False))
    values = per_seed.to_numpy(dtype=float)
    if len(values) == 0 or np.isnan(values).any():
        return values, _reason(frame, metric)
    return values, None


def make_cell(values: np.ndarray, reason: str | None, reps: np.ndarray | None) -> Cell:
    """'mean [low, high]' with replicates, else 'mean ± std (seed std; ...)'; n/a with a reason."""
    if reason is not None:
        return Cell(f"n/a ({reason})")
    mean = float(values.mean()) * 100
    std = float(values.std(ddof=1)) * 100 if len(values) > 1 else 0.0
    if reps is not None:
        return Cell(interval_text(mean, reps), mean, std, reps)
    if len(values) > 1:
        return Cell(f"{mean:.1f} ± {std:.1f} ({NO_SCORES})", mean, std)
    return Cell(f"{mean:.1f} (no interval)", mean, 0.0)


def frame_cells(frame: pd.DataFrame, metrics: Sequence[str], reps: Replicates | None) -> list[Cell]:
    cells = []
    for metric in metrics:
        values, reason = seed_values(frame, metric)
        replicates = reps.cell(frame, metric) if reps is not None and reason is None else None
        cells.append(make_cell(values, reason, replicates))
    return cells


def markdown(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _bold(rows: list[Row], chance_levels: Sequence[Any] | None, tally: Tally | None) -> None:
    """Apply the bold rule (module docstring) per group and column, in place."""
    if not rows:
        return
    for col in range(len(rows[0].cells)):
        for group in dict.fromkeys(r.group for r in rows):
            members = [r for r in rows if r.group == group]
            methods = [r for r in members if r.variant and not math.isnan(r.cells[col].mean)]
            if len(methods) < 1:
                continue
            best = max(methods, key=lambda r: r.cells[col].mean)
            others = [r for r in members if r is not best and not math.isnan(r.cells[col].mean)]
            if not others:
                continue
            if all(r.cells[col].reps is not None for r in [best, *others]):
                results = {id(r): compare(best.cells[col].reps, r.cells[col].reps) for r in others}
                bold = all(c.separated for c in results.values())
                if tally is not None:
                    tally[best.variant]["win" if bold else "tie"] += 1
                    for r in others:
                        if r.variant:
                            tally[r.variant]["loss" if results[id(r)].separated else "tie"] += 1
            else:
                levels = chance_levels[col] if chance_levels is not None else None
                level = levels.get(group) if isinstance(levels, dict) else levels
                spread = 0.0 if math.isnan(best.cells[col].std) else best.cells[col].std
                bold = len(methods) >= 2 and (
                    level is None or best.cells[col].mean - level > spread
                )
            if bold:
                best.cells[col].text = f"**{best.cells[col].text}**"


def _chance_frame(ok: pd.DataFrame) -> pd.DataFrame:
    """One row per (category, shots, seed) query with the chance levels of its image metrics."""
    queries = ok.drop_duplicates(subset=["category", "shots", "seed"]).copy()
    fraction = queries["n_query_defect"].astype(float) / queries["n_query"].astype(float)
    queries["chance:iAUROC"] = 0.5
    queries["chance:iAP"] = fraction
    queries["chance:iF1max"] = 2 * fraction / (1 + fraction)
    queries["chance:pAUROC"] = 0.5
    queries["na_reasons"] = ""
    return queries


def _chance_row(
    ok: pd.DataFrame, shots: int, metrics: Sequence[str], reps: Replicates | None
) -> list[Cell]:
    """The constant-score cells of one shot count: image metrics from the query's defect
    fraction; pF1-max and AUPRO of a constant map from the stored pixel statistics (n/a
    without them)."""
    frame = ok[ok["shots"] == shots]
    queries = _chance_frame(frame)
    cells = []
    for metric in metrics:
        column = CHANCE + metric
        source = _episodes_with(frame, column, reps)
        replicates = reps.cell(source, column) if source is not None else None
        if column in queries.columns:
            values, _ = seed_values(queries, column)
            mean = float(values.mean()) * 100
        elif source is not None:
            mean = reps.point(source, column) * 100
        elif metric not in {"pF1max", "AUPRO"}:
            cells.append(Cell("—"))
            continue
        else:
            stored = reps is not None and any(
                reps.values.get(_row_key(r)) for _, r in frame.iterrows()
            )
            reason = _reason(frame, metric) if stored else "no per-image scores"
            cells.append(Cell(f"n/a ({reason})"))
            continue
        text = interval_text(mean, replicates) if replicates is not None else f"{mean:.1f}"
        cells.append(Cell(text, mean, 0.0, replicates))
    return cells


def _row_key(row) -> tuple:
    return (row["category"], row["variant"], int(row["shots"]), int(row["seed"]))


def _episodes_with(frame: pd.DataFrame, key: str, reps: Replicates | None) -> pd.DataFrame | None:
    """The rows of one variant of ``frame`` whose episodes all have ``key`` (the chance row's
    replicates depend on the query only, so any such variant gives them)."""
    if reps is None:
        return None
    for variant in dict.fromkeys(frame["variant"]):
        part = frame[frame["variant"] == variant]
        if reps.cell(part, key) is not None:
            return part
    return None


def _delta(frame: pd.DataFrame, ref: pd.DataFrame, metric: str, reps: Replicates | None) -> str:
    """'+d [low, high]': the exact mean difference with its paired interval (points)."""
    mine, _ = seed_values(frame, metric)
    theirs, _ = seed_values(ref, metric)
    if len(mine) == 0 or len(theirs) == 0:
        return "—"
    delta = (np.nanmean(mine) - np.nanmean(theirs)) * 100
    if math.isnan(delta):
        return "n/a"
    a = reps.cell(frame, metric) if reps is not None else None
    b = reps.cell(ref, metric) if reps is not None else None
    if a is None or b is None:
        return f"{delta:+.1f}"
    result = compare(a, b)
    return f"{delta:+.1f} [{result.low:+.1f}, {result.high:+.1f}]"


def metric_table(
    ok: pd.DataFrame,
    metrics: Sequence[str],
    order: Sequence[str],
    with_supervision: bool = True,
    delta_to: str | None = None,
    chance: bool = False,
    reps: Replicates | None = None,
    gain_over_zero: bool = False,
    tally: Tally | None = None,
) -> str:
    """Variant x shots table (category means per seed, mean over seeds with its interval); with
    ``chance`` a constant-score row per shot count; ``delta_to`` a difference column to that
    variant; ``gain_over_zero`` the gain of each K > 0 row over its own variant's K = 0 row."""
    header = ["Method", "Shots"] + (["Supervision"] if with_supervision else [])
    header += [HEADINGS[m] for m in metrics]
    deltas = [m for m in DELTA_METRICS if m in metrics] if delta_to else []
    header += [f"Δ {HEADINGS[m]} vs {delta_to}" for m in deltas]
    gains = [m for m in DELTA_METRICS if m in metrics] if gain_over_zero else []
    header += [f"gain {HEADINGS[m]} vs own K = 0" for m in gains]
    rows: list[Row] = []
    for shots in sorted(ok["shots"].unique()):
        for variant in order:
            frame = ok[(ok["variant"] == variant) & (ok["shots"] == shots)]
            if frame.empty:
                continue
            extra = []
            if delta_to:
                ref = ok[(ok["variant"] == delta_to) & (ok["shots"] == shots)]
                for metric in deltas:
                    same = variant == delta_to or ref.empty
                    extra.append("—" if same else _delta(frame, ref, metric, reps))
            zero = ok[(ok["variant"] == variant) & (ok["shots"] == 0)]
            for metric in gains:
                extra.append("—" if shots == 0 or zero.empty else _delta(frame, zero, metric, reps))
            prefix = [variant, str(shots)]
            if with_supervision:
                prefix.append(frame["supervision"].iloc[0])
            rows.append(Row(prefix, shots, frame_cells(frame, metrics, reps), extra, variant))
        if chance:
            prefix = [CHANCE_LABEL, str(shots)] + (
                ["none (chance level)"] if with_supervision else []
            )
            cells = _chance_row(ok, shots, metrics, reps)
            rows.append(Row(prefix, shots, cells, ["—"] * (len(deltas) + len(gains))))
    levels = None
    if chance:
        levels = [
            {r.group: r.cells[i].mean for r in rows if r.variant is None}
            for i in range(len(metrics))
        ]
    _bold(rows, levels, tally)
    return markdown(header, [r.prefix + [c.text for c in r.cells] + r.extra for r in rows])


def per_category_table(
    ok: pd.DataFrame,
    order: Sequence[str],
    metrics: Sequence[str],
    reps: Replicates | None = None,
) -> str:
    """Category x variant x shots table; bold per category and shot count (AUROC chance 50)."""
    header = ["Category", "Method", "Shots"] + [HEADINGS[m] for m in metrics]
    rows: list[Row] = []
    for category in sorted(ok["category"].unique()):
        for shots in sorted(ok["shots"].unique()):
            for variant in order:
                frame = ok[
                    (ok["category"] == category)
                    & (ok["variant"] == variant)
                    & (ok["shots"] == shots)
                ]
                if frame.empty:
                    continue
                cells = frame_cells(frame, metrics, reps)
                rows.append(
                    Row([category, variant, str(shots)], (category, shots), cells, [], variant)
                )
    chance = [50.0 if m in {"iAUROC", "pAUROC"} else None for m in metrics]
    _bold(rows, chance, None)
    return markdown(header, [r.prefix + [c.text for c in r.cells] for r in rows])


def per_type_table(
    ok: pd.DataFrame,
    order: Sequence[str],
    unseen: Sequence[str] = (),
    reps: Replicates | None = None,
) -> str:
    """iAUROC of each defect type's images against the normal query images; ``unseen`` types
    (held out of the backbone's pretraining) are marked in the header."""
    records = []
    for _, row in ok.iterrows():
        try:
            per_type = json.loads(row["per_type_auroc"]) if row["per_type_auroc"] else {}
        except json.JSONDecodeError:
            per_type = {}
        for defect, value in per_type.items():
            records.append(
                dict(
                    variant=row["variant"],
                    shots=row["shots"],
                    seed=row["seed"],
                    category=row["category"],
                    type=defect,
                    value=math.nan if value is None else float(value),
                )
            )
    if not records:
        return "_No per-type values._"
    frame = pd.DataFrame(records)
    types = sorted(frame["type"].unique())
    header = ["Method", "Shots", *(f"{t} (unseen)" if t in unseen else t for t in types)]
    rows: list[Row] = []
    for shots in sorted(frame["shots"].unique()):
        for variant in order:
            part = frame[(frame["variant"] == variant) & (frame["shots"] == shots)]
            if part.empty:
                continue
            cells = []
            for defect in types:
                sub = part[part["type"] == defect]
                per_seed = sub.groupby("seed")["value"].mean().to_numpy(dtype=float)
                reason = None if len(per_seed) and not np.isnan(per_seed).any() else "undefined"
                replicates = None
                if reps is not None and reason is None:
                    episodes = ok[
                        (ok["variant"] == variant)
                        & (ok["shots"] == shots)
                        & ok["category"].isin(sub["category"].unique())
                    ]
                    replicates = reps.cell(episodes, f"iAUROC/{defect}")
                cells.append(make_cell(per_seed, reason, replicates))
            rows.append(Row([variant, str(shots)], shots, cells, [], variant))
    _bold(rows, [50.0] * len(types), None)
    return markdown(header, [r.prefix + [c.text for c in r.cells] for r in rows])


def tally_table(tally: Tally, order: Sequence[str]) -> str:
    """Wins / ties / losses of each method over the paired decisions it took part in."""
    rows = []
    for variant in order:
        counts = tally.get(variant)
        if counts:
            rows.append([variant, counts["win"], counts["tie"], counts["loss"]])
    return markdown(["Method", "Wins", "Ties", "Losses"], rows)


#: Chance rows of the defect-type table: (key in the replicates, label).
TYPE_CHANCE = (("majority", "_majority class_"), ("uniform", "_uniform guess_"))


def _point_cell(frame: pd.DataFrame, metric: str, reps: Replicates | None) -> Cell:
    """A cell of a value no row column holds (stored per-image statistics only)."""
    mean = reps.point(frame, metric) * 100 if reps is not None else math.nan
    if math.isnan(mean):
        return Cell("n/a (no per-image scores)")
    replicates = reps.cell(frame, metric)
    text = interval_text(mean, replicates) if replicates is not None else f"{mean:.1f}"
    return Cell(text, mean, 0.0, replicates)


def defect_type_table(
    ok: pd.DataFrame,
    order: Sequence[str],
    reps: Replicates | None,
    tally: Tally | None = None,
    confusion: dict[str, str] | None = None,
) -> str:
    """ "Which type is it?": accuracy and macro-F1 of the defect type on the defect query images
    only (arg-max over the defect types' logits), with majority-class and uniform-guess chance
    rows per shot count; ``confusion`` links each variant's confusion-matrix plot."""
    header = ["Method", "Shots", *(HEADINGS[m] for m in DEFECT_TYPE), "Confusion matrix"]
    rows: list[Row] = []
    for shots in sorted(ok["shots"].unique()):
        first = None
        for variant in order:
            frame = ok[(ok["variant"] == variant) & (ok["shots"] == shots)]
            if frame.empty:
                continue
            first = frame if first is None else first
            cells = [_point_cell(frame, m, reps) for m in DEFECT_TYPE]
            link = (confusion or {}).get(f"{variant}/{shots}", "")
            rows.append(Row([variant, str(shots)], shots, cells, [link], variant))
        if first is None:
            continue
        for name, label in TYPE_CHANCE:
            cells = [_point_cell(first, f"{CHANCE}{name}:{m}", reps) for m in DEFECT_TYPE]
            rows.append(Row([label, str(shots)], shots, cells, [""]))
    _bold(rows, None, tally)
    return markdown(header, [r.prefix + [c.text for c in r.cells] + r.extra for r in rows])


def paired_table(
    ok: pd.DataFrame, metrics: Sequence[str], order: Sequence[str], reps: Replicates | None
) -> str | None:
    """Per shot count and metric, each method against the column's best (highest exact mean):
    the paired difference best - method in points, its 95% interval and the share of resamples
    in which the best is ahead. None without replicates."""
    if reps is None or reps.resamples == 0:
        return None
    header = ["Method", "Shots", *(HEADINGS[m] for m in metrics)]
    body = []
    for shots in sorted(ok["shots"].unique()):
        frames = {
            v: ok[(ok["variant"] == v) & (ok["shots"] == shots)]
            for v in order
            if not ok[(ok["variant"] == v) & (ok["shots"] == shots)].empty
        }
        cells = {v: frame_cells(frames[v], metrics, reps) for v in frames}
        rows = {v: [v, str(shots)] for v in frames}
        for col in range(len(metrics)):
            usable = [
                v
                for v in frames
                if cells[v][col].reps is not None and math.isfinite(cells[v][col].mean)
            ]
            best = max(usable, key=lambda v: cells[v][col].mean) if usable else None
            for v in frames:
                if v == best:
                    rows[v].append("best")
                elif best is None or v not in usable:
                    rows[v].append("—")
                else:
                    c = compare(cells[best][col].reps, cells[v][col].reps)
                    exact = cells[best][col].mean - cells[v][col].mean  # the point, not a mean
                    rows[v].append(
                        f"{exact:+.1f} [{c.low:+.1f}, {c.high:+.1f}], {c.share_ahead:.0%}"
                    )
        body += list(rows.values())
    return markdown(header, body) if body else None
