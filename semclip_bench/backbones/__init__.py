"""Shared frozen CLIP backbone (open_clip) and the model configs registered with open_clip.

Importing this package registers "semclip-tiny" (tests), "semclip-vit-m16" (compact default: ViT
12 x 240, text 6 x 64) and "semclip-vit-s16" (a narrower ViT 12 x 192) with open_clip.
:func:`default_backbone_spec` is the single place that decides the default weights.
"""

from __future__ import annotations

import logging
from pathlib import Path

import open_clip

from semclip_bench.backbones.clip import (
    FEATURE_VERSION,
    BackboneSpec,
    ClipBackbone,
    VisualTokens,
    build_backbone,
    count_parameters,
)

log = logging.getLogger(__name__)

MODEL_CONFIG_DIR = Path(__file__).with_name("model_configs")
open_clip.add_model_config(MODEL_CONFIG_DIR)

#: Name of the compact default architecture.
DEFAULT_MODEL = "semclip-vit-m16"
#: Packaged weights of the default architecture; used by default when the file exists.
DEFAULT_WEIGHTS = Path(__file__).resolve().parent.parent / "weights" / f"{DEFAULT_MODEL}.pt"

_warned_default = False


def default_backbone_spec(warn: bool = True) -> BackboneSpec:
    """The default backbone: packaged ``weights/<DEFAULT_MODEL>.pt`` if present, else random init.

    This is the one place to change when trained default weights are shipped.
    """
    global _warned_default
    if DEFAULT_WEIGHTS.is_file():
        return BackboneSpec(DEFAULT_MODEL, str(DEFAULT_WEIGHTS))
    if warn and not _warned_default:
        _warned_default = True
        log.warning(
            "no packaged weights at %s: the default backbone %s is randomly initialised",
            DEFAULT_WEIGHTS,
            DEFAULT_MODEL,
        )
    return BackboneSpec(DEFAULT_MODEL, None)


#: ``--pretrained`` values asking for the seeded random initialisation (the backbone control):
#: the architecture's weights as built with ``clip.RANDOM_INIT_SEED``, no file, no tag.
RANDOM_INIT_WORDS: tuple[str, ...] = ("none", "random")


def is_random_init_request(pretrained: str | None) -> bool:
    """Whether ``pretrained`` asks for random weights (``none``/``random``, any case)."""
    return isinstance(pretrained, str) and pretrained.strip().lower() in RANDOM_INIT_WORDS


def requested_backbone_spec(
    name: str | None = None, pretrained: str | None = None, image_size: int | None = None
) -> BackboneSpec:
    """The backbone a run or an API call asks for: ``name`` (None: the default architecture)
    with ``pretrained`` weights; when no weights are given, the default architecture gets its
    shipped weights and any other architecture starts from random weights (the shipped file
    only fits the architecture it was trained for). ``pretrained="none"`` (or ``"random"``) is
    the control: this architecture, default included, with its seeded random initialisation."""
    default = default_backbone_spec()
    if is_random_init_request(pretrained):
        return BackboneSpec(name=name or default.name, pretrained=None, image_size=image_size)
    if pretrained is None and (not name or name == default.name):
        pretrained = default.pretrained
    return BackboneSpec(name=name or default.name, pretrained=pretrained, image_size=image_size)


def token_volume(name: str, image_size: int | None = None) -> int | None:
    """Patch tokens (with CLS) x width of one image in the visual tower of the open_clip model
    ``name``, from its config alone (nothing is built); None when the config does not say (a timm
    tower, an unknown name). Per-image features grow with it: the runner sizes its processes by
    it (``runner/execute/processes.py``)."""
    cfg = open_clip.get_model_config(name) or {}
    vision = cfg.get("vision_cfg", {})
    width, patch = vision.get("width"), vision.get("patch_size")
    size = image_size or vision.get("image_size")
    if not isinstance(width, int) or not isinstance(patch, int) or not isinstance(size, int):
        return None
    return ((size // patch) ** 2 + 1) * width


#: Default spec, resolved at import (packaged weights if shipped, else random init).
DEFAULT_BACKBONE: BackboneSpec = default_backbone_spec(warn=False)

__all__ = [
    "DEFAULT_BACKBONE",
    "DEFAULT_MODEL",
    "DEFAULT_WEIGHTS",
    "FEATURE_VERSION",
    "MODEL_CONFIG_DIR",
    "BackboneSpec",
    "ClipBackbone",
    "VisualTokens",
    "build_backbone",
    "count_parameters",
    "default_backbone_spec",
    "is_random_init_request",
    "requested_backbone_spec",
    "token_volume",
]
