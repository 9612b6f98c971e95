"""Provenance: what produced a run's rows, recorded in ``provenance.json`` and printed atop tables.

A run's identity is (protocol version, dataset content digest, weights digest): rows may only be
merged, resumed into or checked against rows of the same identity (``row_store.check_identity``).
The rest of the record (command, commit, date, device, precision, seeds, timings, this process's
share of the work) describes the invocation; ``provenance_block`` renders the records of one or more
folders (shards, ranks of a ``--devices N`` run, resumed invocations) as the tables' header.
"""

from __future__ import annotations

import csv
import io
import json
import os
import platform
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from semclip_bench._version import __version__
from semclip_bench.errors import UserError
from semclip_bench.runner.record.row_store import (
    EPISODES_FILE,
    IDENTITY_COLUMNS,
    IDENTITY_NAMES,
    PROTOCOL_VERSION,
    PROVENANCE_FILE,
    UNKNOWN,
)
from semclip_bench.runner.record.versions import (
    environment_record,
    record_versions_note,
    versions_text,
)

#: Where the shipped default weights live, relative to the repository (how tables name them).
SHIPPED_LABEL = "semclip_bench/weights/{name} (shipped default)"


#: Environment variable that overrides the detected git commit (see :func:`git_commit`).
COMMIT_ENV = "SEMCLIP_BENCH_GIT_COMMIT"


def git_commit() -> str:
    """Short commit of the package's checkout (``+dirty`` with uncommitted changes to tracked
    files), or "unknown" outside git. ``$SEMCLIP_BENCH_GIT_COMMIT`` overrides it, for runs from a
    copy of the code whose git metadata is missing or stale (e.g. a tree synced to a GPU host)."""
    override = os.environ.get(COMMIT_ENV, "").strip()
    if override:
        return override
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
        )
        commit = out.stdout.strip() or "unknown"
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
        return commit + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def device_name(device: torch.device) -> str:
    """What computed the rows: the GPU model, or the CPU with its thread count."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def backbone_spec(config):
    """The backbone a run uses: ``--backbone``/``--pretrained``/``--image-size`` over the
    package default (the shipped weights apply only to the default architecture)."""
    from semclip_bench.backbones import requested_backbone_spec

    return requested_backbone_spec(config.backbone, config.pretrained, config.image_size)


def weights_identity(spec) -> tuple[str, str]:
    """``(label, digest)`` of a backbone's weights.

    label: the shipped default file (repository-relative), a local file path, an open_clip tag, or
    "random init"; digest: the file's full sha256, ``random-init:<model>:seed<n>`` (the seeded
    initialisation is the identity), or ``open_clip-tag:<tag>`` (the file lives in open_clip's
    download cache and is not hashed).
    """
    from semclip_bench.backbones import DEFAULT_WEIGHTS
    from semclip_bench.backbones.loading import RANDOM_INIT_SEED
    from semclip_bench.data import file_sha256

    if spec.pretrained is None:
        return "random init", f"random-init:{spec.name}:seed{RANDOM_INIT_SEED}"
    path = Path(str(spec.pretrained)).expanduser()
    if path.is_file():
        shipped = DEFAULT_WEIGHTS.is_file() and path.resolve() == DEFAULT_WEIGHTS.resolve()
        label = SHIPPED_LABEL.format(name=path.name) if shipped else str(spec.pretrained)
        return label, file_sha256(path)
    return f"open_clip tag {spec.pretrained}", f"open_clip-tag:{spec.pretrained}"


def run_identity(dataset_digest: str, weights_digest: str) -> dict[str, str]:
    """The identity columns of every row of a run."""
    return {
        "protocol": PROTOCOL_VERSION,
        "dataset_digest": dataset_digest,
        "weights_digest": weights_digest,
    }


def check_resume(folder: Path, identity: dict[str, str], allow_mixed: bool) -> None:
    """Refuse to add rows of ``identity`` to a folder holding rows of another identity (called
    before the first episode); ``allow_mixed`` lets it through (the tables then say so).

    Reads complete lines only: other ranks of the same run may be appending rows meanwhile.
    """
    if allow_mixed:
        return
    for path in sorted(Path(folder).rglob(EPISODES_FILE)):
        data = path.read_text(encoding="utf-8")
        lines = data[: data.rfind("\n") + 1]
        for row in csv.DictReader(io.StringIO(lines)):
            for column in IDENTITY_COLUMNS:
                value = row.get(column) or UNKNOWN
                if value != identity[column]:
                    raise UserError(
                        f"--out: {path.parent} already holds rows of {IDENTITY_NAMES[column]} "
                        f"{value}, this run has {identity[column]}; resuming would mix them: "
                        "use another --out, or pass --allow-mixed; "
                        + record_versions_note(path.parent)
                    )


def write_provenance(
    folder: Path,
    config,
    command: str,
    spec,
    device: torch.device,
    dataset,
    result,
    identity: dict[str, str],
    weights_label: str,
    categories: Sequence[str],
    rank: int = 0,
    assigned: int = 0,
) -> None:
    """Write ``<folder>/provenance.json`` for this process (one per rank of a multi-rank run).

    ``rank`` of ``result.world_size`` ranks with ``--shard s/n``: the ranks claimed the units whose
    index ``i`` satisfies ``i % n == s`` (``runner/plan/schedule.py``); ``assigned`` is how many
    units this rank ran.
    """
    path = folder / PROVENANCE_FILE
    previous = json.loads(path.read_text()) if path.exists() else {}
    counts: dict[str, int] = {}
    for sample in dataset.samples:
        counts[sample.split] = counts.get(sample.split, 0) + 1
    shard_index, shard_count = config.shard
    ranks = result.world_size
    record = {
        "command": command,
        "package_version": __version__,
        "git_commit": result.commit,
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "protocol": identity["protocol"],
        "dataset": dataset.name,
        "dataset_digest": identity["dataset_digest"],
        "dataset_root": str(dataset.root) if dataset.root else "",
        "dataset_size": {"images": len(dataset.samples), **counts},
        "categories": list(categories),
        "backbone": spec.name,
        "weights": weights_label,
        "weights_digest": identity["weights_digest"],
        "image_size": config.image_size,
        "device": device_name(device),
        # ranks may share a GPU (--procs-per-device): which one this rank used
        "device_index": str(device) if device.type == "cuda" else "",
        "seeds": list(config.seeds),
        "shots": list(config.shots),
        "shard": f"{shard_index}/{shard_count}",
        "rank": rank,
        "ranks": ranks,
        "work": f"work items i with i % {shard_count} == {shard_index}"
        + (", claimed by the ranks longest estimated first" if ranks > 1 else ""),
        "episodes_assigned": assigned,
        "precision": result.precision,
        "training": getattr(result, "training", "alone"),
        "devices": config.devices,
        "procs_per_device": max(1, ranks // max(1, config.devices)),
        "wall_seconds": round(result.wall_seconds, 1),
        "stage_seconds": {k: round(v, 1) for k, v in result.stage_seconds.items()},
        "cache": result.cache_summary,
        "episodes_written": result.written,
        "episodes_resumed": result.already_done,
        "config": json.loads(json.dumps(asdict(config), default=str)),
        # versions on the numbers' path and the lock's digest (runner/record/versions.py)
        **environment_record(),
    }
    if previous and result.already_done:
        record["earlier_invocations"] = [
            *previous.get("earlier_invocations", []),
            {
                k: previous.get(k)
                for k in ("date", "git_commit", "wall_seconds", "device", "versions")
            },
        ]
    path.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")


def read_provenance(folders: Sequence[Path]) -> list[dict[str, Any]]:
    """Every ``provenance.json`` under the folders (sorted paths: byte-stable tables)."""
    records = []
    for folder in folders:
        for path in sorted(Path(folder).rglob(PROVENANCE_FILE)):
            records.append(json.loads(path.read_text()))
    return records


def _parts(records: Sequence[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Records grouped by invocation: the ranks of one ``--devices N`` run form one part."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for rec in records:
        ranks = rec.get("ranks", rec.get("devices", 1))
        key = (rec.get("command"), rec.get("git_commit"), rec.get("shard"), ranks)
        if ranks == 1:
            key += (len(groups),)  # a single-process record is its own part
        groups.setdefault(key, []).append(rec)
    return [sorted(g, key=lambda r: r.get("rank", 0)) for g in groups.values()]


def _dataset_line(rec: dict[str, Any]) -> str:
    size = rec.get("dataset_size", {})
    splits = ", ".join(f"{n} {split}" for split, n in size.items() if split != "images")
    digest = rec.get("dataset_digest", "unknown (not recorded)")
    return (
        f"- Dataset: {rec.get('dataset')} ({size.get('images', '?')} images: {splits}; "
        f"categories: {', '.join(rec.get('categories', []))}); content sha256 `{digest}`"
    )


def _weights_line(rec: dict[str, Any]) -> str:
    digest = rec.get("weights_digest", "unknown (not recorded)")
    if str(digest).startswith("random-init"):
        what = "random init (seeded, no weights file)"
    elif str(digest).startswith("open_clip-tag"):
        what = f"{rec.get('weights')} (file in open_clip's cache, not hashed)"
    else:
        what = f"{rec.get('weights')}, sha256 `{digest}`"
    return f"- Backbone: `{rec.get('backbone')}`, weights: {what}"


def _training_text(rec: dict[str, Any]) -> str:
    """How the heads were trained: a group's episodes stacked, or each episode alone."""
    mode = rec.get("training")
    if mode is None:  # recorded before the field: the flag of that time, else alone
        mode = "stacked" if (rec.get("config") or {}).get("fit_together") else "alone"
    if mode == "stacked":
        return (
            "the episodes of one (variant, shots, support size) of a method that allows it, "
            "every seed and category, trained as one stacked module "
            "(`--fit-mode stacked`)"
        )
    return "each episode trained alone (`--fit-mode alone`)"


def _part_lines(part: Sequence[dict[str, Any]]) -> list[str]:
    first = part[0]
    ranks = first.get("ranks", first.get("devices", 1))
    lines = [
        f"- Command: `{first.get('command', '?')}`",
        f"- Package: semclip_bench {first.get('package_version')} at git commit "
        f"`{first.get('git_commit')}`",
        f"- Versions: {versions_text(first)}",
        f"- Date: {first.get('date')}",
        f"- Protocol: {first.get('protocol', 'unknown (not recorded: older than v2)')}",
        _dataset_line(first),
        _weights_line(first),
    ]
    precision = first.get("precision", "?")
    if ranks == 1:
        lines.append(f"- Device: {first.get('device')}; precision: {precision}")
    else:
        assigned = ", ".join(
            f"rank {r.get('rank', i)}: {r.get('episodes_assigned', '?')}"
            for i, r in enumerate(part)
        )
        flags = f"--devices {first.get('devices', ranks)}"
        if "procs_per_device" in first:
            flags += f" --procs-per-device {first['procs_per_device']}"
        lines.append(
            f"- Processes: {ranks} ranks (`{flags}`, shard {first.get('shard')}) on "
            f"{_hardware_text(part)}; precision: {precision}; episodes per rank: {assigned}"
        )
        if len(part) < ranks:
            lines.append(f"- **Only {len(part)} of {ranks} ranks left a provenance record**")
    lines.append(f"- Shots: {first.get('shots')}; seeds: {first.get('seeds')}")
    lines.append(f"- Training: {_training_text(first)}")
    wall = max(float(r.get("wall_seconds", 0)) for r in part)
    stages: dict[str, float] = {}
    for rec in part:
        for name, seconds in rec.get("stage_seconds", {}).items():
            stages[name] = stages.get(name, 0.0) + float(seconds)
    stage_text = ", ".join(f"{k} {v:.0f}s" for k, v in stages.items())
    if ranks == 1:
        lines.append(f"- Wall-clock: {wall:.0f} s ({stage_text}); {first.get('cache', '')}")
    else:
        lines.append(
            f"- Wall-clock: {wall:.0f} s (slowest rank; stages summed over ranks: {stage_text}); "
            f"rank 0: {first.get('cache', '')} (every rank's line: its provenance.json)"
        )
    resumed = sum(int(r.get("episodes_resumed", 0) or 0) for r in part)
    if resumed:
        lines.append(f"- Resumed: {resumed} episodes came from earlier invocations")
    return lines


def _hardware_text(part: Sequence[dict[str, Any]]) -> str:
    """'1 x NVIDIA H200 (8 processes on cuda:0)', '2 x NVIDIA H200 (cuda:0: 4, cuda:1: 4 processes)'
    or '2 x CPU (...)': the distinct GPUs the ranks used, not one GPU per rank."""
    if not any(r.get("device_index") for r in part):
        return _count_text(r.get("device", "?") for r in part)  # CPU ranks, or older records
    per_gpu: dict[tuple[str, str], int] = {}
    for r in part:
        key = (str(r.get("device", "?")), str(r.get("device_index", "?")))
        per_gpu[key] = per_gpu.get(key, 0) + 1
    names = _count_text(name for name, _ in per_gpu)
    if len(per_gpu) == 1:
        (_, index), count = next(iter(per_gpu.items()))
        return f"{names} ({count} processes on {index})"
    shares = ", ".join(f"{index}: {count}" for (_, index), count in per_gpu.items())
    return f"{names} ({shares} processes)"


def _count_text(values) -> str:
    """'2 x NVIDIA H200, 1 x CPU (...)': distinct values with their counts, first-seen order."""
    counts: dict[str, int] = {}
    for value in values:
        counts[value] = counts.get(value, 0) + 1
    return ", ".join(f"{n} x {v}" for v, n in counts.items())


def provenance_block(records: Sequence[dict[str, Any]], report_command: str | None) -> str:
    """The tables' provenance header: one section per invocation (shard, resumed run), the ranks
    of a multi-rank run described together."""
    if not records:
        return "_No provenance.json found next to the episode rows._\n"
    parts = _parts(records)
    lines: list[str] = []
    for i, part in enumerate(parts):
        if len(parts) > 1:
            ranks = part[0].get("ranks", part[0].get("devices", 1))
            where = f"shard {part[0].get('shard', '?')}" + (f", {ranks} ranks" if ranks > 1 else "")
            lines.append(f"**Part {i + 1} ({where})**\n")
        lines += _part_lines(part)
        lines.append("")
    if report_command:
        lines.append(f"Tables rebuilt by `{report_command}`.\n")
    return "\n".join(lines)


__all__ = [
    "backbone_spec",
    "check_resume",
    "device_name",
    "git_commit",
    "provenance_block",
    "read_provenance",
    "run_identity",
    "weights_identity",
    "write_provenance",
]
