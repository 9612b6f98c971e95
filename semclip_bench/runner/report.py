"""Markdown tables and plots from episode rows (``results/<kind>.md``, ``results/sweep_<m>.png``).

Aggregation: for each (variant, shots, seed) the metric is averaged over categories, then the table
shows mean ± std (sample std, ddof 1) over seeds. Metrics are percentages. A value undefined for
any category of an aggregate is "n/a (reason)".

Chance levels: each shot count of the detection table has a "constant score" row, what flagging
every query image achieves (iAUROC and pAUROC 50, iAP = the query's defect fraction, iF1-max = the
F1 of flagging every image, 2p / (1 + p)), aggregated like the methods' values. The best mean per
column is bold within each shot count, but in a column with a chance level only if it exceeds that
level by more than its seed standard deviation: a column whose methods are all within one std of
chance (not separated from chance) has no bold, nor has a best value that is itself at chance.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from semclip_bench.runner.provenance import provenance_block, read_provenance
from semclip_bench.runner.store import (
    IDENTITY_NAMES,
    METRIC_COLUMNS,
    check_identity,
    drop_duplicate_episodes,
    read_rows,
)

DETECTION = ("iAUROC", "iAP", "iF1max", "pAUROC", "pF1max", "AUPRO")
CLASSIFICATION = ("cls_accuracy", "cls_precision", "cls_recall", "cls_f1")
DELTA_METRICS = ("iAUROC", "pAUROC", "pF1max", "AUPRO")
PLOTTED = ("iAUROC", "pAUROC", "pF1max", "AUPRO", "cls_accuracy")
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
}


def _reason(frame: pd.DataFrame, metric: str) -> str:
    reasons = Counter()
    for text in frame["na_reasons"]:
        try:
            value = json.loads(text) if isinstance(text, str) and text else {}
        except json.JSONDecodeError:
            value = {}
        if metric in value:
            reasons[value[metric]] += 1
    return reasons.most_common(1)[0][0] if reasons else "undefined"


def _seed_values(frame: pd.DataFrame, metric: str) -> tuple[np.ndarray, str | None]:
    """Per-seed category means of ``metric``; NaN-containing seeds make the cell n/a."""
    per_seed = frame.groupby("seed")[metric].agg(lambda s: s.mean(skipna=False))
    values = per_seed.to_numpy(dtype=float)
    if len(values) == 0 or np.isnan(values).any():
        return values, _reason(frame, metric)
    return values, None


def _cell(values: np.ndarray, reason: str | None) -> tuple[str, float, float]:
    """'mean ± std' in percent, the mean (NaN when n/a) for ranking and the seed std (0 for a
    single seed)."""
    if reason is not None:
        return f"n/a ({reason})", math.nan, math.nan
    mean = float(values.mean()) * 100
    if len(values) > 1:
        std = float(values.std(ddof=1)) * 100
        return f"{mean:.1f} ± {std:.1f}", mean, std
    return f"{mean:.1f}", mean, 0.0


def _cells(
    frame: pd.DataFrame, metrics: Sequence[str]
) -> tuple[list[str], list[float], list[float]]:
    """Table cells, their means (for bolding) and seed stds of ``metrics`` over a group of rows."""
    triples = [_cell(*_seed_values(frame, metric)) for metric in metrics]
    return [t[0] for t in triples], [t[1] for t in triples], [t[2] for t in triples]


#: Chance level of a metric: what a constant score achieves (AUROC 50; AP the defect fraction;
#: F1-max the F1 of flagging every image). Computed per row by :func:`_chance_rows`.
CHANCE_COLUMNS = {"iAUROC": "chance_auroc", "pAUROC": "chance_auroc"}
CHANCE_COLUMNS.update(iAP="chance_iAP", iF1max="chance_iF1max")


def _chance_rows(ok: pd.DataFrame) -> pd.DataFrame:
    """One row per (category, shots, seed) query with the chance levels of that query."""
    queries = ok.drop_duplicates(subset=["category", "shots", "seed"]).copy()
    fraction = queries["n_query_defect"].astype(float) / queries["n_query"].astype(float)
    queries["chance_auroc"] = 0.5
    queries["chance_iAP"] = fraction
    queries["chance_iF1max"] = 2 * fraction / (1 + fraction)
    queries["na_reasons"] = ""
    return queries


def _chance_cells(
    queries: pd.DataFrame, metrics: Sequence[str]
) -> tuple[list[str], dict[str, float]]:
    """The constant-score row's cells ('—' where no chance level is defined) and its means."""
    cells, levels = [], {}
    for metric in metrics:
        column = CHANCE_COLUMNS.get(metric)
        if column is None:
            cells.append("—")
            continue
        values, reason = _seed_values(queries, column)
        text, mean, std = _cell(values, reason)
        cells.append(text if std else text.split(" ± ")[0])
        levels[metric] = mean
    return cells, levels


def _markdown(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _bold_best(
    cells: list[list[str]],
    means: list[list[float]],
    groups: list[Any],
    stds: list[list[float]] | None = None,
    chance: Sequence[dict[Any, float] | float | None] | None = None,
) -> None:
    """Bold the highest mean per column within each group (shot count). Where the column has a
    chance level (``chance[col]``: one level for every group, or a level per group), only a best
    mean more than one seed std above it is bold; so a column whose methods are all within one
    std of chance has no bold."""
    if not cells:
        return
    for col in range(len(means[0])):
        levels = chance[col] if chance is not None else None
        for group in set(groups):
            idx = [i for i, g in enumerate(groups) if g == group and not math.isnan(means[i][col])]
            if len(idx) < 2:
                continue
            level = levels.get(group) if isinstance(levels, dict) else levels
            best = max(means[i][col] for i in idx)
            for i in idx:
                if means[i][col] != best:
                    continue
                spread = 0.0 if stds is None or math.isnan(stds[i][col]) else stds[i][col]
                if level is None or best - level > spread:
                    cells[i][col] = f"**{cells[i][col]}**"


#: Label of the chance-level row of a detection table.
CHANCE_LABEL = "_constant score_"


def metric_table(
    ok: pd.DataFrame,
    metrics: Sequence[str],
    order: Sequence[str],
    with_supervision: bool = True,
    delta_to: str | None = None,
    chance: bool = False,
) -> str:
    """Variant x shots table of mean ± std over seeds (category means per seed); with
    ``chance``, a constant-score row per shot count and the chance-aware bold rule."""
    header = ["Method", "Shots"] + (["Supervision"] if with_supervision else [])
    header += [HEADINGS[m] for m in metrics]
    deltas = [m for m in DELTA_METRICS if m in metrics] if delta_to else []
    header += [f"Δ {HEADINGS[m]} vs {delta_to}" for m in deltas]
    body, means, stds, groups = [], [], [], []
    levels: list[dict[Any, float]] = [{} for _ in metrics]
    queries = _chance_rows(ok) if chance else None
    for shots in sorted(ok["shots"].unique()):
        for variant in order:
            frame = ok[(ok["variant"] == variant) & (ok["shots"] == shots)]
            if frame.empty:
                continue
            cells, row_means, row_stds = _cells(frame, metrics)
            extra = []
            if delta_to:
                ref = ok[(ok["variant"] == delta_to) & (ok["shots"] == shots)]
                for metric in deltas:
                    mine, _ = _seed_values(frame, metric)
                    theirs, _ = _seed_values(ref, metric)
                    if variant == delta_to or len(mine) == 0 or len(theirs) == 0:
                        extra.append("—")
                    else:
                        delta = (np.nanmean(mine) - np.nanmean(theirs)) * 100
                        extra.append("n/a" if math.isnan(delta) else f"{delta:+.1f}")
            prefix = [variant, str(shots)]
            if with_supervision:
                prefix.append(frame["supervision"].iloc[0])
            body.append((prefix, cells, extra))
            means.append(row_means)
            stds.append(row_stds)
            groups.append(shots)
        if queries is not None:
            cells, group_levels = _chance_cells(queries[queries["shots"] == shots], metrics)
            for col, metric in enumerate(metrics):
                if metric in group_levels:
                    levels[col][shots] = group_levels[metric]
            prefix = [CHANCE_LABEL, str(shots)] + (
                ["none (chance level)"] if with_supervision else []
            )
            body.append((prefix, cells, ["—"] * len(deltas)))
            means.append([math.nan] * len(metrics))  # never bold
            stds.append([math.nan] * len(metrics))
            groups.append(shots)
    cell_grid = [cells for _, cells, _ in body]
    _bold_best(cell_grid, means, groups, stds, levels if chance else None)
    rows = [
        prefix + cells + extra for (prefix, _, extra), cells in zip(body, cell_grid, strict=False)
    ]
    return _markdown(header, rows)


def per_category_table(ok: pd.DataFrame, order: Sequence[str], metrics: Sequence[str]) -> str:
    """Category x variant x shots table; AUROC columns use the chance-aware bold rule (50)."""
    header = ["Category", "Method", "Shots"] + [HEADINGS[m] for m in metrics]
    rows, means, stds, groups = [], [], [], []
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
                cells, row_means, row_stds = _cells(frame, metrics)
                rows.append([category, variant, str(shots), *cells])
                means.append(row_means)
                stds.append(row_stds)
                groups.append((category, shots))
    grid = [r[3:] for r in rows]
    chance = [50.0 if m in {"iAUROC", "pAUROC"} else None for m in metrics]
    _bold_best(grid, means, groups, stds, chance)
    return _markdown(header, [r[:3] + g for r, g in zip(rows, grid, strict=False)])


def per_type_table(ok: pd.DataFrame, order: Sequence[str], unseen: Sequence[str] = ()) -> str:
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
    rows, means, stds, groups = [], [], [], []
    for shots in sorted(frame["shots"].unique()):
        for variant in order:
            part = frame[(frame["variant"] == variant) & (frame["shots"] == shots)]
            if part.empty:
                continue
            cells, row_means, row_stds = [], [], []
            for defect in types:
                sub = part[part["type"] == defect]
                per_seed = sub.groupby("seed")["value"].mean().to_numpy(dtype=float)
                reason = None if len(per_seed) and not np.isnan(per_seed).any() else "undefined"
                text, mean, std = _cell(per_seed, reason)
                cells.append(text)
                row_means.append(mean)
                row_stds.append(std)
            rows.append([variant, str(shots), *cells])
            means.append(row_means)
            stds.append(row_stds)
            groups.append(shots)
    grid = [r[2:] for r in rows]
    _bold_best(grid, means, groups, stds, [50.0] * len(types))
    return _markdown(header, [r[:2] + g for r, g in zip(rows, grid, strict=False)])


def _unseen_types(records: Sequence[dict[str, Any]]) -> list[str]:
    """Defect types held out of pretraining, when every part of the run used the shipped weights
    (by content digest; by file name for records older than the digest)."""
    from semclip_bench.backbones import default_backbone_spec
    from semclip_bench.data import file_sha256
    from semclip_bench.pretrain.captions import EXCLUDED_TYPES

    shipped = default_backbone_spec().pretrained
    if not records or not shipped:
        return []

    def is_shipped(record: dict[str, Any]) -> bool:
        if "weights_digest" in record:
            return record["weights_digest"] == file_sha256(shipped)
        return Path(str(record.get("weights", ""))).name == Path(shipped).name

    return sorted(EXCLUDED_TYPES) if all(is_shipped(r) for r in records) else []


def _images_text(rows: pd.DataFrame) -> str:
    """What the tables' images are: real solar cells for ``elpv`` runs, else SEM images."""
    datasets = {str(d) for d in rows.get("dataset", pd.Series(dtype=str)).unique()}
    if datasets and all(d.startswith("elpv") for d in datasets):
        return f"electroluminescence images of solar cells ({', '.join(sorted(datasets))})"
    return "SEM images"


def _random_init_banner(rows: pd.DataFrame) -> str:
    """The warning of a run whose backbone had no pretrained weights (``--pretrained none``):
    a control that shows what the methods do without the pretraining; empty otherwise."""
    digests = [str(d) for d in rows.get("weights_digest", pd.Series(dtype=str)).unique()]
    random_init = [d for d in digests if d.startswith("random-init")]
    if not random_init:
        return ""
    which = ", ".join(f"`{d}`" for d in sorted(random_init))
    scope = "Every row" if len(random_init) == len(digests) else "Some rows (see the warning below)"
    return (
        f"> **Control: randomly initialised backbone.** {scope} ran the backbone with its "
        f"seeded random initialisation ({which}; `--pretrained none`), no pretrained weights: "
        "compare with the same table made with the pretrained backbone to see what the "
        "pretraining contributes.\n"
    )


def _mixed_banner(mixed: dict[str, list[str]], rows: pd.DataFrame) -> str:
    """The prominent warning of a report merged with ``--allow-mixed``."""
    lines = [
        "> **Warning: mixed rows (`--allow-mixed`).** These tables merge episodes that were not "
        "produced on the same data, weights and protocol; their numbers are not one benchmark."
    ]
    for column, values in mixed.items():
        counts = rows[column].astype(str).value_counts()
        listed = "; ".join(f"`{v}` ({int(counts.get(v, 0))} rows)" for v in values)
        lines.append(f"> - {IDENTITY_NAMES[column]}: {listed}")
    return "\n".join(lines) + "\n"


def _notes(rows: pd.DataFrame) -> list[tuple[str, int]]:
    """Distinct episode notes (e.g. a defect type with a smaller support pool) and how many
    episode rows carry each, sorted by note."""
    counts: Counter[str] = Counter()
    for text in rows["notes"]:
        try:
            notes = json.loads(text) if isinstance(text, str) and text else []
        except json.JSONDecodeError:
            notes = [text]
        counts.update(str(n) for n in notes)
    return sorted(counts.items())


def _plural(count: int, one: str, many: str) -> str:
    return f"{count} {one if count == 1 else many}"


LEGEND = (
    "Metrics in percent, exact on the concatenated query set of each episode (PROTOCOL.md). Each "
    "cell: mean ± sample std over seeds of the mean over categories ({categories}, "
    "seeds {seeds}). F1-max values are maxima over all thresholds (an oracle threshold, not a "
    "deployable operating point). '{chance}' rows: chance levels, what a constant score (flagging "
    "every query image) achieves on the same queries: iAUROC and pAUROC 50, iAP = the query's "
    "defect fraction p, iF1-max = the F1 of flagging every image, 2p / (1 + p). Bold: the best "
    "mean per column within a shot count (per category and shot count in the per-category "
    "table); in a column with a chance level (AUROC columns: 50; iAP: p; iF1-max: 2p / (1 + p)) "
    "only if it exceeds that level by more than its seed standard deviation, so a column where "
    "every method is within one std of chance, which does not tell the methods apart from "
    "chance, has nothing bold. 'n/a (reason)': the metric is undefined for that method or "
    "query set.\n"
)


def build_report(
    folders: Sequence[Path],
    kind: str,
    report_command: str | None = None,
    allow_mixed: bool = False,
) -> tuple[str, pd.DataFrame]:
    """The markdown report of a run (sweep or ablation) and the rows it was built from.

    Rows that differ in protocol version, dataset digest or weights digest are refused (a
    UserError naming both values and their folders) unless ``allow_mixed``; then the report
    starts with a warning listing the distinct values.
    """
    # identities are checked on every row before duplicates go: the same episode of a run on
    # other data must be refused (or named by the mixed banner) whichever folder comes first
    rows = read_rows(folders, deduplicate=False)
    rows = rows[rows["kind"] == kind] if (rows["kind"] == kind).any() else rows
    mixed = check_identity(rows, allow_mixed, "report --from")
    rows = drop_duplicate_episodes(rows)
    ok = rows[rows["status"] == "ok"]
    skipped = rows[rows["status"] != "ok"]
    order = list(dict.fromkeys(rows["variant"]))
    title = "Sweep" if kind == "sweep" else "Ablation of SEM-CLIP"
    control = _random_init_banner(rows)
    title += " (CONTROL: randomly initialised backbone)" if control else ""
    parts = [f"# {title}: few-shot defect detection on {_images_text(rows)}\n"]
    if control:
        parts.append(control)
    if mixed:
        parts.append(_mixed_banner(mixed, rows))
    parts.append("## Provenance\n")
    records = read_provenance(folders)
    parts.append(provenance_block(records, report_command))
    parts.append(
        LEGEND.format(
            categories=_plural(ok["category"].nunique(), "category", "categories"),
            seeds=sorted(int(x) for x in ok["seed"].unique()),
            chance=CHANCE_LABEL.strip("_"),
        )
    )
    if ok.empty:
        parts.append("_No finished episodes._\n")
    else:
        delta = "semclip" if kind == "ablation" and "semclip" in order else None
        parts.append("## Detection\n")
        parts.append(metric_table(ok, DETECTION, order, delta_to=delta, chance=True) + "\n")
        classifiers = [v for v in order if ok[ok["variant"] == v]["cls_accuracy"].notna().any()]
        parts.append("## Defect-type classification (N-way: normal + defect types)\n")
        if classifiers:
            parts.append(
                metric_table(ok[ok["variant"].isin(classifiers)], CLASSIFICATION, classifiers)
                + "\n"
            )
        else:
            parts.append("_No method in this run classifies defect types._\n")
        parts.append("## Per defect type: iAUROC of each type against the normal images\n")
        unseen = _unseen_types(records)
        if unseen:
            parts.append(
                f"'(unseen)': {', '.join(unseen)} never appeared in the shipped backbone's "
                "pretraining, neither in images nor in captions (see its model card); the other "
                "types did, on images disjoint from these.\n"
            )
        parts.append(per_type_table(ok, order, unseen) + "\n")
        parts.append("## Per category\n")
        parts.append(per_category_table(ok, order, ("iAUROC", "pAUROC", "pF1max")) + "\n")
    notes = _notes(rows)
    if notes:
        parts.append("## Notes on the episodes\n")
        parts.append(
            _markdown(["Note", "Episodes"], [[note, count] for note, count in notes]) + "\n"
        )
    parts.append("## Skipped episodes\n")
    if skipped.empty:
        parts.append("None.\n")
    else:
        reasons = skipped.groupby(["variant", "shots", "reason"]).size().reset_index(name="count")
        parts.append(
            _markdown(
                ["Method", "Shots", "Reason", "Episodes"],
                [[r.variant, r.shots, r.reason, r["count"]] for _, r in reasons.iterrows()],
            )
            + "\n"
        )
    return "\n".join(parts), rows


def write_plots(rows: pd.DataFrame, out_dir: Path, kind: str) -> list[Path]:
    """``<kind>_<metric>.png``: metric versus shots per variant with std error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = rows[rows["status"] == "ok"]
    if ok.empty or ok["shots"].nunique() < 2:
        return []
    paths = []
    for metric in PLOTTED:
        if ok[metric].isna().all():
            continue
        fig, ax = plt.subplots(figsize=(5.5, 3.8), dpi=120)
        for variant in dict.fromkeys(ok["variant"]):
            part = ok[ok["variant"] == variant]
            xs, ys, es = [], [], []
            for shots in sorted(part["shots"].unique()):
                values, reason = _seed_values(part[part["shots"] == shots], metric)
                if reason is None:
                    xs.append(shots)
                    ys.append(values.mean() * 100)
                    es.append(values.std(ddof=1) * 100 if len(values) > 1 else 0.0)
            if xs:
                ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, label=variant)
        ax.set_xticks([int(k) for k in sorted(ok["shots"].unique())])
        ax.set_xlabel("shots (K)")
        ax.set_ylabel(f"{HEADINGS[metric]} (%)")
        ax.set_title(f"{HEADINGS[metric]} vs shots (mean ± std over seeds)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = Path(out_dir) / f"{kind}_{metric}.png"
        fig.savefig(path)
        plt.close(fig)
        paths.append(path)
    return paths


def write_report(
    folders: Sequence[Path],
    kind: str,
    out_dir: Path,
    report_command: str | None = None,
    allow_mixed: bool = False,
    maps_shots: int | None = None,
) -> tuple[Path, pd.DataFrame]:
    """Write ``<out_dir>/<kind>.md`` (and plots for a sweep, and the map pictures
    ``maps/<category>.png`` at K = ``maps_shots`` from the maps the run stored, see
    ``runner/maps.py``); returns the path and the rows."""
    from semclip_bench.runner.maps import write_map_pictures

    text, rows = build_report(folders, kind, report_command, allow_mixed)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    plots = write_plots(rows, out_dir, kind) if kind == "sweep" else []
    if plots:
        text += "\n## Plots\n\n" + "\n".join(f"![{p.stem}]({p.name})" for p in plots) + "\n"
    order = list(dict.fromkeys(rows["variant"])) if not rows.empty else []
    text += write_map_pictures(folders, out_dir, kind, order, maps_shots)
    path = out_dir / f"{kind}.md"
    path.write_text(text)
    return path, rows


__all__ = ["METRIC_COLUMNS", "build_report", "write_plots", "write_report"]
