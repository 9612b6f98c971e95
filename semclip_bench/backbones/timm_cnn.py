"""Frozen timm CNN feature extractor (PatchCore's paper setting: wide_resnet50_2, layers 2 and 3).

Offline by design: weights come from a local file (``weights=path``) or the model is randomly
initialised (``weights=None``, for tests). A string that is not an existing file is taken for a
pretrained tag that would need the network and is refused with a :class:`UserError` naming it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path

import timm
import torch
from timm.models import load_state_dict
from torch import Tensor, nn

from semclip_bench.backbones.files import file_digest
from semclip_bench.errors import UserError

log = logging.getLogger(__name__)

#: ImageNet normalisation, used when a timm model's pretrained config has none.
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


def _resolve_weights(weights: str | Path | None) -> Path | None:
    """The local weights file, or None for random init; a tag or a missing file is a UserError."""
    if weights is None:
        return None
    path = Path(weights).expanduser()
    if path.is_file():
        return path
    text = str(weights)
    if path.suffix or "/" in text or "\\" in text:
        raise UserError(f"timm_weights: file '{text}' does not exist")
    raise UserError(
        f"timm_weights: '{text}' is not a local file; pretrained tags need the network, which this "
        "benchmark never uses: download the checkpoint and pass its path"
    )


def _layer_indices(name: str, layers: Sequence[str | int]) -> tuple[int, ...]:
    """Map layer names (e.g. "layer2") or feature indices to timm ``out_indices``.

    The model is built on the meta device only to read its ``feature_info`` (no memory, no weights).
    """
    if not timm.is_model(name):
        raise UserError(f"timm_name: '{name}' is not a timm model name")
    try:
        with torch.device("meta"):
            probe = timm.create_model(name, pretrained=False, features_only=True)
    except (RuntimeError, NotImplementedError):  # a model whose init needs real tensors
        probe = timm.create_model(name, pretrained=False, features_only=True)
    names = list(probe.feature_info.module_name())
    indices = []
    for layer in layers:
        if isinstance(layer, int) and 0 <= layer < len(names):
            indices.append(layer)
        elif isinstance(layer, str) and layer in names:
            indices.append(names.index(layer))
        else:
            raise UserError(
                f"timm_layers: '{layer}' is not a feature layer of '{name}' "
                f"(choose from {', '.join(names)} or their indices)"
            )
    if len(set(indices)) != len(indices):
        raise UserError(f"timm_layers: duplicate layers in {list(layers)}")
    return tuple(indices)


class TimmFeatureExtractor(nn.Module):
    """Frozen multi-layer feature maps of a timm CNN, in eval mode.

    ``forward(images)`` returns one (B, C_i, H_i, W_i) map per requested layer, in the order given.
    Attributes ``mean``/``std``/``image_size`` describe the input transform the runner must use
    (ImageNet statistics from the model's pretrained config).
    """

    def __init__(
        self,
        name: str = "wide_resnet50_2",
        weights: str | Path | None = None,
        layers: Sequence[str | int] = ("layer2", "layer3"),
        image_size: int = 256,
    ) -> None:
        super().__init__()
        if not layers:
            raise UserError("timm_layers: at least one layer is required")
        self.name = name
        self.weights_path = _resolve_weights(weights)
        self.layers = tuple(layers)
        self.image_size = int(image_size)
        indices = _layer_indices(name, self.layers)
        order = sorted(range(len(indices)), key=lambda i: indices[i])
        sorted_indices = tuple(indices[i] for i in order)
        # timm returns features in increasing index order; remember how to restore the caller's.
        self._restore = tuple(order.index(i) for i in range(len(indices)))
        self.model = timm.create_model(
            name, pretrained=False, features_only=True, out_indices=sorted_indices
        )
        if self.weights_path is None:
            log.warning("timm model '%s' is randomly initialised (no timm_weights file)", name)
        else:
            self._load_weights(self.weights_path)
        self.model.eval()
        self.model.requires_grad_(False)
        cfg = getattr(self.model, "pretrained_cfg", None) or {}
        self.mean = tuple(float(v) for v in cfg.get("mean", IMAGENET_MEAN))
        self.std = tuple(float(v) for v in cfg.get("std", IMAGENET_STD))
        channels = self.model.feature_info.channels()
        reductions = self.model.feature_info.reduction()
        self.channels = tuple(int(channels[i]) for i in self._restore)
        self.reductions = tuple(int(reductions[i]) for i in self._restore)

    def _load_weights(self, path: Path) -> None:
        """Load a local checkpoint (full model or feature model, any timm-readable format).

        Checked explicitly: every weight of the retained feature layers must be in the file with
        its shape (timm's own pretrained loading silently skips missing keys in some cases); extra
        keys (classifier, later stages) are ignored.
        """
        try:
            state = load_state_dict(str(path), weights_only=True)
        except Exception as err:  # unreadable / not a checkpoint: name the file
            raise UserError(f"timm_weights: cannot read '{path}': {type(err).__name__}") from err
        state = {k.removeprefix("module."): v for k, v in state.items()}
        own = self.model.state_dict()
        missing = [k for k in own if k not in state]
        if missing:
            raise UserError(
                f"timm_weights: '{path}' lacks {len(missing)} of the {len(own)} weights of "
                f"'{self.name}' up to its last requested layer (first: {missing[0]})"
            )
        bad = [k for k in own if tuple(state[k].shape) != tuple(own[k].shape)]
        if bad:
            raise UserError(
                f"timm_weights: '{path}' does not fit '{self.name}': {bad[0]} has shape "
                f"{tuple(state[bad[0]].shape)}, the model {tuple(own[bad[0]].shape)}"
            )
        self.model.load_state_dict({k: state[k] for k in own}, strict=True)

    def train(self, mode: bool = True) -> TimmFeatureExtractor:
        """Always stays in eval mode (frozen batch-norm statistics)."""
        super().train(False)
        return self

    @cached_property
    def weights_digest(self) -> str:
        """Content hash of the weights file, or "random" for random init."""
        return "random" if self.weights_path is None else file_digest(self.weights_path)

    def key(self) -> str:
        """Stable identity of this extractor for feature caches."""
        layers = ",".join(str(layer) for layer in self.layers)
        return f"timm:{self.name}:w={self.weights_digest}:layers={layers}:size={self.image_size}"

    @torch.no_grad()
    def forward(self, images: Tensor) -> list[Tensor]:
        """Per-layer feature maps (B, C_i, H_i, W_i) of normalised images (B, 3, H, W)."""
        feats = self.model(images)
        return [feats[i] for i in self._restore]
