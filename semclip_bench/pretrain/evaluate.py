"""Evaluation of a pretrained backbone: zero-shot iAUROC on sem-synth and caption retrieval.

Zero-shot: the benchmark's sem-synth test split (``SynthConfig()``, seed 0, by default), every
image scored ``1 - softmax(cos(image, class text) / 0.07)[good]`` against the expert prompt bank's
classes (good + the six defect types). iAUROC per category and defect type (that type's images vs
the category's normal test images), averaged over categories, then over the seen
(:data:`SEEN_TYPES`) and unseen (:data:`EXCLUDED_TYPES`) types.

Retrieval: held-out generated images and captions (data seed :data:`RETRIEVAL_SEED`, disjoint
from the pretraining and benchmark seeds), top-1 image->text and text->image accuracy within
consecutive batches of 100 pairs.
"""

from __future__ import annotations

import concurrent.futures as cf
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from semclip_bench.data.synth import SynthConfig, render_image
from semclip_bench.data.types import NORMAL_LABEL
from semclip_bench.metrics import image_auroc
from semclip_bench.pretrain.captions import EXCLUDED_TYPES, SEEN_TYPES
from semclip_bench.pretrain.data import (
    RETRIEVAL_SEED,
    SynthCaptionStream,
    normalise_batch,
    prepare_image,
)

#: Softmax temperature of the zero-shot classifier.
ZERO_SHOT_TEMPERATURE = 0.07


def _spawn():
    """Spawn context: safe after CUDA / Lightning threads started in the parent."""
    import multiprocessing

    return multiprocessing.get_context("spawn")


def _use_pool(workers: int, n: int) -> bool:
    """Spawned processes cost seconds to start: only worth it for many images."""
    return workers > 1 and n >= 50 * workers


def _render_task(args: tuple[SynthConfig, str, str, str, int]) -> np.ndarray:
    config, category, split, label, index = args
    return render_image(config, category, split, label, index).image


def render_test_split(config: SynthConfig, workers: int = 0) -> list[tuple[str, str, np.ndarray]]:
    """(category, label, image) of every test image of ``config`` (good + each defect type)."""
    tasks = [
        (config, category, "test", label, i)
        for category in config.categories
        for label in (NORMAL_LABEL, *config.defect_types)
        for i in range(config.n_test_good if label == NORMAL_LABEL else config.n_per_defect)
    ]
    if _use_pool(workers, len(tasks)):
        with cf.ProcessPoolExecutor(workers, mp_context=_spawn()) as pool:
            images = list(pool.map(_render_task, tasks, chunksize=8))
    else:
        images = [_render_task(t) for t in tasks]
    return [(t[1], t[3], img) for t, img in zip(tasks, images, strict=True)]


@torch.no_grad()
def _encode_images(backbone, images: Sequence[np.ndarray], batch_size: int) -> torch.Tensor:
    device = next(backbone.model.parameters()).device
    feats = []
    for start in range(0, len(images), batch_size):
        chunk = images[start : start + batch_size]
        x = torch.stack(
            [prepare_image(im, backbone.image_size, backbone.mean, backbone.std) for im in chunk]
        ).to(device)
        feats.append(F.normalize(backbone.encode_image(x).float(), dim=-1).cpu())
    return torch.cat(feats)


def zero_shot_auroc(
    backbone,
    config: SynthConfig | None = None,
    prompts: str = "expert",
    *,
    batch_size: int = 64,
    workers: int = 0,
    rendered: list[tuple[str, str, np.ndarray]] | None = None,
) -> dict[str, Any]:
    """Zero-shot iAUROC of ``backbone`` on the sem-synth test split; see the module docstring.

    Returns {"per_type": {type: mean iAUROC over categories}, "seen": mean, "unseen": mean,
    "all": mean, "n_images": int}. ``rendered`` reuses images from :func:`render_test_split`.
    """
    from semclip_bench.prompts import class_text_embeddings

    config = config or SynthConfig()
    rendered = rendered if rendered is not None else render_test_split(config, workers)
    classes = (NORMAL_LABEL, *config.defect_types)
    text = class_text_embeddings(backbone, classes, prompts).float().cpu()
    img = _encode_images(backbone, [r[2] for r in rendered], batch_size)
    probs = torch.softmax(img @ text.T / ZERO_SHOT_TEMPERATURE, dim=-1)
    scores = (1.0 - probs[:, 0]).numpy()
    cats = np.array([r[0] for r in rendered])
    labels = np.array([r[1] for r in rendered])
    per_type: dict[str, float] = {}
    for kind in config.defect_types:
        values = []
        for category in config.categories:
            sel = (cats == category) & ((labels == kind) | (labels == NORMAL_LABEL))
            values.append(float(image_auroc(scores[sel], (labels[sel] == kind).astype(int))))
        per_type[kind] = float(np.nanmean(values)) if values else float("nan")

    def mean_of(kinds: Sequence[str]) -> float:
        vals = [per_type[k] for k in kinds if k in per_type]
        return float(np.mean(vals)) if vals else float("nan")

    return {
        "per_type": per_type,
        "seen": mean_of(SEEN_TYPES),
        "unseen": mean_of(EXCLUDED_TYPES),
        "all": mean_of(list(per_type)),
        "n_images": len(rendered),
    }


@torch.no_grad()
def retrieval_accuracy(
    backbone,
    n_images: int = 1000,
    *,
    seed: int = RETRIEVAL_SEED,
    group: int = 100,
    render_size: int = 256,
    workers: int = 0,
) -> dict[str, float]:
    """Top-1 image->text and text->image accuracy within groups of ``group`` held-out pairs."""
    stream = SynthCaptionStream(
        backbone.spec.name, backbone.image_size, seed=seed, render_size=render_size, augment=False
    )
    if _use_pool(workers, n_images):
        with cf.ProcessPoolExecutor(workers, mp_context=_spawn()) as pool:
            items = list(pool.map(stream.item, range(n_images), chunksize=8))
    else:
        items = [stream.item(i) for i in range(n_images)]
    device = next(backbone.model.parameters()).device
    i2t = t2i = 0
    total = 0
    for start in range(0, n_images - group + 1 if n_images >= group else 1, group):
        chunk = items[start : start + group]
        x = torch.stack([it["image"] for it in chunk]).to(device)
        x = normalise_batch(x, backbone.mean, backbone.std)
        img = F.normalize(backbone.encode_image(x).float(), dim=-1)
        txt = F.normalize(backbone.encode_text([it["caption"] for it in chunk]).float(), dim=-1)
        sim = img @ txt.T
        target = torch.arange(len(chunk), device=sim.device)
        i2t += int((sim.argmax(dim=1) == target).sum())
        t2i += int((sim.argmax(dim=0) == target).sum())
        total += len(chunk)
    return {
        "image_to_text_top1": i2t / max(total, 1),
        "text_to_image_top1": t2i / max(total, 1),
        "n_pairs": total,
        "group": group,
        "chance": 1.0 / group if n_images >= group else 1.0 / max(n_images, 1),
    }


def evaluate_backbone(
    backbone,
    *,
    zero_shot_config: SynthConfig | None = None,
    rendered: list[tuple[str, str, np.ndarray]] | None = None,
    retrieval_images: int = 1000,
    workers: int | None = None,
    render_size: int = 256,
) -> dict[str, Any]:
    """Both evaluations of one backbone: {"zero_shot": ..., "retrieval": ...}."""
    workers = workers if workers is not None else min(8, os.cpu_count() or 1)
    return {
        "zero_shot": zero_shot_auroc(
            backbone, zero_shot_config, rendered=rendered, workers=workers
        ),
        "retrieval": retrieval_accuracy(
            backbone, retrieval_images, workers=workers, render_size=render_size
        ),
    }


__all__ = [
    "ZERO_SHOT_TEMPERATURE",
    "evaluate_backbone",
    "render_test_split",
    "retrieval_accuracy",
    "zero_shot_auroc",
]
