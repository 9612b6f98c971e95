"""Episode rows on disk: one CSV row per finished episode, appended at once (resumable, mergeable).

Layout of a run folder ``<out>/<kind>/``:
- ``episodes.csv``: one row per (category, variant, shots, seed), fixed columns (``COLUMNS``).
  Per-defect-type AUROCs and the reasons of undefined metrics are JSON columns.
- ``scores/<episode>.npz``: per-image scores, labels, types, class logits and pixel-score
  histograms of each finished episode (``metrics/bootstrap.EpisodeScores``), for the intervals.
- ``supports.jsonl``: the support files chosen for each (category, shots, seed) episode.
- ``provenance.json``: what produced the rows (command, version, commit, device, timings).

Every row carries its identity (``IDENTITY_COLUMNS``): the protocol version, the dataset's content
digest and the backbone weights' digest. Rows of different identities are never merged silently
(:func:`check_identity`). Rows written before these columns existed read as ``"unknown"``.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd

from semclip_bench.errors import UserError
from semclip_bench.runner.record.versions import between_note

#: Version of PROTOCOL.md the runner implements (fixed query per category, validation split,
#: balanced sem-synth query, content digests in the provenance).
PROTOCOL_VERSION = "v3"

#: Value of an identity column that a row does not record (written by an older version).
UNKNOWN = "unknown"

#: What makes rows comparable: merged or resumed rows must agree on every one of these.
IDENTITY_COLUMNS: tuple[str, ...] = ("protocol", "dataset_digest", "weights_digest")

#: How the identity columns are named in messages and table headers.
IDENTITY_NAMES = {
    "protocol": "protocol version",
    "dataset_digest": "dataset digest",
    "weights_digest": "weights digest",
}

METRIC_COLUMNS: tuple[str, ...] = (
    "iAUROC",
    "iAP",
    "iF1max",
    "pAUROC",
    "pF1max",
    "AUPRO",
    "cls_accuracy",
    "cls_precision",
    "cls_recall",
    "cls_f1",
)

COLUMNS: tuple[str, ...] = (
    "episode_id",
    "kind",
    "dataset",
    "category",
    "variant",
    "method",
    "supervision",
    "shots",
    "seed",
    "status",
    "reason",
    "n_query",
    "n_query_normal",
    "n_query_defect",
    *METRIC_COLUMNS,
    "per_type_auroc",
    "na_reasons",
    "fit_seconds",
    "predict_seconds",
    "backbone",
    "weights",
    "device",
    *IDENTITY_COLUMNS,
    "notes",
)

#: Columns a row may lack because an older version wrote it, and the value they read as.
OPTIONAL_COLUMNS: dict[str, str] = {**{c: UNKNOWN for c in IDENTITY_COLUMNS}, "notes": ""}

EPISODES_FILE = "episodes.csv"
#: Folder (next to ``episodes.csv``) of the per-episode image statistics the intervals use.
SCORES_DIR = "scores"
#: Key of a scored row that holds its ``EpisodeScores`` until the row is written.
SCORES_KEY = "_scores"
SUPPORTS_FILE = "supports.jsonl"
PROVENANCE_FILE = "provenance.json"


def scores_path(folder: Path, episode: str) -> Path:
    """Where the per-image statistics of an episode (by its id) live in a run folder."""
    return Path(folder) / SCORES_DIR / (episode.replace("/", "__") + ".npz")


class EpisodeStore:
    """Append-only episode rows of one run folder."""

    def __init__(self, folder: Path, scan: Path | None = None) -> None:
        self.folder = Path(folder)
        #: Folder whose rows (searched recursively, e.g. every ``rank<r>/``) count as done.
        self.scan = Path(scan) if scan is not None else self.folder
        self.csv_path = self.folder / EPISODES_FILE
        self.supports_path = self.folder / SUPPORTS_FILE
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserError(f"--out: cannot create {self.folder}: {exc.strerror}") from None
        self._repair_tail(self.csv_path)
        self._repair_tail(self.supports_path)

    @staticmethod
    def _repair_tail(path: Path) -> None:
        """Drop a last line cut short by an interruption (no trailing newline)."""
        if not path.exists() or path.stat().st_size == 0:
            return
        data = path.read_bytes()
        if not data.endswith(b"\n"):
            path.write_bytes(data[: data.rfind(b"\n") + 1])

    def done_ids(self) -> set[str]:
        """Episode ids with a row anywhere under the scanned folder (all ranks and shards)."""
        if not any(p.stat().st_size for p in self.scan.rglob(EPISODES_FILE)):
            return set()
        return set(read_rows([self.scan])["episode_id"])

    def supports_done(self) -> set[str]:
        """Support records already written by this process's store (each rank keeps its own)."""
        if not self.supports_path.exists():
            return set()
        with self.supports_path.open() as handle:
            return {json.loads(line)["episode"] for line in handle if line.strip()}

    def append(self, row: dict[str, Any]) -> None:
        """Write one row and flush it to disk before returning; its per-image statistics (the
        ``SCORES_KEY`` entry, if any) go to ``scores/<episode>.npz`` first."""
        row = dict(row)
        stats = row.pop(SCORES_KEY, None)
        if stats is not None:
            stats.save(scores_path(self.folder, row["episode_id"]))
        unknown = set(row) - set(COLUMNS)
        if unknown:
            raise ValueError(f"unknown columns {sorted(unknown)}")
        self._upgrade_header()
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
        if not self.csv_path.exists() or self.csv_path.stat().st_size == 0:
            writer.writeheader()
        writer.writerow({k: _cell(row.get(k)) for k in COLUMNS})
        _append_durably(self.csv_path, buffer.getvalue())

    def _upgrade_header(self) -> None:
        """Rewrite a CSV of an older column set with today's columns (missing identity cells read
        ``unknown``) before appending to it; atomic (temporary file, then rename), so an
        interruption leaves either the old or the new file, never a mixed one."""
        if not self.csv_path.exists() or self.csv_path.stat().st_size == 0:
            return
        with self.csv_path.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            if tuple(reader.fieldnames or ()) == COLUMNS:
                return
            missing = set(COLUMNS) - set(reader.fieldnames or ()) - set(OPTIONAL_COLUMNS)
            if missing:
                raise UserError(
                    f"{self.csv_path}: lacks columns {sorted(missing)}; not written by this tool?"
                )
            rows = [{k: r.get(k, OPTIONAL_COLUMNS.get(k, "")) for k in COLUMNS} for r in reader]
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        temporary = self.csv_path.with_name(self.csv_path.name + ".upgrade")
        temporary.write_text(buffer.getvalue(), encoding="utf-8")
        os.replace(temporary, self.csv_path)

    def append_support(self, record: dict[str, Any]) -> None:
        _append_durably(self.supports_path, json.dumps(record, sort_keys=True) + "\n")


def _cell(value: Any) -> Any:
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True)
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    return "" if value is None else value


def _append_durably(path: Path, text: str) -> None:
    with path.open("a", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())


def read_rows(folders: Iterable[Path], deduplicate: bool = True) -> pd.DataFrame:
    """Rows of every ``episodes.csv`` under the given folders, merged; duplicates (same episode
    id, e.g. a shard run twice) keep the first occurrence. Column ``source`` names the folder of
    each row's file; identity columns an older file lacks read ``unknown``.

    ``deduplicate=False`` keeps every row: a caller that checks identities must see them all,
    since a duplicate of another identity (the same episode run on other data) would otherwise
    vanish before the check (:func:`check_identity`).
    """
    frames = []
    for folder in folders:
        folder = Path(folder)
        paths = [folder] if folder.is_file() else sorted(folder.rglob(EPISODES_FILE))
        if not folder.exists():
            raise UserError(f"--from: folder not found: {folder}")
        for path in paths:
            if path.stat().st_size == 0:  # a rank or shard that has not written a row yet
                continue
            try:
                frame = pd.read_csv(path, dtype=_TEXT_COLUMNS, keep_default_na=False)
            except (pd.errors.ParserError, UnicodeDecodeError) as exc:
                raise UserError(f"cannot read episode rows {path}: {exc}") from None
            for column, default in OPTIONAL_COLUMNS.items():
                if column not in frame.columns:
                    frame[column] = default
            frame["source"] = str(path.parent)
            frames.append(frame)
    if not frames:
        raise UserError(f"no {EPISODES_FILE} found under {', '.join(map(str, folders))}")
    rows = pd.concat(frames, ignore_index=True)
    missing = set(COLUMNS) - set(rows.columns)
    if missing:
        raise UserError(f"episode rows lack columns {sorted(missing)}: not written by this tool?")
    for column in (*METRIC_COLUMNS, "fit_seconds", "predict_seconds"):
        rows[column] = pd.to_numeric(rows[column], errors="coerce")
    if deduplicate:
        rows = drop_duplicate_episodes(rows)
    return rows.reset_index(drop=True)


def drop_duplicate_episodes(rows: pd.DataFrame) -> pd.DataFrame:
    """One row per episode id, the first occurrence (folder order, then file order)."""
    return rows.drop_duplicates(subset="episode_id", keep="first").reset_index(drop=True)


#: Columns read as text whatever they hold (a digest of digits only must not become a number).
_TEXT_COLUMNS = {c: str for c in ("reason", *IDENTITY_COLUMNS, "notes")}


def identity_values(rows: pd.DataFrame) -> dict[str, dict[str, list[str]]]:
    """For each identity column, its distinct values (first-seen order) and the folders of the
    rows holding each value."""
    out: dict[str, dict[str, list[str]]] = {}
    for column in IDENTITY_COLUMNS:
        values: dict[str, list[str]] = {}
        for value, source in zip(rows[column], rows["source"], strict=True):
            sources = values.setdefault(str(value), [])
            if source not in sources:
                sources.append(source)
        out[column] = values
    return out


def check_identity(rows: pd.DataFrame, allow_mixed: bool, context: str) -> dict[str, list[str]]:
    """Refuse rows that disagree on an identity column unless ``allow_mixed``.

    Returns the mixed columns with their distinct values (empty when the rows agree). The error
    names the column, two of its values and the folders holding them; ``context`` starts the
    message (e.g. ``"report --from"``).
    """
    mixed: dict[str, list[str]] = {}
    for column, values in identity_values(rows).items():
        if len(values) < 2:
            continue
        mixed[column] = list(values)
        if not allow_mixed:
            (first, here), (second, there) = list(values.items())[:2]
            raise UserError(
                f"{context}: rows differ in {IDENTITY_NAMES[column]}: {first} "
                f"({', '.join(here)}) vs {second} ({', '.join(there)}); they were not produced on "
                "the same data/weights/protocol, so they cannot be merged; pass --allow-mixed to "
                "merge them anyway (the tables then say so); "
                + between_note(Path(here[0]), Path(there[0]))
            )
    return mixed


def read_supports(folders: Iterable[Path]) -> list[dict[str, Any]]:
    records: dict[str, dict[str, Any]] = {}
    for folder in folders:
        for path in sorted(Path(folder).rglob(SUPPORTS_FILE)):
            with path.open() as handle:
                for line in handle:
                    if line.strip():
                        record = json.loads(line)
                        records.setdefault(record["episode"], record)
    return [records[k] for k in sorted(records)]
