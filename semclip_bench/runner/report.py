"""Markdown tables and plots from episode rows (``results/<kind>.md``, ``results/sweep_<m>.png``).

Aggregation: for each (variant, shots, seed) the metric is averaged over categories, then the table
shows mean ± std (sample std, ddof 1) over seeds. Metrics are percentages. A value undefined for
any category of an aggregate is "n/a (reason)". Best value per column is bold within each shot
count.
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

from semclip_bench.runner.store import (
    METRIC_COLUMNS,
    PROVENANCE_FILE,
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


def _cell(values: np.ndarray, reason: str | None) -> tuple[str, float]:
    """'mean ± std' in percent and the mean (NaN when n/a) for ranking."""
    if reason is not None:
        return f"n/a ({reason})", math.nan
    mean = float(values.mean()) * 100
    if len(values) > 1:
        return f"{mean:.1f} ± {float(values.std(ddof=1)) * 100:.1f}", mean
    return f"{mean:.1f}", mean


def _cells(frame: pd.DataFrame, metrics: Sequence[str]) -> tuple[list[str], list[float]]:
    """Table cells and their means (for bolding) of ``metrics`` over one group of rows."""
    pairs = [_cell(*_seed_values(frame, metric)) for metric in metrics]
    return [text for text, _ in pairs], [mean for _, mean in pairs]


def _markdown(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _bold_best(cells: list[list[str]], means: list[list[float]], groups: list[Any]) -> None:
    """Bold the highest mean per column within each group (shot count)."""
    if not cells:
        return
    for col in range(len(means[0])):
        for group in set(groups):
            idx = [i for i, g in enumerate(groups) if g == group and not math.isnan(means[i][col])]
            if len(idx) < 2:
                continue
            best = max(means[i][col] for i in idx)
            for i in idx:
                if means[i][col] == best:
                    cells[i][col] = f"**{cells[i][col]}**"


def metric_table(
    ok: pd.DataFrame,
    metrics: Sequence[str],
    order: Sequence[str],
    with_supervision: bool = True,
    delta_to: str | None = None,
) -> str:
    """Variant x shots table of mean ± std over seeds (category means per seed)."""
    header = ["Method", "Shots"] + (["Supervision"] if with_supervision else [])
    header += [HEADINGS[m] for m in metrics]
    deltas = [m for m in DELTA_METRICS if m in metrics] if delta_to else []
    header += [f"Δ {HEADINGS[m]} vs {delta_to}" for m in deltas]
    body, means, groups = [], [], []
    for shots in sorted(ok["shots"].unique()):
        for variant in order:
            frame = ok[(ok["variant"] == variant) & (ok["shots"] == shots)]
            if frame.empty:
                continue
            cells, row_means = _cells(frame, metrics)
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
            groups.append(shots)
    cell_grid = [cells for _, cells, _ in body]
    _bold_best(cell_grid, means, groups)
    rows = [
        prefix + cells + extra for (prefix, _, extra), cells in zip(body, cell_grid, strict=False)
    ]
    return _markdown(header, rows)


def per_category_table(ok: pd.DataFrame, order: Sequence[str], metrics: Sequence[str]) -> str:
    header = ["Category", "Method", "Shots"] + [HEADINGS[m] for m in metrics]
    rows, means, groups = [], [], []
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
                cells, row_means = _cells(frame, metrics)
                rows.append([category, variant, str(shots), *cells])
                means.append(row_means)
                groups.append((category, shots))
    grid = [r[3:] for r in rows]
    _bold_best(grid, means, groups)
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
    rows, means, groups = [], [], []
    for shots in sorted(frame["shots"].unique()):
        for variant in order:
            part = frame[(frame["variant"] == variant) & (frame["shots"] == shots)]
            if part.empty:
                continue
            cells, row_means = [], []
            for defect in types:
                sub = part[part["type"] == defect]
                per_seed = sub.groupby("seed")["value"].mean().to_numpy(dtype=float)
                reason = None if len(per_seed) and not np.isnan(per_seed).any() else "undefined"
                text, mean = _cell(per_seed, reason)
                cells.append(text)
                row_means.append(mean)
            rows.append([variant, str(shots), *cells])
            means.append(row_means)
            groups.append(shots)
    grid = [r[2:] for r in rows]
    _bold_best(grid, means, groups)
    return _markdown(header, [r[:2] + g for r, g in zip(rows, grid, strict=False)])


def _provenance(folders: Sequence[Path]) -> list[dict[str, Any]]:
    records = []
    for folder in folders:
        for path in sorted(Path(folder).rglob(PROVENANCE_FILE)):
            records.append(json.loads(path.read_text()))
    return records


def _unseen_types(records: Sequence[dict[str, Any]]) -> list[str]:
    """Defect types held out of pretraining, when every part of the run used the shipped weights."""
    from semclip_bench.backbones import default_backbone_spec
    from semclip_bench.pretrain.captions import EXCLUDED_TYPES

    shipped = default_backbone_spec().pretrained
    if not records or not shipped:
        return []
    if all(Path(str(r.get("weights", ""))).name == Path(shipped).name for r in records):
        return sorted(EXCLUDED_TYPES)
    return []


def provenance_block(records: Sequence[dict[str, Any]], report_command: str | None) -> str:
    if not records:
        return "_No provenance.json found next to the episode rows._\n"
    lines = []
    for i, rec in enumerate(records):
        if len(records) > 1:
            lines.append(f"**Part {i + 1} (shard {rec.get('shard', '?')})**\n")
        stages = ", ".join(f"{k} {v:.0f}s" for k, v in rec.get("stage_seconds", {}).items())
        size = rec.get("dataset_size", {})
        lines += [
            f"- Command: `{rec.get('command', '?')}`",
            f"- Package: semclip_bench {rec.get('package_version')} at git commit "
            f"`{rec.get('git_commit')}`; torch {rec.get('torch')}, Python {rec.get('python')}",
            f"- Date: {rec.get('date')}",
            f"- Dataset: {rec.get('dataset')} ({size.get('images', '?')} images: "
            f"{size.get('train', 0)} train, {size.get('test', 0)} test; categories: "
            f"{', '.join(rec.get('categories', []))})",
            f"- Backbone: `{rec.get('backbone')}`, weights: {rec.get('weights')}",
            f"- Device: {rec.get('device')}",
            f"- Shots: {rec.get('shots')}; seeds: {rec.get('seeds')}",
            f"- Wall-clock: {rec.get('wall_seconds', 0):.0f} s ({stages}); {rec.get('cache', '')}",
        ]
        if rec.get("episodes_resumed"):
            lines.append(
                f"- Resumed: {rec['episodes_resumed']} episodes came from earlier invocations"
            )
        lines.append("")
    if report_command:
        lines.append(f"Tables rebuilt by `{report_command}`.\n")
    return "\n".join(lines)


def build_report(
    folders: Sequence[Path], kind: str, report_command: str | None = None
) -> tuple[str, pd.DataFrame]:
    """The markdown report of a run (sweep or ablation) and the rows it was built from."""
    rows = read_rows(folders)
    rows = rows[rows["kind"] == kind] if (rows["kind"] == kind).any() else rows
    ok = rows[rows["status"] == "ok"]
    skipped = rows[rows["status"] != "ok"]
    order = list(dict.fromkeys(rows["variant"]))
    title = "Sweep" if kind == "sweep" else "Ablation of SEM-CLIP"
    parts = [f"# {title}: few-shot defect detection on SEM images\n"]
    parts.append("## Provenance\n")
    parts.append(provenance_block(_provenance(folders), report_command))
    parts.append(
        "Metrics in percent, exact on the concatenated query set of each episode "
        "(PROTOCOL.md). Each cell: mean ± sample std over seeds of the mean over categories "
        f"({ok['category'].nunique()} categories, "
        f"seeds {sorted(int(x) for x in ok['seed'].unique())}). "
        "F1-max values are maxima over all thresholds (an oracle threshold, not a deployable "
        "operating point). Bold: best per column within a shot count. 'n/a (reason)': the "
        "metric is undefined for that method or query set.\n"
    )
    if ok.empty:
        parts.append("_No finished episodes._\n")
    else:
        delta = "semclip" if kind == "ablation" and "semclip" in order else None
        parts.append("## Detection\n")
        parts.append(metric_table(ok, DETECTION, order, delta_to=delta) + "\n")
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
        unseen = _unseen_types(_provenance(folders))
        if unseen:
            parts.append(
                f"'(unseen)': {', '.join(unseen)} never appeared in the shipped backbone's "
                "pretraining, neither in images nor in captions (see its model card); the other "
                "types did, on images disjoint from these.\n"
            )
        parts.append(per_type_table(ok, order, unseen) + "\n")
        parts.append("## Per category\n")
        parts.append(per_category_table(ok, order, ("iAUROC", "pAUROC", "pF1max")) + "\n")
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
    folders: Sequence[Path], kind: str, out_dir: Path, report_command: str | None = None
) -> tuple[Path, pd.DataFrame]:
    """Write ``<out_dir>/<kind>.md`` (and plots for a sweep); returns the path and the rows."""
    text, rows = build_report(folders, kind, report_command)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    plots = write_plots(rows, out_dir, kind) if kind == "sweep" else []
    if plots:
        text += "\n## Plots\n\n" + "\n".join(f"![{p.stem}]({p.name})" for p in plots) + "\n"
    path = out_dir / f"{kind}.md"
    path.write_text(text)
    return path, rows


__all__ = ["METRIC_COLUMNS", "build_report", "write_plots", "write_report"]
