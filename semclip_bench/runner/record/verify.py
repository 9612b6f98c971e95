"""``verify``: rerun a few committed episodes from a clean cache and compare their rows exactly.

PROTOCOL.md (Reproducibility): CPU fp32 runs are bit-for-bit repeatable, and committed tables are
checked by rerunning a subset of their episodes. This module does that with the normal runner
(``engine.run``) on a temporary output folder, under a fresh temporary ``SEMCLIP_BENCH_CACHE``
(so the built-in data is regenerated from the code), with the settings recorded in the folder's
``provenance.json`` (data, backbone, weights, image size, batch size, method overrides, the run's
shard of the work) in one process: rows computed on the CPU rerun on the CPU in fp32, rows
computed on a GPU rerun on this machine's first GPU in their recorded precision (a run's rows do
not depend on its process or GPU count: every kernel runs in torch's deterministic-algorithm mode,
``runner/execute/episode.py``). Every metric column of each rerun row must equal the committed one
as written in the CSV (the same text, hence the same float bits).

GPU rows are rerun on a GPU of another model too: two models may round alike (the committed H200
rows reran bit for bit on an H100), and only a rerun can tell. The summary then names both GPUs,
and where rows differ, the failure line names the two GPU models as the likely cause.

Before any episode runs, it refuses (one error line naming what differs) when the committed rows
were computed on the CPU in another precision than fp32 or on a GPU while this machine has none,
were written under another protocol version, or carry a dataset or weights digest other than what
the rerun sees. Rows written with another torch version are rerun, with a note saying so.

The rerun evaluates only the selected episodes (``engine.run(select=...)``): an image's features
do not depend on which images shared its extraction batch (every batch has one fixed shape,
``runner/execute/features.py``), so nothing before them needs replaying, and rows of a resumed or
multi-process run verify like those of one uninterrupted run. It never reads the on-disk feature
store: its features are extracted afresh.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from semclip_bench.errors import UserError
from semclip_bench.runner.plan.config import (
    RunConfig,
    ablation_variants,
    merge_config,
    parse_int_list,
    sweep_variants,
)
from semclip_bench.runner.record.compare import COMPARED, Mismatch, compare_row, raw_rows
from semclip_bench.runner.record.provenance import (
    backbone_spec,
    git_commit,
    run_identity,
    weights_identity,
)
from semclip_bench.runner.record.row_store import (
    IDENTITY_COLUMNS,
    IDENTITY_NAMES,
    PROTOCOL_VERSION,
    PROVENANCE_FILE,
    UNKNOWN,
    read_rows,
)
from semclip_bench.runner.record.versions import (
    installed_versions,
    version_differences,
    versions_note,
)

log = logging.getLogger(__name__)

#: The default subset: the first category, these shot counts and seeds.
DEFAULT_SHOTS: tuple[int, ...] = (1, 5)
DEFAULT_SEEDS: tuple[int, ...] = (0,)
#: The trainable method the default subset of a sweep adds to every training-free one (the
#: default subset of an ablation has every variant).
DEFAULT_TRAINABLE = "semclip"

_SUBSET_KEYS = {
    "category": "categories",
    "categories": "categories",
    "shots": "shots",
    "seed": "seeds",
    "seeds": "seeds",
    "method": "methods",
    "methods": "methods",
    "variants": "methods",
}


@dataclass
class Subset:
    """Which committed episodes to rerun; ``None`` fields take the default."""

    categories: list[str] | None = None
    shots: list[int] | None = None
    seeds: list[int] | None = None
    #: Variant labels (a sweep's are its method names).
    methods: list[str] | None = None
    everything: bool = False


def parse_subset(tokens: Sequence[str] | None) -> Subset:
    """``["shots=1,5", "methods=patchcore"]`` or ``["all"]`` -> :class:`Subset`."""
    subset = Subset()
    for token in tokens or ():
        if token == "all":
            subset.everything = True
            continue
        key, _, value = token.partition("=")
        name = _SUBSET_KEYS.get(key.strip())
        items = [v.strip() for v in value.split(",") if v.strip()]
        if name is None or not items:
            raise UserError(
                f"--subset: bad item '{token}'; expected all, or KEY=V[,V...] with KEY one of "
                "categories, shots, seeds, methods"
            )
        if name in {"shots", "seeds"}:
            try:
                setattr(subset, name, parse_int_list(items))
            except ValueError:
                raise UserError(f"--subset: {key} takes integers, got '{value}'") from None
        else:
            setattr(subset, name, items)
    return subset


@dataclass
class VerifyResult:
    """What was checked and what differed."""

    episodes: list[str] = field(default_factory=list)
    mismatches: list[Mismatch] = field(default_factory=list)
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    #: Where the rerun ran ("on the CPU in fp32", "on NVIDIA H200 in fp32").
    where: str = ""
    #: This machine's GPU, where GPU rows were rerun on it.
    gpu: str | None = None
    #: The GPU models of rows rerun on ``gpu`` although computed on another model.
    other_gpus: list[str] = field(default_factory=list)
    #: Which recorded package versions differ from this environment (the clause a failure's
    #: line ends with: ``runner/versions.versions_note``).
    versions: str = ""

    @property
    def ok(self) -> bool:
        return not self.mismatches

    def likely_cause(self) -> str | None:
        """For differing rows that were computed on another GPU model: the two models and the
        differing columns, the likeliest explanation of the difference; else None."""
        if self.ok or not self.other_gpus:
            return None
        columns = ", ".join(dict.fromkeys(m.column for m in self.mismatches))
        return (
            f"the rows were computed on {' and '.join(self.other_gpus)} and rerun on {self.gpu}: "
            f"GPU models that round differently are the likely cause of the differing {columns}"
        )


def _provenance_of(folder: Path) -> dict[str, Any]:
    import json

    path = Path(folder) / PROVENANCE_FILE
    if not path.is_file():
        raise UserError(f"--from: {path} not found: the settings of these rows are unknown")
    return json.loads(path.read_text())


def _choose(rows, subset: Subset, first_category: str | None) -> list[str]:
    """Episode ids of the committed rows in the subset (defaults: see the module constants)."""
    from semclip_bench.models import method_class

    if subset.everything:
        return list(rows["episode_id"])

    def pick(option: str, wanted: list | None, present: list, default: list) -> list:
        if wanted is None:
            return [v for v in default if v in present] or present[:1]
        unknown = [v for v in wanted if v not in present]
        if unknown:
            raise UserError(
                f"--subset: {option} {unknown[0]} has no committed rows; present: "
                f"{', '.join(map(str, present))}"
            )
        return wanted

    categories = list(dict.fromkeys(rows["category"]))
    if first_category in categories:  # the run's first category, in its own order
        categories.remove(first_category)
        categories.insert(0, first_category)
    shots = sorted(int(k) for k in rows["shots"].unique())
    seeds = sorted(int(s) for s in rows["seed"].unique())
    variants = list(dict.fromkeys(rows["variant"]))
    methods = dict(zip(rows["variant"], rows["method"], strict=False))
    free = [v for v in variants if not method_class(methods[v]).trainable]
    trainable = [v for v in variants if method_class(methods[v]).trainable]
    if "kind" in rows and set(rows["kind"]) == {"ablation"}:
        default_variants = variants  # an ablation's variants are what it compares: all of them
    else:
        default_variants = free + (
            [DEFAULT_TRAINABLE] if DEFAULT_TRAINABLE in trainable else trainable[:1]
        )
    chosen_categories = pick("categories", subset.categories, categories, categories[:1])
    chosen_shots = pick("shots", subset.shots, shots, list(DEFAULT_SHOTS))
    chosen_seeds = pick("seeds", subset.seeds, seeds, list(DEFAULT_SEEDS))
    chosen_variants = pick("methods", subset.methods, variants, default_variants)
    keep = (
        rows["category"].isin(chosen_categories)
        & rows["shots"].isin(chosen_shots)
        & rows["seed"].isin(chosen_seeds)
        & rows["variant"].isin(chosen_variants)
    )
    return list(rows.loc[keep, "episode_id"])


def on_cpu(record: dict[str, Any]) -> bool:
    """Whether a run's rows were computed on the CPU (its provenance ``device``)."""
    return str(record.get("device", "")).startswith("CPU")


def local_gpu() -> str | None:
    """The name of this machine's first CUDA device, or None without one."""
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None


def _rerun_config(record: dict[str, Any], out: Path) -> RunConfig:
    """The recorded settings of a run, in one process, on the CPU in fp32 (CPU rows) or on the
    first GPU in the recorded precision (GPU rows). The episodes to rerun are selected by id within
    the recorded ``--shard``, whichever rank ran them."""
    recorded = dict(record.get("config") or {})
    known = {k: v for k, v in recorded.items() if k in RunConfig.field_names()}
    # fit the heads as the record says ("auto" means alone on the CPU, stacked on CUDA)
    mode = record.get("training")
    if mode is None:  # recorded before the field: the flag of that time, else alone
        mode = "stacked" if recorded.get("fit_together") else "alone"
    known["fit_mode"] = mode
    config = merge_config(RunConfig(), known, f"{PROVENANCE_FILE} config")
    config.devices = 1
    config.procs_per_device = 1
    config.device = "cpu" if on_cpu(record) else "cuda"
    config.precision = "fp32" if on_cpu(record) else str(record.get("precision", "fp32"))
    config.wandb = "disabled"
    config.out = Path(out)
    return config


def _refusals(record: dict[str, Any], folder: Path, gpu: str | None) -> list[str]:
    """Why rows of this record cannot be checked bit for bit here (``gpu``: this machine's GPU
    name, None without one): CPU rows rerun on the CPU in fp32, GPU rows on a GPU (of any model:
    a difference the rerun finds is then attributed to the models by :meth:`VerifyResult.
    likely_cause`)."""
    device = str(record.get("device", ""))
    rule = "CPU rows are checked on the CPU in fp32, GPU rows on a GPU"
    if on_cpu(record):
        if record.get("precision", "fp32") != "fp32":
            return [f"{folder}: they were computed in {record.get('precision')}; {rule}"]
        return []
    if not device:
        return [f"{folder}: their device is not recorded; {rule}"]
    if gpu is None:
        return [f"{folder}: they were computed on {device} and this machine has none; {rule}"]
    return []


def _where(record: dict[str, Any], gpu: str | None) -> str:
    """Where rows of ``record`` rerun here, naming their own GPU where it is another model."""
    if on_cpu(record):
        return "on the CPU in fp32"
    device = str(record.get("device", ""))
    computed = "" if device == gpu else f" (rows computed on {device})"
    return f"on {gpu} in {record.get('precision', 'fp32')}{computed}"


@contextlib.contextmanager
def clean_cache() -> Iterator[Path]:
    """A fresh, empty ``SEMCLIP_BENCH_CACHE`` for the duration (removed afterwards)."""
    from semclip_bench.data.dataset import CACHE_ENV

    folder = Path(tempfile.mkdtemp(prefix="semclip-verify-cache-"))
    previous = os.environ.get(CACHE_ENV)
    os.environ[CACHE_ENV] = str(folder)
    try:
        yield folder
    finally:
        if previous is None:
            os.environ.pop(CACHE_ENV, None)
        else:
            os.environ[CACHE_ENV] = previous
        shutil.rmtree(folder, ignore_errors=True)


def _protocol_problems(raw: dict[str, dict[str, str]], ids: Sequence[str], folder: Path) -> list:
    """Rows of another protocol version cannot be rerun by this code (checked before the data is
    generated); their digests are named too, as recorded."""
    protocols = sorted({raw[i].get("protocol") or UNKNOWN for i in ids})
    if protocols == [PROTOCOL_VERSION]:
        return []
    recorded = {
        IDENTITY_NAMES[c]: sorted({raw[i].get(c) or UNKNOWN for i in ids})
        for c in ("dataset_digest", "weights_digest")
    }
    digests = "; ".join(f"their {name}: {', '.join(v)}" for name, v in recorded.items())
    shown = ", ".join(
        "unknown (not recorded: written before protocol v2)" if p == UNKNOWN else p
        for p in protocols
    )
    return [
        f"committed rows in {folder} were written under protocol {shown}, this code runs "
        f"protocol {PROTOCOL_VERSION} ({digests}); regenerate them"
    ]


def _identity_problems(
    committed: dict[str, set[str]], seen: dict[str, str], folder: Path
) -> list[str]:
    problems = []
    for column in IDENTITY_COLUMNS:
        values = sorted(committed[column])
        if values != [seen[column]]:
            text = " and ".join(
                "unknown (not recorded: written before protocol v2)" if v == UNKNOWN else v
                for v in values
            )
            problems.append(
                f"{IDENTITY_NAMES[column]} differs: committed rows in {folder} have {text}, the "
                f"rerun sees {seen[column]}"
            )
    return problems


def verify(
    source: Path, subset: Subset | None = None, out: Path | None = None, command: str = ""
) -> VerifyResult:
    """Rerun the subset of the committed rows under ``source`` and compare them exactly.

    Raises UserError (before any episode) when the rows cannot be checked: see the module
    docstring. ``out`` keeps the rerun rows there (default: a temporary folder, removed).
    """
    from semclip_bench.data import dataset_digest, load_dataset
    from semclip_bench.runner.execute.engine import run

    source = Path(source)
    if not source.exists():
        raise UserError(f"--from: folder not found: {source}")
    start = time.perf_counter()
    rows = read_rows([source])
    raw = raw_rows(source)
    result = VerifyResult()
    records = {folder: _provenance_of(Path(folder)) for folder in sorted(set(rows["source"]))}
    # the subset is chosen over every rank's rows together (one run), then rerun per rank folder
    categories = next((r.get("categories") for r in records.values() if r.get("categories")), [])
    chosen = set(_choose(rows, subset or Subset(), categories[0] if categories else None))
    plans = []
    for folder, part in rows.groupby("source", sort=True):
        ids = [i for i in part["episode_id"] if i in chosen]
        if ids:
            plans.append((Path(folder), records[folder], ids))
    if not plans:
        raise UserError(f"--subset: no committed rows under {source} match the subset")
    gpu = None if all(on_cpu(record) for _, record, _ in plans) else local_gpu()
    problems = [p for folder, record, _ in plans for p in _refusals(record, folder, gpu)]
    result.where = ", ".join(sorted({_where(r, gpu) for _, r, _ in plans}))
    result.gpu = gpu
    result.other_gpus = sorted(
        {str(r.get("device")) for _, r, _ in plans if not on_cpu(r) and r.get("device") != gpu}
    )
    problems += [p for folder, _, ids in plans for p in _protocol_problems(raw, ids, folder)]
    result.versions = _versions_clause([(folder, record) for folder, record, _ in plans])
    if problems:
        raise UserError("verify refused: " + "; ".join([*problems, result.versions]))
    import torch

    here = git_commit()
    for folder, record, _ in plans:
        if record.get("git_commit") != here:
            result.notes.append(
                f"{folder}: rows written at git commit {record.get('git_commit')}, rerun at {here}"
            )
        if record.get("versions"):
            if version_differences(record["versions"], installed_versions()):
                result.notes.append(f"{folder}: {versions_note(record)}")
        elif record.get("torch") and record.get("torch") != torch.__version__:
            result.notes.append(
                f"{folder}: rows written with torch {record.get('torch')}, rerun with "
                f"{torch.__version__} (kernels may differ between versions)"
            )

    keep = out is not None
    out_root = Path(out) if keep else Path(tempfile.mkdtemp(prefix="semclip-verify-out-"))
    try:
        with clean_cache():
            configs = []
            for number, (folder, record, ids) in enumerate(plans):  # every check first
                config = _rerun_config(record, out_root / f"part{number}")
                dataset = load_dataset(config.data)  # generated afresh in the clean cache
                seen = run_identity(
                    dataset_digest(dataset), weights_identity(backbone_spec(config))[1]
                )
                committed = {
                    c: {raw[i].get(c, UNKNOWN) or UNKNOWN for i in ids} for c in IDENTITY_COLUMNS
                }
                problems += _identity_problems(committed, seen, folder)
                configs.append(config)
            if problems:
                raise UserError("verify refused: " + "; ".join([*problems, result.versions]))
            for config, (folder, _, ids) in zip(configs, plans, strict=True):
                variants = (
                    ablation_variants(config)
                    if config.kind == "ablation"
                    else sweep_variants(config)
                )
                log.info("verify: rerunning %d episodes of %s", len(ids), folder)
                run(config, variants, command, select=set(ids))
                rerun = raw_rows(Path(config.out) / config.kind)
                for episode in ids:
                    result.episodes.append(episode)
                    result.mismatches += compare_row(episode, raw[episode], rerun.get(episode))
    finally:
        if not keep:
            shutil.rmtree(out_root, ignore_errors=True)
    result.seconds = time.perf_counter() - start
    return result


def _versions_clause(records: Sequence[tuple[Path, dict[str, Any]]]) -> str:
    """The versions clause of the committed folders' records: one clause when they agree, else
    one per folder (rows written in several environments)."""
    notes: dict[str, list[str]] = {}
    for folder, record in records:
        notes.setdefault(versions_note(record), []).append(str(folder))
    if len(notes) == 1:
        return next(iter(notes))
    return "; ".join(f"{', '.join(folders)}: {note}" for note, folders in notes.items())


def mismatch_table(mismatches: Sequence[Mismatch]) -> str:
    """The differences as a plain-text table (episode, column, committed, rerun)."""
    header = ("episode", "column", "committed", "rerun")
    cells = [header] + [(m.episode_id, m.column, m.committed, m.rerun) for m in mismatches]
    widths = [min(60, max(len(row[i]) for row in cells)) for i in range(4)]

    def line(row: Sequence[str]) -> str:
        return "  ".join(
            (text if len(text) <= 60 else text[:57] + "...").ljust(width)
            for text, width in zip(row, widths, strict=True)
        ).rstrip()

    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in cells[1:]])


__all__ = ["COMPARED", "Subset", "VerifyResult", "mismatch_table", "parse_subset", "verify"]
