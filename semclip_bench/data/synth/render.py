"""One synthetic SEM image as a pure function of (seed, category, split, label, index)."""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np

from semclip_bench.data.labels import DEFECT_TYPES, NORMAL_LABEL
from semclip_bench.data.synth.config import FAMILIES, SynthConfig
from semclip_bench.data.synth.defects import plan_defect
from semclip_bench.data.synth.imaging import draw_databar, form_image, quantise, sample_imaging
from semclip_bench.data.synth.raster import percentile_linear
from semclip_bench.data.synth.scene import build_scene
from semclip_bench.errors import UserError

SPLITS: tuple[str, ...] = ("train", "test")


@dataclass
class SynthImage:
    """A rendered image, its defect mask (``None`` for normal images) and its parameters."""

    image: np.ndarray  # (H, W) uint8 or uint16
    mask: np.ndarray | None  # (H, W) bool
    meta: dict[str, Any]


def _stable_hash(text: str) -> int:
    """Process-independent hash of a string (Python's ``hash`` is salted per process)."""
    return zlib.crc32(text.encode("utf-8"))


def image_streams(
    seed: int, category: str, split: str, label: str, index: int
) -> list[np.random.Generator]:
    """Independent generators (scene, imaging, defect, noise) of one image."""
    entropy = [seed, _stable_hash(category), _stable_hash(split), _stable_hash(label), index]
    return [np.random.default_rng(child) for child in np.random.SeedSequence(entropy).spawn(4)]


def render_image(
    config: SynthConfig,
    category: str,
    split: str,
    label: str,
    index: int,
    *,
    draw_defect: bool = True,
) -> SynthImage:
    """Render image ``index`` of ``category/split/label``; any seed, any known defect type.

    With ``draw_defect=False`` the same field of view, tool settings and noise are rendered
    without the defect (the mask and meta still describe the defect that was left out), which
    is how tests check that the mask covers what was drawn.
    """
    if category not in FAMILIES:
        raise UserError(f"synth category {category!r} is not one of {', '.join(FAMILIES)}")
    if split not in SPLITS:
        raise UserError(f"synth split {split!r} is not 'train' or 'test'")
    if label != NORMAL_LABEL and label not in DEFECT_TYPES:
        raise UserError(f"synth label {label!r} is not {NORMAL_LABEL!r} or a defect type")
    if label != NORMAL_LABEL and split != "test":
        raise UserError("synth: defect images exist only in the 'test' split")
    if not isinstance(index, (int, np.integer)) or index < 0:
        raise UserError(f"synth index must be a non-negative integer, got {index!r}")
    rng_scene, rng_imaging, rng_defect, rng_noise = image_streams(
        config.seed, category, split, label, int(index)
    )
    size = config.image_size
    scene = build_scene(category, rng_scene, size, config.max_rotation_deg)
    imaging = sample_imaging(
        rng_imaging,
        size,
        scene.pixel_nm,
        config.dose,
        config.databar_fraction,
        config.databar_height,
    )
    meta: dict[str, Any] = {
        "seed": config.seed,
        "category": category,
        "split": split,
        "label": label,
        "index": int(index),
        "image_size": size,
        "bit_depth": config.bit_depth,
        **scene.meta,
        "pixel_size_nm": round(scene.pixel_nm, 4),
        "pitch_nm": round(scene.meta["pitch_px"] * scene.pixel_nm, 2),
        "cd_nm": round(scene.meta["cd_px"] * scene.pixel_nm, 2),
        **imaging.meta(),
        "defect_type": None,
        "size_px": None,
        "area_px": None,
        "centroid_yx": None,
        "bbox": None,
    }
    step = max(size // 64, 1)
    bright_yield = percentile_linear(scene.material[::step, ::step], 99.0)
    mask = None
    if label != NORMAL_LABEL:
        s = size / 256.0
        lo, hi = config.defect_size_px
        plan = plan_defect(
            label,
            scene,
            rng_defect,
            size_range=(max(lo * s, 2.0), max(hi * s, 2.0)),
            hard_fraction=config.hard_fraction,
            rows=size - imaging.databar_rows,
            detector_azimuth=imaging.detector_azimuth,
        )
        if draw_defect:
            plan.apply(scene)
        mask = plan.mask
        meta.update(plan.meta)
    signal = form_image(scene.height, scene.material, imaging, rng_noise, bright_yield)
    image = quantise(signal, config.bit_depth)
    draw_databar(image, imaging, scene.pixel_nm)
    return SynthImage(image=image, mask=mask, meta=meta)
