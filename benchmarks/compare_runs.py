"""How far two runs of the same episodes are apart: CPU vs GPU, fp32 vs bf16 (``PROTOCOL.md``).

Run: ``python -m benchmarks.compare_runs REFERENCE CANDIDATE [--label TEXT] [--out FILE]``, where
both are run folders (``<out>/<kind>`` of a sweep, or any folder holding ``episodes.csv`` files).
Rows are matched by episode id; for every method the largest absolute difference of each metric
(in points, i.e. x100) over the shared episodes is printed next to the protocol's tolerance:
training-free methods must agree within 1e-3 (0.1 points) in fp32 and within 0.5 points in bf16;
for trainable methods the measured difference is stated, not judged. The table also counts the
episodes whose metrics are identical to the last bit (run-to-run repeatability). A second table
compares what a reader sees: the table cells' means (over seeds and categories, per variant and K)
of the shared episodes, with the largest |difference| per method and the K where it occurs. With
``--out``
the table is written as a keyed section of that Markdown file (``results/performance.md``).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks._sections import write_section
from semclip_bench.runner.record.row_store import METRIC_COLUMNS, PROVENANCE_FILE, read_rows

#: Methods whose numbers involve no training: the protocol's tolerances apply to them.
TRAINING_FREE = ("winclip", "patchcore", "linear_probe")
#: Protocol tolerances in metric units (not points): fp32 GPU vs CPU, bf16 vs fp32.
TOLERANCE = {"fp32": 1e-3, "bf16": 5e-3}


def _provenance(folder: Path) -> dict:
    paths = sorted(Path(folder).rglob(PROVENANCE_FILE))
    return json.loads(paths[0].read_text()) if paths else {}


def compare(reference: pd.DataFrame, candidate: pd.DataFrame) -> pd.DataFrame:
    """Per method: shared episodes, how many of them have every metric identical (to the last
    bit), and the largest |difference| of each metric (metric units).

    A metric that is NaN in both rows is equal; NaN in one row only counts as an infinite gap.
    """
    merged = reference.merge(candidate, on="episode_id", suffixes=("_ref", "_new"))
    merged = merged[(merged["status_ref"] == "ok") & (merged["status_new"] == "ok")]
    records = []
    for method, frame in merged.groupby("method_ref", sort=True):
        record: dict[str, float | int | str] = {"method": method, "episodes": len(frame)}
        same = np.ones(len(frame), dtype=bool)
        for metric in METRIC_COLUMNS:
            a = frame[f"{metric}_ref"].to_numpy(dtype=float)
            b = frame[f"{metric}_new"].to_numpy(dtype=float)
            both_nan = np.isnan(a) & np.isnan(b)
            same &= both_nan | (a == b)
            gap = np.where(both_nan, 0.0, np.abs(a - b))
            gap = np.where(np.isnan(gap), np.inf, gap)
            record[metric] = float(gap.max()) if len(gap) else math.nan
        record["identical"] = int(same.sum())
        records.append(record)
    return pd.DataFrame.from_records(records)


def compare_means(reference: pd.DataFrame, candidate: pd.DataFrame) -> pd.DataFrame:
    """Per method: the largest |difference| of the cell means (mean over the shared episodes of one
    variant and K, as a table's cell before its interval) of each metric, and the K where the
    largest of them occurs. A metric NaN in both means counts as equal.
    """
    merged = reference.merge(candidate, on="episode_id", suffixes=("_ref", "_new"))
    merged = merged[(merged["status_ref"] == "ok") & (merged["status_new"] == "ok")]
    metrics = [m for m in METRIC_COLUMNS if f"{m}_ref" in merged.columns]
    cells = merged.groupby(["method_ref", "variant_ref", "shots_ref"], sort=True)
    ref = cells[[f"{m}_ref" for m in metrics]].mean()
    new = cells[[f"{m}_new" for m in metrics]].mean()
    gaps = pd.DataFrame(
        {m: (new[f"{m}_new"] - ref[f"{m}_ref"]).abs().fillna(0.0) for m in metrics}, index=ref.index
    )
    records = []
    for method, frame in gaps.groupby(level=0, sort=True):
        record: dict[str, float | int | str] = {"method": method, "cells": len(frame)}
        record.update({m: float(frame[m].max()) for m in metrics})
        worst_cell = frame.max(axis=1).idxmax()
        record["at"] = f"{worst_cell[1]}, K = {int(worst_cell[2])}"
        records.append(record)
    return pd.DataFrame.from_records(records)


def verdict(method: str, worst: float, precision: str) -> str:
    """PASS/MISS against the protocol tolerance for training-free methods; 'stated' otherwise."""
    if method not in TRAINING_FREE:
        return "stated (trainable)"
    limit = TOLERANCE.get(precision)
    if limit is None:
        return "-"
    return "PASS" if worst <= limit else "MISS"


def markdown(table: pd.DataFrame, precision: str) -> str:
    metrics = [m for m in METRIC_COLUMNS if m in table.columns]
    header = ["method", "episodes", "identical", *metrics, "worst", f"verdict ({precision})"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for _, row in table.iterrows():
        values = [float(row[m]) for m in metrics]
        finite = [v for v in values if not math.isnan(v)]
        worst = max(finite) if finite else math.nan
        cells = [f"{100 * v:.3f}" if not math.isnan(v) else "n/a" for v in values]
        lines.append(
            "| "
            + " | ".join(
                [
                    str(row["method"]),
                    str(int(row["episodes"])),
                    str(int(row["identical"])),
                    *cells,
                    f"{100 * worst:.3f}",
                    verdict(str(row["method"]), worst, precision),
                ]
            )
            + " |"
        )
    return "\n".join(lines)


def means_markdown(table: pd.DataFrame) -> str:
    metrics = [m for m in METRIC_COLUMNS if m in table.columns]
    header = ["method", "cells", *metrics, "largest at"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for _, row in table.iterrows():
        cells = [f"{100 * float(row[m]):.3f}" for m in metrics]
        values = [str(row["method"]), str(int(row["cells"])), *cells, str(row["at"])]
        lines.append("| " + " | ".join(values) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("reference", type=Path, help="run folder of the reference (e.g. CPU fp32)")
    parser.add_argument("candidate", type=Path, help="run folder to compare (e.g. GPU bf16)")
    parser.add_argument(
        "--precision",
        choices=("fp32", "bf16"),
        default=None,
        help="tolerance to apply (default: the candidate's provenance precision)",
    )
    parser.add_argument("--label", default=None, help="section title (default: from provenance)")
    parser.add_argument("--out", type=Path, default=None, help="Markdown file to add a section to")
    args = parser.parse_args(argv)

    ref_prov, new_prov = _provenance(args.reference), _provenance(args.candidate)
    precision = args.precision or new_prov.get("precision", "fp32")
    reference_rows, candidate_rows = read_rows([args.reference]), read_rows([args.candidate])
    table = compare(reference_rows, candidate_rows)
    if table.empty:
        print("error: the two runs share no finished episode", file=sys.stderr)
        return 2
    label = args.label or (
        f"agreement | {new_prov.get('device', '?')} {precision} vs "
        f"{ref_prov.get('device', '?')} {ref_prov.get('precision', '?')}"
    )
    body = "\n".join(
        [
            f"- reference: `{args.reference}` ({ref_prov.get('device', '?')}, "
            f"{ref_prov.get('precision', '?')}, commit {ref_prov.get('git_commit', '?')})",
            f"- candidate: `{args.candidate}` ({new_prov.get('device', '?')}, {precision}, "
            f"commit {new_prov.get('git_commit', '?')})",
            f"- candidate command: `{new_prov.get('command', '?')}`",
            f"- command: `python -m benchmarks.compare_runs {args.reference} {args.candidate}`",
            "",
            "Largest |difference| per metric over the shared episodes, in points (x100); "
            "identical: episodes whose every metric is the same to the last bit. "
            "Tolerance for training-free methods: 0.1 points (fp32 vs CPU), 0.5 points (bf16).",
            "",
            markdown(table, precision),
            "",
            "Largest |difference| of the cell means (mean over the shared seeds and categories of "
            "one variant and K, before any interval), in points, and the cell where the largest "
            "of them occurs:",
            "",
            means_markdown(compare_means(reference_rows, candidate_rows)),
        ]
    )
    print(f"## {label}\n\n{body}")
    if args.out is not None:
        write_section(args.out, label, body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
