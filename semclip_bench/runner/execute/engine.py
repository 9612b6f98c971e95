"""The episode loop shared by ``sweep`` and ``ablate``.

For every (category, shots, seed) episode of PROTOCOL.md and every variant: build the method, fit
it on the support set (frozen features from the cache), predict the query set, evaluate exactly,
and append one row to ``<out>/<kind>/episodes.csv`` at once. Finished episodes are skipped on a
rerun, so an interrupted run loses at most the episode in flight.

Precision: fp32 by default on every device. With ``--precision bf16``, ``extract`` runs under bf16
autocast; features are kept as float32, and the heads' support preparation, training and
``predict`` run in float32 (training in IEEE float32; prediction's matmuls in TF32 on CUDA; see
``runner/execute/features.py``).

Several processes (``devices x procs_per_device > 1``): Lightning Fabric's DDP launcher starts
them (forked from this process after its imports, or re-executing the command line: see
``runner/execute/processes.py``; on CUDA rank r uses GPU r % device_count, so several
processes may share one GPU: a head's training is launch-bound and leaves a GPU mostly idle). The
ranks take the units of ``--shard s/n`` (index ``i % n == s``) from one list ordered longest
estimated first, each unit run by the rank that claims it first (``runner/plan/schedule.py``); rank
``r`` writes ``<out>/<kind>/rank<r>/episodes.csv``, and rank 0 waits for all ranks (barrier) before
the tables are written. Resuming sees every rank's
rows (the store scans the whole run folder). With the on-disk feature store, the ranks first
extract each needed image once between them (``features.prefetch_units``) and then read each
other's shares from disk.

Features missing from memory are read from the on-disk store (``runner/execute/feature_store.py``)
before being extracted. Exact metrics run on the scoring thread while the next episode fits and
predicts (``runner/execute/scoring.py``; rows are still appended in order), except when W&B logs the
episode.

Identity: every row records the protocol version and the digests of the dataset's content and of
the backbone weights (``runner/record/provenance.py``); a run refuses, before its first episode, to
resume into a folder holding rows of another identity unless ``allow_mixed``.

Selected units (``select``, used by ``verify``): only those episode ids are evaluated and written.
No replay of the units before them is needed: an image's features do not depend on the other images
of its extraction batch (fixed batch shape, ``runner/execute/features.py``).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import uuid
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from semclip_bench.errors import UserError
from semclip_bench.models.base import FewShotMethod
from semclip_bench.runner.execute.episode import (
    Prepared,
    deterministic_kernels,
    finish,
    fit,
    no_uninitialized_fill,
    one_line,
    prepare,
)
from semclip_bench.runner.execute.feature_store import FeatureStore, features_root
from semclip_bench.runner.execute.features import (
    FeatureCache,
    feature_bytes,
    prefetch_units,
    resolve_precision,
)
from semclip_bench.runner.execute.processes import (
    launch_processes,
    process_count,
    resolve_device,
)
from semclip_bench.runner.execute.scoring import OVERLAP_SCORING, Scorer
from semclip_bench.runner.plan.config import RunConfig, Variant
from semclip_bench.runner.plan.schedule import (
    ClaimBoard,
    WorkItem,
    by_estimated_cost,
    item_cost,
    left_to_write,
    members_per_stack,
    shard_items,
    stack_group,
    support_images,
    work_items,
)
from semclip_bench.runner.plan.units import EpisodeBook, Unit, plan_units
from semclip_bench.runner.plan.validate import (
    check_shots,
    probe_class_names,
    run_categories,
    validate_variants,
)
from semclip_bench.runner.record.provenance import (  # git_commit, device_name: re-exported
    backbone_spec,
    check_resume,
    device_name,
    git_commit,
    run_identity,
    weights_identity,
    write_provenance,
)
from semclip_bench.runner.record.row_store import METRIC_COLUMNS, EpisodeStore
from semclip_bench.runner.record.tracking import Tracker

log = logging.getLogger(__name__)


@dataclass
class RunResult:
    """What a run did: where, how many rows, and how long each stage took."""

    folder: Path
    written: int = 0
    already_done: int = 0
    skipped: int = 0
    stage_seconds: dict[str, float] = field(default_factory=dict)
    wall_seconds: float = 0.0
    cache_summary: str = ""
    #: The code that produced the rows: git commit at the start of the run.
    commit: str = field(default_factory=lambda: git_commit())
    #: Whether this process writes the tables (rank 0, or the only process).
    is_main: bool = True
    world_size: int = 1
    precision: str = "fp32"
    #: How trained heads were fitted: "stacked" or "alone" (``fit_stacked``).
    training: str = "alone"
    #: Several processes: when rank 0 returned (wall clock, set in that rank) and the seconds
    #: from then to every rank's exit (set by the launching process). None: one process.
    returned_at: float | None = None
    join_seconds: float | None = None


class _Stages:
    """Accumulates wall-clock seconds per named stage (from the main and the scoring thread)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._lock = threading.Lock()

    def add(self, name: str, seconds: float) -> None:
        with self._lock:
            self.seconds[name] = self.seconds.get(name, 0.0) + seconds


def run(
    config: RunConfig,
    variants: Sequence[Variant],
    command: str,
    *,
    allow_mixed: bool = False,
    select: Collection[str] | None = None,
    startup_seconds: float | None = None,
) -> RunResult:
    """Run every episode x variant of ``config`` not already in the output folder.

    ``allow_mixed``: resume into a folder whose rows have another dataset/weights digest or
    protocol. ``select``: evaluate only these episode ids (see the module docstring).
    ``startup_seconds``: how long the process ran before this call (the CLI passes
    :func:`seconds_since_process_start`); recorded as the "startup" stage.
    """
    start = time.perf_counter()
    stages = _Stages()
    if startup_seconds is not None:
        stages.add("startup", startup_seconds)  # before run(): interpreter start, imports (CLI)
    no_uninitialized_fill()
    device = resolve_device(config.device)
    processes = process_count(config, device)
    job = (config, variants, command, allow_mixed, select)
    if processes > 1:
        return _launch(job, device, processes, start, stages)
    return _run_rank(None, job, device, start, stages)


def _run_rank(fabric, job: tuple, device: torch.device, start: float, stages: _Stages) -> RunResult:
    """The body of :func:`run` in one process: rank ``fabric.global_rank`` of a multi-process run,
    or the only process (``fabric`` None). Running out of GPU memory ends it with one line that
    says what to change (finished episodes are already on disk, so a rerun resumes)."""
    try:
        with deterministic_kernels(device):
            return _execute_rank(fabric, job, device, start, stages)
    except torch.OutOfMemoryError as exc:
        raise UserError(out_of_memory_message(exc, job[0], fabric, device)) from None


def out_of_memory_message(exc: BaseException, config: RunConfig, fabric, device) -> str:
    """One line for a GPU out-of-memory error: where, and the options that use less memory."""
    what = str(exc).splitlines()[0] if str(exc) else "CUDA out of memory"
    world = fabric.world_size if fabric is not None else 1
    rank = f"rank {fabric.global_rank} of {world} processes" if fabric is not None else "the run"
    per_gpu = max(1, world // max(1, config.devices))
    hints = []
    if per_gpu > 1:
        hints.append(f"--procs-per-device {per_gpu // 2} (now {per_gpu} per GPU)")
    if fit_stacked(config, torch.device(device)):
        hints.append("--fit-mode alone")
    hints.append(f"--batch-size {max(1, config.batch_size // 2)}")
    return (
        f"GPU out of memory in {rank} on {device} ({what.rstrip('.')}); finished episodes are "
        f"kept: rerun the same command with {' or '.join(hints)} to resume with less memory"
    )


def check_whole_dataset(dataset, spec: str, fabric=None) -> None:
    """Check the headers of every image and mask of the dataset (readable, mask size against its
    image; ``data/check.py``) before the first episode, so a bad file that this run's episodes
    would not read still fails now, not in a later run hours into its work.

    Rank 0 checks and tells the other ranks; every rank then raises the same UserError naming the
    first bad file (and how many more there are).
    """
    from semclip_bench.data.check import check_headers

    problem: str | None = None
    if fabric is None or fabric.global_rank == 0:
        start = time.perf_counter()
        try:
            problems = check_headers(dataset)
        except Exception as exc:  # the other ranks must hear of it too
            problems = [f"cannot check {spec}: {type(exc).__name__}: {exc}"]
        if problems:
            more = f" (and {len(problems) - 1} more problem(s))" if len(problems) > 1 else ""
            problem = (
                f"--data {spec}: {problems[0]}{more}; `python -m semclip_bench data check {spec}` "
                "lists every problem; no episode ran"
            )
        log.info(
            "checked the headers of %d images of %s in %.2fs",
            len(dataset.samples),
            dataset.name,
            time.perf_counter() - start,
        )
    if fabric is not None:
        problem = fabric.broadcast(problem, src=0)
    if problem is not None:
        raise UserError(problem)


def _execute_rank(
    fabric, job: tuple, device: torch.device, start: float, stages: _Stages
) -> RunResult:
    """One process's run: load and check the data and the variants, plan the work items, run the
    items this process claims, then write its provenance (and, on rank 0, the W&B summary)."""
    from semclip_bench.backbones import build_backbone
    from semclip_bench.data import dataset_digest
    from semclip_bench.models import method_class

    config, variants, command, allow_mixed, select = job
    rank, world = (fabric.global_rank, fabric.world_size) if fabric is not None else (0, 1)
    precision = resolve_precision(config.precision, device)
    folder = Path(config.out) / config.kind
    store = EpisodeStore(folder / f"rank{rank}" if world > 1 else folder, scan=folder)
    result = RunResult(folder=folder, is_main=rank == 0, world_size=world, precision=precision)

    dataset = _load_checked_dataset(config, fabric, stages)
    categories = run_categories(config.categories, dataset)
    classes = {v.method: method_class(v.method) for v in variants}

    spec = backbone_spec(config)
    weights_label, weights_digest = weights_identity(spec)
    identity = run_identity(dataset_digest(dataset), weights_digest)
    check_resume(folder, identity, allow_mixed)  # before the first episode

    t0 = time.perf_counter()
    backbone = build_backbone(spec, device=device)
    stages.add("backbone", time.perf_counter() - t0)

    units = plan_units(categories, config.shots, config.seeds, variants)
    stacked = fit_stacked(config, device)
    result.training = "stacked" if stacked else "alone"
    check_shots(config.shots, dataset, categories)
    # Every variant is built once now: a bad setting fails in seconds, not after other methods.
    class_names = probe_class_names(dataset, categories)
    built = validate_variants(variants, classes, backbone, class_names)
    limit = stack_limit(variants, classes, built, backbone, device) if stacked else None
    del built

    def n_defect_types(category: str) -> int:
        return len(dataset.defect_types(category))

    group = stack_group(classes, n_defect_types) if stacked else None
    mine = shard_items(work_items(units, group, limit), config.shard)
    done = store.done_ids()
    todo = left_to_write(mine, done, select)
    result.already_done = sum(len(item.writes & done) for item in mine)
    claims = None
    if fabric is not None:  # the ranks pull items, longest estimated first (plan/schedule.py)
        costs = [item_cost(item, n_defect_types, classes) for item in todo]
        todo = by_estimated_cost(todo, costs)
        claims = ClaimBoard(folder, fabric.broadcast(uuid.uuid4().hex, src=0))
    if result.already_done:
        n_mine = sum(len(item.units) for item in mine)
        log.info("resuming: %d of %d episodes already in %s", result.already_done, n_mine, folder)

    # verify replays the original extraction calls: it never reads stored features
    disk = FeatureStore(features_root()) if config.feature_cache and select is None else None
    cache = FeatureCache(
        device, batch_size=config.batch_size, precision=precision, store=disk, progress=rank == 0
    )
    episodes = EpisodeBook(dataset)
    todo_units = [u for item in todo for u in item.units]
    if fabric is not None and disk is not None:
        prefetch_units(todo_units, episodes, classes, backbone, cache, device, rank, world)
        disk.flush()
        fabric.barrier()  # every rank's share is on disk: the episodes load what they miss
    elif fabric is None:  # every image this run needs, in full batches, before the first episode
        prefetch_units(todo_units, episodes, classes, backbone, cache, device)
    progress = tqdm(
        total=sum(len(item.writes) for item in todo),
        desc=config.kind if world == 1 else f"{config.kind} rank {rank}/{world}",
        unit="episode",
        dynamic_ncols=True,
        leave=False,
        **({"disable": True} if rank else {}),  # rank 0 keeps tqdm's defaults (TQDM_* env)
    )
    runner = _ItemRunner(
        config=config,
        classes=classes,
        backbone=backbone,
        device=device,
        stacked=stacked,
        cache=cache,
        store=store,
        tracker=Tracker(config.wandb, config.wandb_project, folder),  # in <folder>/wandb/
        episodes=episodes,
        supports_done=store.supports_done(),
        run_columns=dict(
            kind=config.kind,
            dataset=dataset.name,
            backbone=spec.name,
            weights=weights_label,
            device=device_name(device),
        ),
        identity=identity,
        result=result,
        stages=stages,
        progress=progress,
    )
    claimed = runner.run(todo, claims)
    if disk is not None:
        disk.close()  # every queued feature file is on disk before the summary counts them
    stages.add("features", cache.stats.seconds)
    result.cache_summary = cache.summary()
    log.info(result.cache_summary)

    result.wall_seconds = time.perf_counter() - start
    result.stage_seconds = dict(stages.seconds)
    write_provenance(
        store.folder,
        config,
        command,
        spec,
        device,
        dataset,
        result,
        identity,
        weights_label,
        categories,
        rank=rank,
        assigned=claimed,
    )
    if fabric is not None:
        fabric.barrier()  # rank 0 writes the tables only once every rank's rows are on disk
        result.wall_seconds = time.perf_counter() - start
        if claims is not None and result.is_main:
            claims.remove()
    if result.is_main and result.written:
        runner.tracker.log_summary(_summary_rows(folder), config.kind)
    return result


def _load_checked_dataset(config: RunConfig, fabric, stages: _Stages):
    """The run's dataset, loaded (rank 0 first: the built-in data is generated only once) and
    checked file by file (:func:`check_whole_dataset`)."""
    from semclip_bench.data import load_dataset

    t0 = time.perf_counter()
    if fabric is not None:
        with fabric.rank_zero_first(local=False):
            dataset = load_dataset(config.data)
    else:
        dataset = load_dataset(config.data)
    stages.add("data", time.perf_counter() - t0)
    t0 = time.perf_counter()
    check_whole_dataset(dataset, config.data, fabric)  # every file, not only this run's
    stages.add("data check", time.perf_counter() - t0)
    return dataset


@dataclass
class _ItemRunner:
    """Runs the claimed work items of one process and writes their rows in order."""

    config: RunConfig
    classes: dict[str, type[FewShotMethod]]
    backbone: Any
    device: torch.device
    stacked: bool
    cache: FeatureCache
    store: EpisodeStore
    tracker: Tracker
    episodes: EpisodeBook
    #: Support keys already in ``supports.jsonl``.
    supports_done: set[str]
    #: The columns naming the run that every row carries: kind, dataset, backbone, weights, device.
    run_columns: dict[str, Any]
    #: The row's identity columns (:func:`~semclip_bench.runner.record.provenance.run_identity`).
    identity: dict[str, Any]
    result: RunResult
    stages: _Stages
    progress: Any
    scorer: Scorer = field(default_factory=lambda: Scorer(background=OVERLAP_SCORING))

    def run(self, items: Sequence[WorkItem], claims: ClaimBoard | None) -> int:
        """Run every item this process claims (all of them without ``claims``); the number of
        rows it claimed. A failing episode (out of memory, Ctrl-C) still writes the rows already
        scored or being scored on the scoring thread: no finished work is lost."""
        claimed = 0
        try:
            for item in items:
                self.progress.update(len(item.writes))
                if claims is not None and not claims.claim(item.key):
                    continue  # another rank runs it
                claimed += len(item.writes)
                self.run_item(item)
        except BaseException:
            self.progress.close()  # the error line then starts a line of its own
            with contextlib.suppress(Exception):
                for finished in self.scorer.close():
                    self.write(finished)
            raise
        for finished in self.scorer.close():
            self.write(finished)
        self.progress.close()
        return claimed

    def run_item(self, item: WorkItem) -> None:
        """Prepare every unit of ``item``, fit the prepared ones (one stack, or each alone), then
        predict and score those whose rows this run writes."""
        members: list[tuple[Unit, Any, Prepared]] = []
        for unit in item.units:
            episode = self.episodes(unit)
            self.note_support(unit, episode)
            row, prepared = prepare(
                episode=episode,
                variant=unit.variant,
                method_cls=self.classes[unit.variant.method],
                backbone=self.backbone,
                cache=self.cache,
                device=self.device,
                tracker=self.tracker,
                config=self.config,
                log=unit.id in item.writes,
            )
            if prepared is not None:
                members.append((unit, episode, prepared))
            elif unit.id in item.writes:
                self.submit(row, None, unit, episode)
        if not members:
            return
        seconds = fit(
            [prepared for _, _, prepared in members],
            device=self.device,
            stacked=self.stacked,
            tracker=self.tracker,
        )
        self.stages.add("fit", seconds)
        for unit, episode, prepared in members:
            if unit.id in item.writes:
                row, score = finish(
                    prepared,
                    cache=self.cache,
                    device=self.device,
                    stages=self.stages,
                    config=self.config,
                    tracker=self.tracker,
                )
                self.submit(row, score, unit, episode)

    def note_support(self, unit: Unit, episode) -> None:
        """Append the episode's support files to ``supports.jsonl`` once per support key."""
        if unit.support_key in self.supports_done or episode.skipped is not None:
            return
        from semclip_bench.data.episodes import support_manifest

        self.store.append_support(
            {
                "episode": unit.support_key,
                "dataset": self.run_columns["dataset"],
                "category": unit.category,
                "shots": unit.shots,
                "seed": unit.seed,
                "files": support_manifest(episode),
            }
        )
        self.supports_done.add(unit.support_key)

    def submit(self, row: dict[str, Any], score, unit: Unit, episode) -> None:
        """Complete ``row`` with the unit's id and the run's columns and hand it to the scorer;
        write the rows it has finished. W&B runs finish in episode order on this thread, so a
        logged episode is scored at once."""
        row.update(
            episode_id=unit.id,
            **self.run_columns,
            notes=list(getattr(episode, "notes", ())),
            **self.identity,
        )
        for finished in self.scorer.submit(row, score, in_background=not self.tracker.enabled):
            self.write(finished)

    def write(self, row: dict[str, Any]) -> None:
        """Append a finished row to the store and say so on the progress bar."""
        self.store.append(row)
        if row["status"] == "ok":
            self.result.written += 1
            self.progress.write(one_line(row))
        else:
            self.result.skipped += 1
            self.progress.write(f"skipped {row['episode_id']}: {row['reason']}")


def _summary_rows(folder: Path) -> list[dict[str, Any]]:
    """Mean of each metric per (variant, shots) over categories and seeds, for the W&B summary."""
    from semclip_bench.runner.record.row_store import read_rows

    rows = read_rows([folder])
    ok = rows[rows["status"] == "ok"]
    means = ok.groupby(["variant", "shots"], sort=False)[list(METRIC_COLUMNS)].mean()
    return [
        {"variant": variant, "shots": int(shots), **{k: float(v) for k, v in values.items()}}
        for (variant, shots), values in means.iterrows()
    ]


def _launch(job: tuple, device: torch.device, processes: int, start: float, stages: _Stages):
    """:func:`_run_rank` in ``processes`` processes (``runner/execute/processes.py``); rank 0's
    result."""

    def rank_main(fabric, rank_device: torch.device, forked: bool) -> RunResult:
        if forked and fabric.global_rank:
            stages.seconds.pop("startup", None)  # paid once, by the parent (counted on rank 0)
        stages.add("launch", time.perf_counter() - launched)  # until this rank runs
        return _run_rank(fabric, job, rank_device, start, stages)

    launched = time.perf_counter()
    return launch_processes(processes, device, rank_main)


def fit_stacked(config: RunConfig, device: torch.device) -> bool:
    """Whether this run stacks trained heads (``config.fit_mode``; "auto": on CUDA only, where it
    saves kernel launches; the CPU has none to save, and a stacked fit is slower there:
    ``benchmarks/stack_bench.py``, results/performance.md, section "stack_bench | CPU (x86_64, 2
    threads) | semclip-vit-m16 | S=9")."""
    if config.fit_mode == "auto":
        return device.type == "cuda"
    return config.fit_mode == "stacked"


def stack_limit(
    variants: Sequence[Variant],
    classes: dict[str, type],
    built: dict[str, Any],
    backbone,
    device: torch.device,
):
    """``limit`` of :func:`~semclip_bench.runner.plan.schedule.work_items` for a stacked run: how
    many episodes of a (variant, K, defect types) group one stack holds, from the support's
    feature bytes (:data:`~semclip_bench.runner.plan.schedule.STACK_SUPPORT_BYTES`). Each variant
    that fits stacked measures its features by extracting one blank image with its method as
    ``validate_variants`` built it (``built``, by label; the global RNG state is kept)."""
    with torch.random.fork_rng(devices=[]):
        per_image = {
            v.label: feature_bytes(built[v.label].to(device), backbone, device)
            for v in variants
            if classes[v.method].trains_stacked
        }
    by_label = {v.label: v for v in variants}

    def limit(key: tuple) -> int:
        label, shots, n_types = key
        images = support_images(shots, n_types, classes[by_label[label].method])
        return members_per_stack(images * per_image[label])

    return limit
