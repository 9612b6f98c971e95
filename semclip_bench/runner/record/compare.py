"""How a run's rows compare with another run's: exactly, row by row, as written in the CSV.

``verify`` uses the row comparison to check a rerun against committed rows. At the end of a
``sweep``/``ablate`` (:func:`reference_report`), the same comparison says how the user's run
(written to ``runs/`` by default) compares with the committed reference of the same command,
``results/sweep`` for a CPU fp32 sweep for instance: "216 of 216 rows identical to results/sweep",
or the count and the largest differences with the recorded package versions that differ. Rows of
another identity (protocol, dataset digest, weights digest) are not compared: one line says which
part of the identity differs instead.
"""

from __future__ import annotations

import csv
import json
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from semclip_bench.runner.record.row_store import (
    EPISODES_FILE,
    IDENTITY_COLUMNS,
    IDENTITY_NAMES,
    METRIC_COLUMNS,
    PROVENANCE_FILE,
    UNKNOWN,
)

#: Columns compared exactly (as CSV text) between two rows of one episode.
COMPARED: tuple[str, ...] = (
    "status",
    "reason",
    "n_query",
    "n_query_normal",
    "n_query_defect",
    *METRIC_COLUMNS,
    "per_type_auroc",
)

#: The committed reference folder of each run, relative to the repository root, by (kind, device
#: type, precision): the folders docs/results.md lists in its table of committed results.
REFERENCES: dict[tuple[str, str, str], str] = {
    ("sweep", "cpu", "fp32"): "results/sweep",
    ("sweep", "cuda", "fp32"): "results/gpu/sweep",
    ("ablation", "cuda", "fp32"): "results/gpu/ablation",
}

#: Recorded settings (provenance ``config``) that change rows; named when they differ.
_SETTINGS: tuple[str, ...] = (
    "backbone",
    "pretrained",
    "image_size",
    "batch_size",
    "method_overrides",
    "config_dir",
)

#: How many of the largest metric differences the summary lists.
SHOWN_DIFFERENCES = 3


@dataclass
class Mismatch:
    """One column of one episode whose text differs between two runs."""

    episode_id: str
    column: str
    committed: str
    rerun: str


def raw_rows(folder: Path) -> dict[str, dict[str, str]]:
    """Every row under ``folder`` as CSV text, by episode id (first occurrence wins, as in
    ``row_store.read_rows``); a last line cut short by an interruption is left out."""
    rows: dict[str, dict[str, str]] = {}
    for path in sorted(Path(folder).rglob(EPISODES_FILE)):
        text = path.read_text(encoding="utf-8")
        lines = text[: text.rfind("\n") + 1]
        for row in csv.DictReader(lines.splitlines(keepends=True)):
            rows.setdefault(row["episode_id"], row)
    return rows


def compare_row(episode: str, committed: dict[str, str], rerun: dict[str, str] | None) -> list:
    """The :class:`Mismatch` of every compared column of one episode (a missing row is one)."""
    if rerun is None:
        return [Mismatch(episode, "(row)", "present", "not produced by the rerun")]
    return [
        Mismatch(episode, column, committed.get(column, ""), rerun.get(column, ""))
        for column in COMPARED
        if committed.get(column, "") != rerun.get(column, "")
    ]


def first_provenance(folder: Path) -> dict[str, Any]:
    """The first ``provenance.json`` under ``folder`` (rank 0 of a multi-process run), or {}."""
    for path in sorted(Path(folder).rglob(PROVENANCE_FILE)):
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            continue
        if isinstance(record, dict):
            return record
    return {}


def recorded_versions(record: dict[str, Any]) -> dict[str, str]:
    """Package versions a provenance record names: its ``versions`` mapping where present (newer
    records), and ``torch`` (recorded by every version of the runner)."""
    versions = record.get("versions")
    found = {str(k): str(v) for k, v in versions.items()} if isinstance(versions, dict) else {}
    if record.get("torch") and "torch" not in found:
        found["torch"] = str(record["torch"])
    return found


def version_differences(reference: dict[str, Any], run: dict[str, Any]) -> list[str]:
    """``"name A vs B"`` for each package both records name with different versions."""
    ours, theirs = recorded_versions(run), recorded_versions(reference)
    return [
        f"{name} {theirs[name]} vs {ours[name]}"
        for name in sorted(set(ours) & set(theirs))
        if ours[name] != theirs[name]
    ]


def _setting_differences(reference: dict[str, Any], run: dict[str, Any]) -> list[str]:
    """Recorded settings that change rows and differ between the two runs."""
    ours, theirs = run.get("config") or {}, reference.get("config") or {}
    out = [
        f"{name} {theirs.get(name)!r} vs {ours.get(name)!r}"
        for name in _SETTINGS
        if name in ours and name in theirs and ours.get(name) != theirs.get(name)
    ]
    ours_mode, theirs_mode = run.get("training"), reference.get("training")
    if ours_mode and theirs_mode and ours_mode != theirs_mode:
        out.append(f"heads trained {reference['training']} vs {run['training']}")
    return out


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return math.nan


@dataclass
class Difference:
    """One metric of one episode that differs between the reference and the run."""

    metric: str
    episode_id: str
    reference: str
    run: str

    @property
    def gap(self) -> float:
        """|reference - run| (infinite where one side is undefined)."""
        a, b = _number(self.reference), _number(self.run)
        if math.isnan(a) and math.isnan(b):
            return 0.0
        gap = abs(a - b)
        return math.inf if math.isnan(gap) else gap


@dataclass
class Agreement:
    """How the rows of a run compare with a reference run's rows of the same episodes."""

    reference: str  # how to name the reference folder in messages (e.g. results/sweep)
    run_rows: int = 0
    shared: int = 0
    identical: int = 0
    #: Why the rows were not compared (another identity), else None.
    not_comparable: str | None = None
    #: Metric differences, largest first.
    differences: list[Difference] = field(default_factory=list)
    #: Other compared columns that differ (status, query sizes, per-type AUROC) and in how many
    #: rows.
    other_columns: dict[str, int] = field(default_factory=dict)
    versions: list[str] = field(default_factory=list)
    settings: list[str] = field(default_factory=list)
    described: str = ""  # the reference's device and precision, e.g. "CPU fp32, commit ceab40a"

    def lines(self) -> list[str]:
        """The summary as printed at the end of a run (first line is the verdict)."""
        where = f"{self.reference}" + (f" ({self.described})" if self.described else "")
        versions = (
            f"; recorded versions that differ: {', '.join(self.versions)}" if self.versions else ""
        )
        if self.not_comparable is not None:
            return [f"compare: not compared with {where}: {self.not_comparable}{versions}"]
        if not self.shared:
            return [
                f"compare: none of this run's {self.run_rows} episodes is in {where} (other "
                "categories, methods, shots or seeds)"
            ]
        extra = self.run_rows - self.shared
        tail = f"; {extra} of this run's episodes are not in it" if extra else ""
        head = f"compare: {self.identical} of {self.shared} rows identical to {where}{tail}"
        if self.identical == self.shared:
            return [head]
        lines = [head + versions]
        if self.settings:
            lines.append(f"  settings that differ: {', '.join(self.settings)}")
        if self.differences:
            lines.append(f"  largest differences (metric, episode, {self.reference}, this run):")
            for item in self.differences[:SHOWN_DIFFERENCES]:
                gap = "undefined on one side" if math.isinf(item.gap) else f"{item.gap:.3g}"
                lines.append(
                    f"    {item.metric} {item.episode_id}: {item.reference} vs {item.run} ({gap})"
                )
        if self.other_columns:
            listed = ", ".join(f"{c} ({n} rows)" for c, n in sorted(self.other_columns.items()))
            lines.append(f"  other columns that differ: {listed}")
        return lines


def _identity(rows: dict[str, dict[str, str]], ids: Sequence[str] | None = None) -> dict:
    """Distinct values of each identity column over the rows (``ids``: only those)."""
    chosen = rows.values() if ids is None else (rows[i] for i in ids)
    values: dict[str, set[str]] = {c: set() for c in IDENTITY_COLUMNS}
    for row in chosen:
        for column in IDENTITY_COLUMNS:
            values[column].add(row.get(column) or UNKNOWN)
    return values


def _short(value: str) -> str:
    return value if len(value) <= 16 else value[:12] + "…"


def compare_runs(run_folder: Path, reference_folder: Path, name: str | None = None) -> Agreement:
    """Compare the rows of ``run_folder`` with those of ``reference_folder`` (episodes both
    have), exactly as written; ``name`` names the reference in messages."""
    reference_rows, run_rows = raw_rows(reference_folder), raw_rows(run_folder)
    ref_record, run_record = first_provenance(reference_folder), first_provenance(run_folder)
    agreement = Agreement(reference=name or str(reference_folder), run_rows=len(run_rows))
    device = str(ref_record.get("device", "")).split(" (")[0]  # "CPU", or the GPU model
    agreement.described = " ".join(filter(None, [device, str(ref_record.get("precision", ""))]))
    if ref_record.get("git_commit"):
        agreement.described += f", commit {ref_record['git_commit']}"
    agreement.versions = version_differences(ref_record, run_record)
    theirs, ours = _identity(reference_rows), _identity(run_rows)
    differing = [
        f"{IDENTITY_NAMES[c]} {'/'.join(map(_short, sorted(theirs[c])))} there, "
        f"{'/'.join(map(_short, sorted(ours[c])))} here"
        for c in IDENTITY_COLUMNS
        if theirs[c] != ours[c]
    ]
    if differing:
        agreement.not_comparable = (
            "its rows have another identity (" + "; ".join(differing) + "), so the numbers "
            "are not of the same benchmark"
        )
        return agreement
    shared = [i for i in run_rows if i in reference_rows]
    agreement.shared = len(shared)
    others: Counter[str] = Counter()
    for episode in shared:
        mismatches = compare_row(episode, reference_rows[episode], run_rows[episode])
        if not mismatches:
            agreement.identical += 1
            continue
        for mismatch in mismatches:
            if mismatch.column in METRIC_COLUMNS:
                agreement.differences.append(
                    Difference(mismatch.column, episode, mismatch.committed, mismatch.rerun)
                )
            else:
                others[mismatch.column] += 1
    agreement.differences.sort(key=lambda d: (-d.gap, d.episode_id, d.metric))
    agreement.other_columns = dict(others)
    if agreement.identical < agreement.shared:
        agreement.settings = _setting_differences(ref_record, run_record)
    return agreement


def repository_root() -> Path:
    """The checkout the package runs from (where the committed ``results/`` live)."""
    return Path(__file__).resolve().parents[3]


def reference_for(kind: str, record: dict[str, Any], root: Path | None = None) -> Path | None:
    """The committed reference folder of a run of ``kind`` whose provenance is ``record`` (its
    device and precision pick it: :data:`REFERENCES`), or None when there is none (another
    precision, or a package installed without its repository's ``results/``)."""
    device = str(record.get("device", ""))
    if not device:
        return None
    device_type = "cpu" if device.startswith("CPU") else "cuda"
    relative = REFERENCES.get((kind, device_type, str(record.get("precision", ""))))
    if relative is None:
        return None
    folder = (root or repository_root()) / relative
    return folder if any(folder.rglob(EPISODES_FILE)) else None


def reference_report(kind: str, run_folder: Path, root: Path | None = None) -> list[str]:
    """The lines that say how the run in ``run_folder`` compares with its committed reference
    (empty when there is none, or when the run wrote into the reference itself)."""
    run_folder = Path(run_folder)
    root = root or repository_root()
    reference = reference_for(kind, first_provenance(run_folder), root)
    if reference is None:
        return []
    if run_folder.resolve() == reference.resolve():
        return [f"compare: this run wrote into the committed reference {reference} itself"]
    try:
        name = str(reference.relative_to(root))
    except ValueError:
        name = str(reference)
    return compare_runs(run_folder, reference, name).lines()


__all__ = [
    "COMPARED",
    "REFERENCES",
    "Agreement",
    "Mismatch",
    "compare_row",
    "compare_runs",
    "raw_rows",
    "reference_for",
    "reference_report",
]
