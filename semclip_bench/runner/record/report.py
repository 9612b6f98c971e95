"""Markdown reports and plots from episode rows (``results/<kind>.md``, ``results/sweep_<m>.png``).

The tables themselves (cells, intervals, chance rows, the paired bold rule) are built by
``runner/record/tables.py`` from the replicates of ``runner/record/uncertainty.py``; this module
assembles them with the provenance, the legend, the notes and skips, and writes the plots: metric vs
shots and, for the classifying methods, a defect-type confusion matrix at the largest K of the run.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from semclip_bench.metrics.bootstrap import DEFAULT_RESAMPLES, percentile_interval
from semclip_bench.runner.record.provenance import provenance_block, read_provenance
from semclip_bench.runner.record.row_store import (
    IDENTITY_NAMES,
    METRIC_COLUMNS,
    check_identity,
    drop_duplicate_episodes,
    read_rows,
)
from semclip_bench.runner.record.tables import (
    CHANCE_LABEL,
    CLASSIFICATION,
    DETECTION,
    HEADINGS,
    NO_SCORES,
    NO_SCORES_NOTE,
    Tally,
    defect_type_table,
    markdown,
    metric_table,
    paired_table,
    per_category_table,
    per_type_table,
    seed_values,
    tally_table,
)
from semclip_bench.runner.record.uncertainty import Replicates, episode_replicates

__all__ = [
    "DETECTION",
    "METRIC_COLUMNS",
    "build_report",
    "metric_table",
    "per_category_table",
    "per_type_table",
    "write_plots",
    "write_report",
]

PLOTTED = ("iAUROC", "pAUROC", "pF1max", "AUPRO", "cls_accuracy")


def _unseen_types(records: Sequence[dict[str, Any]]) -> list[str]:
    """Defect types held out of pretraining, when every part of the run used the shipped weights
    (by content digest; by file name for records older than the digest)."""
    from semclip_bench.backbones import default_backbone_spec
    from semclip_bench.data import file_sha256
    from semclip_bench.data.labels import EXCLUDED_TYPES

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
    "cell: the mean over seeds of the mean over categories ({categories}, seeds {seeds}) and, in "
    "brackets, its 95% interval from {resamples} bootstrap resamples of the query images "
    "(stratified by label, whole images also for pixel metrics) and of the seeds, the same "
    "resamples for every method of a category. Bold: the best row of a column within a shot "
    "count, only where the paired interval of its difference with every other row, the "
    "constant-score row included, excludes 0. Rows without stored per-image scores show the seed "
    "std instead, labelled '(seed std)'. F1-max values are maxima over all thresholds (an "
    "oracle threshold, not a deployable operating point). '{chance}' rows: what a constant "
    "score achieves on the same queries: "
    "AUROC 50, iAP = the query's defect fraction p, iF1-max = 2p / (1 + p), pF1-max = 2q / (1 + "
    "q) with q the defect-pixel fraction, AUPRO of a constant map, computed from the stored "
    "per-image statistics. 'gain vs own K = 0': a few-shot row minus its own method's zero-shot "
    "row, with the paired interval. 'n/a (reason)': the metric is undefined for that method or "
    "query set.\n"
)


def build_report(
    folders: Sequence[Path],
    kind: str,
    report_command: str | None = None,
    allow_mixed: bool = False,
    resamples: int = DEFAULT_RESAMPLES,
    out_dir: Path | None = None,
) -> tuple[str, pd.DataFrame]:
    """The markdown report of a run and its rows (:func:`_build` without the replicates)."""
    text, rows, _ = _build(folders, kind, report_command, allow_mixed, resamples, out_dir)
    return text, rows


def _build(
    folders: Sequence[Path],
    kind: str,
    report_command: str | None = None,
    allow_mixed: bool = False,
    resamples: int = DEFAULT_RESAMPLES,
    out_dir: Path | None = None,
) -> tuple[str, pd.DataFrame, Replicates | None]:
    """The markdown report of a run (sweep or ablation) and the rows it was built from.

    Rows that differ in protocol version, dataset digest or weights digest are refused (a
    UserError naming both values and their folders) unless ``allow_mixed``; then the report
    starts with a warning listing the distinct values. ``resamples``: bootstrap replicates of the
    intervals (0: none, the seed std is shown). ``out_dir``: where the confusion-matrix plots go
    (none without it).
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
    reps = episode_replicates(ok, resamples) if not ok.empty else None
    parts.append(
        LEGEND.format(
            categories=_plural(ok["category"].nunique(), "category", "categories"),
            seeds=sorted(int(x) for x in ok["seed"].unique()),
            chance=CHANCE_LABEL.strip("_"),
            resamples=resamples,
        )
    )
    if ok.empty:
        parts.append("_No finished episodes._\n")
    else:
        tally: Tally = defaultdict(Counter)
        delta = "semclip" if kind == "ablation" and "semclip" in order else None
        zero = kind == "sweep" and (ok["shots"] == 0).any() and ok["shots"].nunique() > 1
        detection = metric_table(
            ok,
            DETECTION,
            order,
            delta_to=delta,
            chance=True,
            reps=reps,
            gain_over_zero=zero,
            tally=tally,
        )
        classifiers = [v for v in order if ok[ok["variant"] == v]["cls_accuracy"].notna().any()]
        types = ""
        if classifiers:
            links = write_confusion(reps, ok, classifiers, out_dir, kind) if out_dir else {}
            types = defect_type_table(
                ok[ok["variant"].isin(classifiers)], classifiers, reps, tally, links
            )
        if any(tally.values()):
            parts.append("## Wins / ties / losses\n")
            parts.append(
                "Per method, over the K x metric cells of the detection and defect-type tables: "
                "a win where it is bold (its paired interval against every other row excludes "
                "0), a loss where the best row's paired interval against it excludes 0, a tie "
                f"otherwise. Intervals: {resamples} resamples.\n"
            )
            parts.append(tally_table(tally, order) + "\n")
        parts.append("## Detection\n")
        if f"({NO_SCORES})" in detection or "(no interval)" in detection:
            parts.append(NO_SCORES_NOTE)
        parts.append(detection + "\n")
        paired = paired_table(ok, DETECTION, order, reps)
        if paired:
            parts.append("## Paired differences with the best (detection)\n")
            parts.append(
                "Per shot count and column: the column's best row minus each row, in points, "
                "with its paired 95% interval and the share of resamples in which the best is "
                "ahead ('best': the column's best; a bold cell above needs every interval of its "
                "column to exclude 0, the constant-score row included).\n"
            )
            parts.append(paired + "\n")
        parts.append("## Defect type on defect images: which type is it?\n")
        if classifiers:
            parts.append(
                "Defect query images only; the predicted type is the arg-max over the defect "
                "types' logits (the normal/defect decision is the detection table's). Chance "
                "rows: always the query's most frequent type, and a uniform random guess "
                "(expected confusion matrix).\n"
            )
            parts.append(types + "\n")
            parts.append("## Defect-type classification (N-way: normal + defect types)\n")
            parts.append(
                "All query images, half of them normal (the support is 1/7 normal: "
                "PROTOCOL.md, prior shift).\n"
            )
            parts.append(
                metric_table(
                    ok[ok["variant"].isin(classifiers)], CLASSIFICATION, classifiers, reps=reps
                )
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
        parts.append(per_type_table(ok, order, unseen, reps) + "\n")
        parts.append("## Per category\n")
        parts.append(per_category_table(ok, order, ("iAUROC", "pAUROC", "pF1max"), reps) + "\n")
    notes = _notes(rows)
    if notes:
        parts.append("## Notes on the episodes\n")
        parts.append(
            markdown(["Note", "Episodes"], [[note, count] for note, count in notes]) + "\n"
        )
    parts.append("## Skipped episodes\n")
    if skipped.empty:
        parts.append("None.\n")
    else:
        reasons = skipped.groupby(["variant", "shots", "reason"]).size().reset_index(name="count")
        parts.append(
            markdown(
                ["Method", "Shots", "Reason", "Episodes"],
                [[r.variant, r.shots, r.reason, r["count"]] for _, r in reasons.iterrows()],
            )
            + "\n"
        )
    return "\n".join(parts), rows, reps


def write_plots(
    rows: pd.DataFrame, out_dir: Path, kind: str, reps: Replicates | None = None
) -> list[Path]:
    """``<kind>_<metric>.png``: metric versus shots per variant with error bars: the 95%
    bootstrap interval where the episodes' per-image scores are stored, else the seed std."""
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
        intervals = seed_std = False
        for variant in dict.fromkeys(ok["variant"]):
            part = ok[ok["variant"] == variant]
            xs, ys, lows, highs = [], [], [], []
            for shots in sorted(part["shots"].unique()):
                frame = part[part["shots"] == shots]
                values, reason = seed_values(frame, metric)
                if reason is None:
                    mean = values.mean() * 100
                    spread = values.std(ddof=1) * 100 if len(values) > 1 else 0.0
                    low, high = mean - spread, mean + spread
                    replicates = reps.cell(frame, metric) if reps is not None else None
                    if replicates is not None:
                        low, high = (100 * v for v in percentile_interval(replicates))
                        intervals = True
                    else:
                        seed_std = True
                    xs.append(shots)
                    ys.append(mean)
                    lows.append(max(mean - low, 0.0))
                    highs.append(max(high - mean, 0.0))
            if xs:
                ax.errorbar(xs, ys, yerr=[lows, highs], marker="o", capsize=3, label=variant)
        ax.set_xticks([int(k) for k in sorted(ok["shots"].unique())])
        ax.set_xlabel("shots (K)")
        ax.set_ylabel(f"{HEADINGS[metric]} (%)")
        bars = " / ".join(
            text for text, used in (("95% interval", intervals), ("seed std", seed_std)) if used
        )
        ax.set_title(f"{HEADINGS[metric]} vs shots (mean, bars: {bars or 'none'})", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = Path(out_dir) / f"{kind}_{metric}.png"
        fig.savefig(path)
        plt.close(fig)
        paths.append(path)
    return paths


def write_confusion(
    reps: Replicates | None,
    ok: pd.DataFrame,
    classifiers: Sequence[str],
    out_dir: Path,
    kind: str,
) -> dict[str, str]:
    """``<kind>_confusion_<variant>.png`` per classifying variant at the largest K of the run:
    defect-type confusion matrix (torchmetrics) summed over categories and seeds, rows
    normalised. Returns markdown links keyed ``variant/K``."""
    if reps is None or not reps.types:
        return {}
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from semclip_bench.metrics.classification import type_scores

    shots = int(ok["shots"].max())
    names = reps.type_names
    links = {}
    for variant in classifiers:
        pairs = [v for k, v in reps.types.items() if k[1] == variant and k[2] == shots]
        if not pairs:
            continue
        target = np.concatenate([p[0] for p in pairs])
        pred = np.concatenate([p[1] for p in pairs])
        confusion = type_scores(pred, target, len(names))["confusion"].astype(float)
        share = confusion / np.maximum(confusion.sum(1, keepdims=True), 1)
        fig, ax = plt.subplots(figsize=(5.2, 4.4), dpi=120)
        image = ax.imshow(share, vmin=0, vmax=1, cmap="Blues")
        for i in range(len(names)):
            for j in range(len(names)):
                colour = "white" if share[i, j] > 0.5 else "black"
                ax.text(
                    j,
                    i,
                    f"{int(confusion[i, j])}",
                    ha="center",
                    va="center",
                    fontsize=7,
                    color=colour,
                )
        ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(len(names)), names, fontsize=8)
        ax.set_xlabel("predicted type")
        ax.set_ylabel("true type")
        ax.set_title(
            f"{variant}, K = {shots}: defect images (counts, colour = row share)", fontsize=8
        )
        fig.colorbar(image, ax=ax, fraction=0.046)
        fig.tight_layout()
        path = Path(out_dir) / f"{kind}_confusion_{variant}.png"
        fig.savefig(path)
        plt.close(fig)
        links[f"{variant}/{shots}"] = f"[K = {shots}]({path.name})"
    return links


def write_report(
    folders: Sequence[Path],
    kind: str,
    out_dir: Path,
    report_command: str | None = None,
    allow_mixed: bool = False,
    maps_shots: int | None = None,
    resamples: int = DEFAULT_RESAMPLES,
) -> tuple[Path, pd.DataFrame]:
    """Write ``<out_dir>/<kind>.md`` (and plots for a sweep, and the map pictures
    ``maps/<category>.png`` at K = ``maps_shots`` from the maps the run stored, see
    ``runner/record/maps.py``); returns the path and the rows."""
    from semclip_bench.runner.record.maps import write_map_pictures

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    text, rows, reps = _build(folders, kind, report_command, allow_mixed, resamples, out_dir)
    plots = write_plots(rows, out_dir, kind, reps) if kind == "sweep" else []
    if plots:
        text += "\n## Plots\n\n" + "\n".join(f"![{p.stem}]({p.name})" for p in plots) + "\n"
    order = list(dict.fromkeys(rows["variant"])) if not rows.empty else []
    text += write_map_pictures(folders, out_dir, kind, order, maps_shots)
    path = out_dir / f"{kind}.md"
    path.write_text(text)
    return path, rows
