"""Evaluation of a pretrained backbone: zero-shot iAUROC with each shipped prompt bank, retrieval.

Zero-shot data: sem-synth's VALIDATION split (``SynthConfig(seed=1)``, the class's default sizes;
the benchmark's test split is seed 0 and never used here), every test image of every category.
Three prompt banks, each scored the way its method uses it:

* ``expert`` and ``generic`` (``configs/prompts``): class texts of good + the six defect types
  (template x state ensemble), image score ``1 - softmax(cos(image, class texts) / 0.07)[good]``;
* ``winclip``: WinCLIP's compositional normal / anomalous ensemble for the category's object
  name (``models.winclip.WinClip``), image score ``softmax(cos(image, [t_n, t_a]) / T)[anomalous]``
  with the method's temperature (0.07).

iAUROC per category and defect type (that type's images vs the category's normal test images),
averaged over categories, then over the seen (:data:`SEEN_TYPES`) and unseen
(:data:`EXCLUDED_TYPES`) types.

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

from semclip_bench.data.labels import EXCLUDED_TYPES, SEEN_TYPES
from semclip_bench.data.synth import SynthConfig, render_image
from semclip_bench.data.types import NORMAL_LABEL
from semclip_bench.metrics import image_auroc
from semclip_bench.pretrain.data import (
    RETRIEVAL_SEED,
    SynthCaptionStream,
    normalise_batch,
    prepare_image,
)

#: sem-synth data seed of the validation split (the benchmark's test split is seed 0).
VALIDATION_SEED = 1
#: Prompt banks of the zero-shot evaluation, in table order.
ZERO_SHOT_BANKS: tuple[str, ...] = ("expert", "generic", "winclip")
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


def validation_config(**overrides: Any) -> SynthConfig:
    """The validation split's generator settings: ``SynthConfig(seed=1, **overrides)``."""
    return SynthConfig(seed=VALIDATION_SEED, **overrides)


def _class_scores(backbone, img: torch.Tensor, config: SynthConfig, bank: str) -> np.ndarray:
    """``1 - p(good)`` over good + the defect types with the class texts of ``bank``."""
    from semclip_bench.prompts import class_text_embeddings

    classes = (NORMAL_LABEL, *config.defect_types)
    text = class_text_embeddings(backbone, classes, bank).float().cpu()
    probs = torch.softmax(img @ text.T / ZERO_SHOT_TEMPERATURE, dim=-1)
    return (1.0 - probs[:, 0]).numpy()


def _winclip_scores(
    backbone, img: torch.Tensor, config: SynthConfig, categories: np.ndarray
) -> np.ndarray:
    """WinCLIP's zero-shot image score: anomalous probability of its two-text ensemble, with
    each category's object name, built by the method itself."""
    from semclip_bench.models.winclip import WinClip

    method = WinClip(backbone, (NORMAL_LABEL, *config.defect_types))
    scores = np.zeros(len(img), dtype=np.float64)
    for category in config.categories:
        sel = torch.from_numpy(categories == category)
        text = method.build_text_embeddings(method.resolve_object_name(category)).float().cpu()
        logits = img[sel] @ text.T / method.temperature
        scores[sel.numpy()] = torch.softmax(logits, dim=-1)[:, 1].double().numpy()
    return scores


def bank_scores(
    backbone,
    img: torch.Tensor,
    rendered: Sequence[tuple[str, str, np.ndarray]],
    config: SynthConfig,
    bank: str,
) -> np.ndarray:
    """Zero-shot anomaly score of each rendered image (normalised embeddings ``img``) with the
    prompt bank ``bank`` (see the module docstring)."""
    if bank == "winclip":
        return _winclip_scores(backbone, img, config, np.array([r[0] for r in rendered]))
    return _class_scores(backbone, img, config, bank)


def auroc_summary(
    scores: np.ndarray, rendered: Sequence[tuple[str, str, np.ndarray]], config: SynthConfig
) -> dict[str, Any]:
    """{"per_type", "seen", "unseen", "all", "n_images"}: iAUROC per type (mean over
    categories of type vs normal) and its means over seen, unseen and all types."""
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


def zero_shot_banks(
    backbone,
    config: SynthConfig | None = None,
    banks: Sequence[str] = ZERO_SHOT_BANKS,
    *,
    batch_size: int = 64,
    workers: int = 0,
    rendered: list[tuple[str, str, np.ndarray]] | None = None,
) -> dict[str, dict[str, Any]]:
    """Zero-shot iAUROC of ``backbone`` with each prompt bank of ``banks`` (images encoded once)
    on the split of ``config`` (default: the validation split); see :func:`auroc_summary`."""
    config = config or validation_config()
    rendered = rendered if rendered is not None else render_test_split(config, workers)
    img = _encode_images(backbone, [r[2] for r in rendered], batch_size)
    return {
        bank: auroc_summary(bank_scores(backbone, img, rendered, config, bank), rendered, config)
        for bank in banks
    }


def zero_shot_auroc(
    backbone,
    config: SynthConfig | None = None,
    prompts: str = "expert",
    *,
    batch_size: int = 64,
    workers: int = 0,
    rendered: list[tuple[str, str, np.ndarray]] | None = None,
) -> dict[str, Any]:
    """Zero-shot iAUROC of ``backbone`` with one prompt bank (``expert``, ``generic`` or
    ``winclip``); see :func:`zero_shot_banks`."""
    return zero_shot_banks(
        backbone, config, (prompts,), batch_size=batch_size, workers=workers, rendered=rendered
    )[prompts]


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
    banks: Sequence[str] = ZERO_SHOT_BANKS,
    retrieval_images: int = 1000,
    workers: int | None = None,
    render_size: int = 256,
) -> dict[str, Any]:
    """Both evaluations of one backbone: {"zero_shot": {bank: summary}, "retrieval": ...}."""
    workers = workers if workers is not None else min(8, os.cpu_count() or 1)
    return {
        "zero_shot": zero_shot_banks(
            backbone, zero_shot_config, banks, rendered=rendered, workers=workers
        ),
        "retrieval": retrieval_accuracy(
            backbone, retrieval_images, workers=workers, render_size=render_size
        ),
    }


def evaluate_models(
    arch: str,
    checkpoint: str,
    config: SynthConfig | None = None,
    *,
    device: str = "cpu",
    workers: int = 1,
    retrieval_images: int = 1000,
    render_size: int = 256,
    baseline: bool = True,
    banks: Sequence[str] = ZERO_SHOT_BANKS,
    log=print,
) -> dict[str, Any]:
    """:func:`evaluate_backbone` of the checkpoint (``pretrained``) and, with ``baseline``, of
    the same architecture's seeded random init (``random_init``) on one rendering of the
    split; plus ``protocol`` (:func:`evaluation_protocol`)."""
    from semclip_bench.backbones import BackboneSpec, build_backbone

    config = config or validation_config()
    rendered = render_test_split(config, workers)
    runs = [("pretrained", checkpoint)] + ([("random_init", None)] if baseline else [])
    result: dict[str, Any] = {}
    for name, weights in runs:
        backbone = build_backbone(BackboneSpec(arch, weights), device)
        result[name] = evaluate_backbone(
            backbone,
            zero_shot_config=config,
            rendered=rendered,
            banks=banks,
            retrieval_images=retrieval_images,
            workers=workers,
            render_size=render_size,
        )
        zs = result[name]["zero_shot"]
        log(
            f"evaluation ({name}): "
            + "; ".join(f"{b} seen {zs[b]['seen']:.3f} unseen {zs[b]['unseen']:.3f}" for b in zs)
            + "; retrieval i->t {image_to_text_top1:.3f} t->i {text_to_image_top1:.3f}".format(
                **result[name]["retrieval"]
            )
        )
    result["protocol"] = evaluation_protocol(config, banks)
    return result


def evaluation_protocol(config: SynthConfig, banks: Sequence[str] = ZERO_SHOT_BANKS) -> dict:
    """What the evaluation used (for the summary and the model card)."""
    return {
        "zero_shot_data": f"sem-synth validation split, SynthConfig(seed={config.seed})",
        "zero_shot_config": config.to_dict(),
        "prompt_banks": list(banks),
        "retrieval_seed": RETRIEVAL_SEED,
        "seen_types": list(SEEN_TYPES),
        "unseen_types": list(EXCLUDED_TYPES),
    }


__all__ = [
    "VALIDATION_SEED",
    "ZERO_SHOT_BANKS",
    "ZERO_SHOT_TEMPERATURE",
    "auroc_summary",
    "bank_scores",
    "evaluate_backbone",
    "evaluate_models",
    "evaluation_protocol",
    "render_test_split",
    "retrieval_accuracy",
    "validation_config",
    "zero_shot_auroc",
    "zero_shot_banks",
]
