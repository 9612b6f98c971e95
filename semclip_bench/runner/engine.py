"""The episode loop shared by ``sweep`` and ``ablate``.

For every (category, shots, seed) episode of PROTOCOL.md and every variant: build the method, fit
it on the support set (frozen features from the cache), predict the query set, evaluate exactly,
and append one row to ``<out>/<kind>/episodes.csv`` at once. Finished episodes are skipped on a
rerun, so an interrupted run loses at most the episode in flight.

Precision: fp32 by default on every device. With ``--precision bf16``, ``extract`` runs under bf16
autocast and trainable heads train with Lightning ``precision="bf16-mixed"``; features are kept as
float32, and support preparation and ``predict`` run in float32 (see ``runner/features.py``).

Several processes (``devices x procs_per_device > 1``): Lightning Fabric's DDP launcher starts
them (forked from this process after its imports, or re-executing the command line: see
``runner/processes.py``; on CUDA rank r uses GPU r % device_count, so several
processes may share one GPU: a head's training is launch-bound and leaves a GPU mostly idle). The
ranks take the units of ``--shard s/n`` (index ``i % n == s``) from one list ordered longest
estimated first, each unit run by the rank that claims it first (``runner/schedule.py``); rank
``r`` writes ``<out>/<kind>/rank<r>/episodes.csv``, and rank 0 waits for all ranks (barrier) before
the tables are written. Resuming sees every rank's
rows (the store scans the whole run folder). With the on-disk feature store, the ranks first
extract each needed image once between them (``features.prefetch_units``) and then read each
other's shares from disk.

Features missing from memory are read from the on-disk store (``runner/feature_store.py``) before
being extracted. Exact metrics run on the scoring thread while the next episode fits and predicts
(``runner/scoring.py``; rows are still appended in order), except when W&B logs the episode.

Identity: every row records the protocol version and the digests of the dataset's content and of
the backbone weights (``runner/provenance.py``); a run refuses, before its first episode, to resume
into a folder holding rows of another identity unless ``allow_mixed``.

Selected units (``select``, used by ``verify``): only those episode ids are evaluated and written.
No replay of the units before them is needed: an image's features do not depend on the other images
of its extraction batch (fixed batch shape, ``runner/features.py``).
"""

from __future__ import annotations

import functools
import logging
import threading
import time
import uuid
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from semclip_bench.errors import UserError
from semclip_bench.models.base import FewShotMethod, MethodOutput, SupportSet, supervision_text
from semclip_bench.runner.config import RunConfig, Variant
from semclip_bench.runner.feature_store import FeatureStore, features_root
from semclip_bench.runner.features import (
    FeatureCache,
    prefetch_units,
    resolve_precision,
    trainer_precision,
)
from semclip_bench.runner.processes import (
    launch_processes,
    process_count,
    resolve_device,
)
from semclip_bench.runner.provenance import (  # git_commit, device_name: re-exported
    backbone_spec,
    check_resume,
    device_name,
    git_commit,
    run_identity,
    weights_identity,
    write_provenance,
)
from semclip_bench.runner.schedule import ClaimBoard, by_estimated_cost, unit_cost
from semclip_bench.runner.scoring import OVERLAP_SCORING, Scorer, score_episode
from semclip_bench.runner.store import METRIC_COLUMNS, EpisodeStore, episode_id
from semclip_bench.runner.tracking import Tracker, overlay
from semclip_bench.runner.validate import probe_class_names, validate_variants

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
    or the only process (``fabric`` None)."""
    from semclip_bench.backbones import build_backbone
    from semclip_bench.data import dataset_digest, load_dataset
    from semclip_bench.data.episodes import make_episode, support_manifest
    from semclip_bench.models import method_class

    config, variants, command, allow_mixed, select = job
    rank, world = (fabric.global_rank, fabric.world_size) if fabric is not None else (0, 1)
    precision = resolve_precision(config.precision, device)
    folder = Path(config.out) / config.kind
    store = EpisodeStore(folder / f"rank{rank}" if world > 1 else folder, scan=folder)
    result = RunResult(folder=folder, is_main=rank == 0, world_size=world, precision=precision)

    t0 = time.perf_counter()
    if fabric is not None:
        with fabric.rank_zero_first(local=False):  # the built-in data is generated only once
            dataset = load_dataset(config.data)
    else:
        dataset = load_dataset(config.data)
    stages.add("data", time.perf_counter() - t0)
    categories = _categories(config, dataset)
    classes = {v.method: method_class(v.method) for v in variants}

    spec = backbone_spec(config)
    weights_label, weights_digest = weights_identity(spec)
    identity = run_identity(dataset_digest(dataset), weights_digest)
    check_resume(folder, identity, allow_mixed)  # before the first episode

    t0 = time.perf_counter()
    backbone = build_backbone(spec, device=device)
    stages.add("backbone", time.perf_counter() - t0)

    units = [
        (category, shots, seed, variant)
        for category in categories
        for shots in config.shots
        for seed in config.seeds
        for variant in variants
    ]
    shard_index, shard_count = config.shard
    mine = [u for i, u in enumerate(units) if i % shard_count == shard_index]
    done = store.done_ids()
    supports_done = store.supports_done()
    todo = [u for u in mine if episode_id(u[0], u[3].label, u[1], u[2]) not in done]
    result.already_done = len(mine) - len(todo)
    if select is not None:
        todo = [u for u in todo if episode_id(u[0], u[3].label, u[1], u[2]) in set(select)]
    claims = None
    if fabric is not None:  # the ranks pull units, longest estimated first (runner/schedule.py)
        costs = [
            unit_cost(u[1], len(dataset.defect_types(u[0])), u[3], classes[u[3].method])
            for u in todo
        ]
        todo = by_estimated_cost(todo, costs)
        claims = ClaimBoard(folder, fabric.broadcast(uuid.uuid4().hex, src=0))
    if result.already_done:
        log.info(
            "resuming: %d of %d episodes already in %s", result.already_done, len(mine), folder
        )
    _check_shots(config, dataset, categories)
    # Every variant is built once now: a bad setting fails in seconds, not after other methods.
    validate_variants(variants, classes, backbone, probe_class_names(dataset, categories))

    # verify replays the original extraction calls: it never reads stored features
    disk = FeatureStore(features_root()) if config.feature_cache and select is None else None
    cache = FeatureCache(
        device, batch_size=config.batch_size, precision=precision, store=disk, progress=rank == 0
    )
    if fabric is not None and disk is not None:
        prefetch_units(todo, dataset, classes, backbone, cache, device, rank, world)
        disk.flush()
        fabric.barrier()  # every rank's share is on disk: the episodes load what they miss
    elif fabric is None:  # every image this run needs, in full batches, before the first episode
        prefetch_units(todo, dataset, classes, backbone, cache, device)
    tracker = Tracker(config.wandb, config.wandb_project, folder)  # runs in <folder>/wandb/
    episodes: dict[tuple[str, int, int], Any] = {}
    progress = tqdm(
        todo,
        desc=config.kind if world == 1 else f"{config.kind} rank {rank}/{world}",
        unit="episode",
        dynamic_ncols=True,
        leave=False,
        **({"disable": True} if rank else {}),  # rank 0 keeps tqdm's defaults (TQDM_* env)
    )

    def record(row: dict[str, Any]) -> None:
        store.append(row)
        if row["status"] == "ok":
            result.written += 1
            progress.write(_one_line(row))
        else:
            result.skipped += 1
            progress.write(f"skipped {row['episode_id']}: {row['reason']}")

    scorer = Scorer(background=OVERLAP_SCORING)
    claimed = 0
    for category, shots, seed, variant in progress:
        uid = episode_id(category, variant.label, shots, seed)
        if claims is not None and not claims.claim(uid):
            continue  # another rank runs it
        claimed += 1
        key = (category, shots, seed)
        if key not in episodes:  # a few lists of samples per (category, shots, seed)
            episodes[key] = make_episode(dataset, category, shots, seed)
        episode = episodes[key]
        support_key = f"{category}/k{shots}/s{seed}"
        if support_key not in supports_done and episode.skipped is None:
            store.append_support(
                {
                    "episode": support_key,
                    "dataset": dataset.name,
                    "category": category,
                    "shots": shots,
                    "seed": seed,
                    "files": support_manifest(episode),
                }
            )
            supports_done.add(support_key)
        row, score = _run_one(
            episode=episode,
            variant=variant,
            method_cls=classes[variant.method],
            backbone=backbone,
            cache=cache,
            device=device,
            tracker=tracker,
            stages=stages,
            config=config,
            precision=precision,
        )
        row.update(
            episode_id=uid,
            kind=config.kind,
            dataset=dataset.name,
            backbone=spec.name,
            weights=weights_label,
            device=device_name(device),
            notes=list(getattr(episode, "notes", ())),
            **identity,
        )
        # W&B runs are finished in episode order on this thread: score at once when logging.
        for finished in scorer.submit(row, score, in_background=not tracker.enabled):
            record(finished)
    for finished in scorer.close():
        record(finished)
    progress.close()
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
        tracker.log_summary(_summary_rows(folder), config.kind)
    return result


def _support_samples(episode, method_cls: type[FewShotMethod]) -> list:
    """The support images a method sees: K normal, plus K per defect type if it uses defects."""
    support = list(episode.normal_support)
    if method_cls.supervision == "normal+defects":
        support += list(episode.defect_support_flat)
    return support


def _summary_rows(folder: Path) -> list[dict[str, Any]]:
    """Mean of each metric per (variant, shots) over categories and seeds, for the W&B summary."""
    from semclip_bench.runner.store import read_rows

    rows = read_rows([folder])
    ok = rows[rows["status"] == "ok"]
    means = ok.groupby(["variant", "shots"], sort=False)[list(METRIC_COLUMNS)].mean()
    return [
        {"variant": variant, "shots": int(shots), **{k: float(v) for k, v in values.items()}}
        for (variant, shots), values in means.iterrows()
    ]


def _launch(job: tuple, device: torch.device, processes: int, start: float, stages: _Stages):
    """:func:`_run_rank` in ``processes`` processes (``runner/processes.py``); rank 0's result."""

    def rank_main(fabric, rank_device: torch.device, forked: bool) -> RunResult:
        if forked and fabric.global_rank:
            stages.seconds.pop("startup", None)  # paid once, by the parent (counted on rank 0)
        stages.add("launch", time.perf_counter() - launched)  # until this rank runs
        return _run_rank(fabric, job, rank_device, start, stages)

    launched = time.perf_counter()
    return launch_processes(processes, device, rank_main)


def _categories(config: RunConfig, dataset) -> list[str]:
    available = dataset.categories()
    if not config.categories:
        return available
    unknown = [c for c in config.categories if c not in available]
    if unknown:
        raise UserError(
            f"--categories: unknown category '{unknown[0]}' in {dataset.name}; "
            f"available: {', '.join(available)}"
        )
    return list(config.categories)


def _check_shots(config: RunConfig, dataset, categories: Sequence[str]) -> None:
    """A shot count that no category can serve is an option error, not a table of skips."""
    for shots in config.shots:
        fits = False
        for category in categories:
            normal = len(dataset.select(category=category, split="train", label="good"))
            if normal >= shots:
                fits = True
                break
        if not fits:
            most = max(
                len(dataset.select(category=c, split="train", label="good")) for c in categories
            )
            raise UserError(
                f"--shots: {shots} shots is more than the data allows "
                f"(at most {most} normal training images per category in {dataset.name})"
            )


def _run_one(
    *,
    episode,
    variant: Variant,
    method_cls: type[FewShotMethod],
    backbone,
    cache: FeatureCache,
    device: torch.device,
    tracker: Tracker,
    stages: _Stages,
    config: RunConfig,
    precision: str = "fp32",
) -> tuple[dict[str, Any], Callable[[], dict[str, Any]] | None]:
    """Fit one variant on one episode and predict its query.

    Returns its row (without identity columns) and the call that scores it (exact metrics into the
    row, then the W&B finish when logging); None when the episode is skipped (the row is final).
    The scoring may run on the scoring thread while the next episode fits (see :func:`run`).
    """
    from semclip_bench.data.dataset import masks_missing_reason, missing_mask_types
    from semclip_bench.models.lightning import TrainingConfig, fit_method

    supervision = method_cls.supervision
    if episode.shots == 0 and supervision != "zero-shot":
        supervision = "zero-shot"
    defect_support = episode.defect_support_flat
    row: dict[str, Any] = dict(
        category=episode.category,
        variant=variant.label,
        method=variant.method,
        supervision=supervision_text(  # says when a mask-trained method had no masks
            supervision,
            method_cls.uses_masks,
            missing_mask_types(defect_support),
            bool(defect_support) and all(s.mask_path is None for s in defect_support),
        ),
        shots=episode.shots,
        seed=episode.seed,
        status="skipped",
        reason="",
    )
    if episode.skipped:
        row["reason"] = episode.skipped
        return row, None
    if episode.shots == 0 and not method_cls.zero_shot:
        row["reason"] = f"{variant.method} needs support images (K = 0 is zero-shot only)"
        return row, None

    torch.manual_seed(episode.seed)
    method = method_cls(backbone, episode.class_names, **variant.options).to(device)
    method.eval()
    size = int(getattr(method, "image_size", backbone.image_size))
    mean = getattr(method, "mean", backbone.mean)
    std = getattr(method, "std", backbone.std)

    support = _support_samples(episode, method_cls)
    class_index = {name: i for i, name in enumerate(episode.class_names)}
    support_set = SupportSet(
        features=cache.features(method, support, size, mean, std),
        labels=torch.tensor([class_index[s.label] for s in support], dtype=torch.long),
        masks=cache.masks(support, size),  # zeros for images without a mask
        class_names=episode.class_names,
        category=episode.category,
        has_mask=torch.tensor([s.mask_path is not None or not s.is_anomalous for s in support]),
    )
    if support_set.features:
        support_set.features = {k: v.to(device) for k, v in support_set.features.items()}
        support_set.labels = support_set.labels.to(device)
        support_set.masks = support_set.masks.to(device)

    name = f"{variant.label}-{episode.category}-k{episode.shots}-s{episode.seed}"
    logger = tracker.start(
        name=name,
        group=f"{config.kind}/{variant.label}/k{episode.shots}",
        config={
            "variant": variant.label,
            "method": variant.method,
            "options": variant.options,
            "training": variant.training,
            "category": episode.category,
            "shots": episode.shots,
            "seed": episode.seed,
            "supervision": row["supervision"],
        },
    )
    t0 = time.perf_counter()
    fit_method(
        method,
        support_set,
        TrainingConfig(**variant.training),
        seed=episode.seed,
        accelerator="gpu" if device.type == "cuda" else "cpu",
        devices=[device.index or 0] if device.type == "cuda" else 1,
        precision=trainer_precision(precision, device),
        deterministic=_deterministic(device),
        logger=logger if logger is not None else False,
    )
    row["fit_seconds"] = round(time.perf_counter() - t0, 3)
    stages.add("fit", row["fit_seconds"])

    query = list(episode.query)
    batches = cache.batches(method, query, size, mean, std, config.batch_size)  # "features" stage
    t0 = time.perf_counter()
    outputs = _predict(method, batches, device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)  # the maps stay on the GPU: time the work, not the launch
    row["predict_seconds"] = round(time.perf_counter() - t0, 3)
    stages.add("predict", row["predict_seconds"])

    produces_maps = method.produces_maps
    no_masks = masks_missing_reason(query)  # pixel metrics need every defect image's mask
    t0 = time.perf_counter()
    truth = None
    if produces_maps and not no_masks:  # the masks' side, built once per query set, shared
        truth = cache.pixel_truth(query, size, tuple(outputs.anomaly_map.shape[-2:]))
    stages.add("metrics", time.perf_counter() - t0)
    overlays = None
    if logger is not None and episode.seed == config.seeds[0]:
        overlays = _overlays(query, outputs, size, cache)
    score = functools.partial(
        score_episode,
        row=row,
        outputs=outputs,
        query=query,
        truth=truth,
        masks_reason=no_masks,
        class_index=class_index,
        method_name=variant.method,
        produces_maps=produces_maps,
        device=device,
        stages=stages,
    )
    if logger is None:
        return row, score

    def score_and_log() -> dict[str, Any]:
        scored = score()
        tracker.finish(logger, {k: scored[k] for k in METRIC_COLUMNS}, overlays)
        return scored

    return row, score_and_log


def no_uninitialized_fill() -> None:
    """Keep ``torch.empty`` cheap once Lightning has turned deterministic algorithms on.

    ``deterministic=True`` (``torch.use_deterministic_algorithms``) also makes every new empty
    tensor be filled (NaN) first, which cost ~13% of the CPU time of SEM-CLIP's query inference
    for no effect on results (no kernel here reads memory it has not written).
    """
    torch.utils.deterministic.fill_uninitialized_memory = False


def _deterministic(device: torch.device) -> bool | str:
    """Lightning ``deterministic`` setting: strict on the CPU; ``"warn"`` on CUDA, where some
    backward kernels the heads need (bilinear upsampling) have no deterministic implementation and
    would raise under ``torch.use_deterministic_algorithms(True)``."""
    return "warn" if device.type == "cuda" else True


def _predict(
    method: FewShotMethod, batches: Iterable[dict[str, torch.Tensor]], device
) -> MethodOutput:
    """Batched float32 prediction (the run's precision is used for extraction only; see
    ``runner/features.py``). Scores and logits come back to the CPU in one copy each; the maps
    stay where they were computed (on CUDA, the pixel metrics run there: no host round trip)."""
    parts: list[MethodOutput] = []
    with torch.no_grad():
        for batch in batches:
            parts.append(method.predict({k: v.to(device) for k, v in batch.items()}))
    logits = [p.class_logits for p in parts]
    return MethodOutput(
        image_score=torch.cat([p.image_score.detach().float() for p in parts]).cpu(),
        anomaly_map=torch.cat([p.anomaly_map.detach().float() for p in parts]),
        class_logits=None
        if logits[0] is None
        else torch.cat([x.detach().float() for x in logits]).cpu(),
    )


def _overlays(query, outputs: MethodOutput, size: int, cache: FeatureCache, count: int = 4):
    """A few defect query images with their anomaly maps, for W&B."""
    import cv2

    from semclip_bench.data.images import read_image

    chosen = [i for i, s in enumerate(query) if s.is_anomalous][:count]
    pictures = []
    for i in chosen:
        image = read_image(query[i].image_path)
        image = cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)
        if image.ndim == 2:
            image = image[..., None]
        if image.shape[-1] == 1:
            image = np.repeat(image, 3, axis=-1)
        heat = outputs.anomaly_map[i].cpu().numpy()
        pictures.append(
            (overlay(image, heat), heat, f"{query[i].label}: {query[i].image_path.name}")
        )
    return pictures


def _one_line(row: dict[str, Any]) -> str:
    def fmt(key: str) -> str:
        value = row.get(key)
        return "n/a" if value is None or np.isnan(value) else f"{100 * value:.1f}"

    return (
        f"{row['episode_id']}: iAUROC {fmt('iAUROC')} pAUROC {fmt('pAUROC')} "
        f"pF1max {fmt('pF1max')} cls_acc {fmt('cls_accuracy')} "
        f"(fit {row.get('fit_seconds', 0):.1f}s, predict {row.get('predict_seconds', 0):.1f}s)"
    )
