"""One episode of one variant, in three steps the episode loop (``runner/execute/engine.py``)
composes.

1. :func:`prepare`: build the method and its support set from cached features (or the final
   "skipped" row);
2. :func:`fit`: train the prepared episodes of one work item, alone or, for a group (one variant
   and K, every seed and category), as one stacked module (``models/stacked.py``);
3. :func:`finish`: predict the query set and return the row and the call that scores it.
"""

from __future__ import annotations

import contextlib
import functools
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from semclip_bench.models.base import FewShotMethod, MethodOutput, SupportSet, supervision_text
from semclip_bench.runner.execute.features import (
    HEAD_TRAINING_PRECISION,
    FeatureCache,
    prediction_math,
)
from semclip_bench.runner.execute.scoring import score_episode
from semclip_bench.runner.plan.config import RunConfig, Variant
from semclip_bench.runner.plan.units import shots_tag
from semclip_bench.runner.record.maps import map_shots, save_episode_maps
from semclip_bench.runner.record.row_store import METRIC_COLUMNS
from semclip_bench.runner.record.tracking import Tracker, overlay


@dataclass
class Prepared:
    """An episode ready to train: its method, support set, partial row and W&B logger."""

    episode: Any
    variant: Variant
    method: FewShotMethod
    support: SupportSet
    row: dict[str, Any]
    class_index: dict[str, int]
    size: int
    mean: Any
    std: Any
    logger: Any = None


def support_samples(episode, method_cls: type[FewShotMethod]) -> list:
    """The support images a method sees: K normal, plus K per defect type if it uses defects."""
    return method_cls.support_of(episode.normal_support, episode.defect_support_flat)


def prepare(
    *,
    episode,
    variant: Variant,
    method_cls: type[FewShotMethod],
    backbone,
    cache: FeatureCache,
    device: torch.device,
    tracker: Tracker,
    config: RunConfig,
    log: bool = True,
) -> tuple[dict[str, Any], Prepared | None]:
    """The episode's row (without identity columns) and its prepared method, or (the final
    "skipped" row, None). ``log``: start the episode's W&B run (False for an episode trained only
    because its group is, whose row is not written)."""
    from semclip_bench.data.dataset import missing_mask_types

    supervision = method_cls.supervision_at(episode.shots)
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
    if not method_cls.runs_at(episode.shots):
        row["reason"] = f"{variant.method} needs support images (K = 0 is zero-shot only)"
        return row, None

    torch.manual_seed(episode.seed)
    method = method_cls(backbone, episode.class_names, **variant.options).to(device)
    method.eval()
    geometry = method.input_geometry(backbone)
    size, mean, std = geometry.size, geometry.mean, geometry.std

    support = support_samples(episode, method_cls)
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

    logger = None
    if log:
        logger = tracker.start(
            name=f"{variant.label}-{episode.category}-{shots_tag(episode.shots)}-s{episode.seed}",
            group=f"{config.kind}/{variant.label}/{shots_tag(episode.shots)}",
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
    return row, Prepared(
        episode, variant, method, support_set, row, class_index, size, mean, std, logger
    )


def fit(
    members: Sequence[Prepared],
    *,
    device: torch.device,
    stacked: bool,
    tracker: Tracker,
) -> float:
    """Train ``members`` (one work item); returns the wall seconds. With ``stacked`` and a
    method that allows it, all members train as one stacked module (their W&B runs then get each
    member's per-epoch losses after the fit); otherwise one after another. Each row's
    ``fit_seconds`` is its share of the item's time (the whole time when trained alone). Heads
    train in IEEE float32 in every precision (see ``runner/execute/features.py``)."""
    from semclip_bench.models.lightning import TrainingConfig, fit_method
    from semclip_bench.models.stacked import can_fit_stacked, fit_methods_stacked

    trainer = head_trainer_settings(device)
    start = time.perf_counter()
    methods = [m.method for m in members]
    supports = [m.support for m in members]
    if stacked and can_fit_stacked(methods, supports):
        modules = fit_methods_stacked(
            methods,
            supports,
            TrainingConfig(**members[0].variant.training),
            seeds=[m.episode.seed for m in members],
            logger=False,
            **trainer,
        )
        seconds = time.perf_counter() - start
        for member, module in zip(members, modules, strict=True):
            member.row["fit_seconds"] = round(seconds / len(members), 3)
            tracker.log_history(member.logger, module.history)
        return seconds
    for member in members:
        t0 = time.perf_counter()
        fit_method(
            member.method,
            member.support,
            TrainingConfig(**member.variant.training),
            seed=member.episode.seed,
            logger=member.logger if member.logger is not None else False,
            **trainer,
        )
        member.row["fit_seconds"] = round(time.perf_counter() - t0, 3)
    return time.perf_counter() - start


def finish(
    prepared: Prepared,
    *,
    cache: FeatureCache,
    device: torch.device,
    stages,
    config: RunConfig,
    tracker: Tracker,
) -> tuple[dict[str, Any], Callable[[], dict[str, Any]]]:
    """Predict the query set of a fitted episode: its row and the call that scores it (exact
    metrics into the row, then the W&B finish when logging). The scoring may run on the scoring
    thread while the next episode fits (see ``runner/execute/engine.py``)."""
    from semclip_bench.data.dataset import masks_missing_reason

    method, row, size = prepared.method, prepared.row, prepared.size
    query = list(prepared.episode.query)
    batches = cache.batches(
        method, query, size, prepared.mean, prepared.std, config.batch_size
    )  # "features" stage
    t0 = time.perf_counter()
    outputs = predict(method, batches, device, config.precision)
    if device.type == "cuda":
        torch.cuda.synchronize(device)  # the maps stay on the GPU: time the work, not the launch
    row["predict_seconds"] = round(time.perf_counter() - t0, 3)
    stages.add("predict", row["predict_seconds"])

    produces_maps = method.produces_maps
    episode = prepared.episode
    if episode.shots == map_shots(config.shots, config.maps_shots) and episode.seed == min(
        config.seeds
    ):  # the few maps of the picture maps/<category>.png (runner/record/maps.py)
        folder = Path(config.out) / config.kind
        save_episode_maps(folder, episode, prepared.variant.label, outputs, produces_maps)
    no_masks = masks_missing_reason(query)  # pixel metrics need every defect image's mask
    t0 = time.perf_counter()
    truth = None
    if produces_maps and not no_masks:  # the masks' side, built once per query set, shared
        truth = cache.pixel_truth(query, size, tuple(outputs.anomaly_map.shape[-2:]))
    stages.add("metrics", time.perf_counter() - t0)
    logger = prepared.logger
    overlays = None
    if logger is not None and prepared.episode.seed == config.seeds[0]:
        overlays = _overlays(query, outputs, size)
    score = functools.partial(
        score_episode,
        row=row,
        outputs=outputs,
        query=query,
        truth=truth,
        masks_reason=no_masks,
        class_index=prepared.class_index,
        method_name=prepared.variant.method,
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
    tensor be filled (NaN) first, a noticeable share of the CPU time of SEM-CLIP's query inference,
    for no effect on results (no kernel here reads memory it has not written).
    """
    torch.utils.deterministic.fill_uninitialized_memory = False


@contextlib.contextmanager
def deterministic_kernels(device: torch.device) -> Iterator[None]:
    """Torch's deterministic-algorithm mode of :func:`deterministic_setting`, from a run's first
    kernel to its end (the previous settings are restored afterwards).

    Lightning turns the mode on at a process's first fit and leaves it on, so without this the
    work a process did before its first fit (feature extraction, text embeddings, the training-free
    methods' episodes) ran CUDA kernels of the other mode, and which work that was depended on the
    process's share of the run. Also sets ``CUBLAS_WORKSPACE_CONFIG`` (unless given) before the
    first cuBLAS call, as deterministic cuBLAS needs.
    """
    with deterministic_mode_kept():
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=deterministic_setting(device) == "warn")
        yield


@contextlib.contextmanager
def deterministic_mode_kept() -> Iterator[None]:
    """Restore torch's deterministic-algorithm settings afterwards (the mode, warn-only, and
    the uninitialised-memory fill): Lightning's Trainer changes them process-wide, and a caller
    (a notebook, the Python API's user) keeps its own."""
    enabled = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    fill = torch.utils.deterministic.fill_uninitialized_memory
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(enabled, warn_only=warn_only)
        torch.utils.deterministic.fill_uninitialized_memory = fill


def head_trainer_settings(device: torch.device) -> dict[str, Any]:
    """Lightning Trainer arguments of a head's fit on ``device``: that device, IEEE float32
    (:data:`~semclip_bench.runner.execute.features.HEAD_TRAINING_PRECISION`) and
    :func:`deterministic_setting`. The runner, the Python API and the benchmarks all fit with
    these."""
    on_gpu = device.type == "cuda"
    return dict(
        accelerator="gpu" if on_gpu else "cpu",
        devices=[device.index or 0] if on_gpu else 1,
        precision=HEAD_TRAINING_PRECISION,
        deterministic=deterministic_setting(device),
    )


def deterministic_setting(device: torch.device) -> bool | str:
    """Lightning ``deterministic`` setting: strict on the CPU; ``"warn"`` on CUDA, where some
    backward kernels the heads need (bilinear upsampling) have no deterministic implementation and
    would raise under ``torch.use_deterministic_algorithms(True)``."""
    return "warn" if device.type == "cuda" else True


def predict(
    method: FewShotMethod,
    batches: Iterable[dict[str, torch.Tensor]],
    device,
    precision: str = "fp32",
) -> MethodOutput:
    """Batched float32 prediction (the run's precision is used for extraction, and for the TF32
    matmul mode of :func:`~semclip_bench.runner.execute.features.prediction_math`; see
    ``runner/execute/features.py``). Scores and logits come back to the CPU in one copy each; the
    maps stay where they were computed (on CUDA, the pixel metrics run there: no host round
    trip)."""
    parts: list[MethodOutput] = []
    with torch.no_grad():
        for batch in batches:  # extraction (the batches' own autocast) outside prediction_math
            features = {k: v.to(device) for k, v in batch.items()}
            with prediction_math(precision, device):
                parts.append(method.predict(features))
    logits = [p.class_logits for p in parts]
    return MethodOutput(
        image_score=torch.cat([p.image_score.detach().float() for p in parts]).cpu(),
        anomaly_map=torch.cat([p.anomaly_map.detach().float() for p in parts]),
        class_logits=None
        if logits[0] is None
        else torch.cat([x.detach().float() for x in logits]).cpu(),
    )


def _overlays(query, outputs: MethodOutput, size: int, count: int = 4):
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


def one_line(row: dict[str, Any]) -> str:
    """The progress line printed for a finished episode."""

    def fmt(key: str) -> str:
        value = row.get(key)
        return "n/a" if value is None or np.isnan(value) else f"{100 * value:.1f}"

    return (
        f"{row['episode_id']}: iAUROC {fmt('iAUROC')} pAUROC {fmt('pAUROC')} "
        f"pF1max {fmt('pF1max')} cls_acc {fmt('cls_accuracy')} "
        f"(fit {row.get('fit_seconds', 0):.1f}s, predict {row.get('predict_seconds', 0):.1f}s)"
    )
