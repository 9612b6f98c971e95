"""Example semclip_bench method plugin: how far each patch is from the mean normal patch.

A deliberately small :class:`~semclip_bench.models.base.FewShotMethod` (normal-only supervision,
nothing trained) that shows the whole contract: ``feature_key``, ``extract`` (frozen, cached by
the runner), ``setup_support`` (statistics of the K normal support images) and ``predict``
(image score, anomaly map). It is registered in ``pyproject.toml`` under the entry-point group
``semclip_bench.methods`` as ``mean_patch``.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from semclip_bench.errors import UserError
from semclip_bench.models.base import Features, FewShotMethod, MethodOutput, SupportSet
from semclip_bench.models.common import gaussian_blur, upsample_maps


class MeanPatchDistance(FewShotMethod):
    """Anomaly map = per-channel standardised distance of each patch token (at block ``tap``) to
    the mean patch token of the normal support images; image score = the map's maximum.

    Options (keyword arguments, settable in ``configs/methods/mean_patch.yaml``): ``tap``, the
    1-based block whose tokens are used (default: the middle block); ``sigma``, the Gaussian
    smoothing of the map in pixels.
    """

    name: ClassVar[str] = "mean_patch"
    supervision: ClassVar = "normal"

    def __init__(
        self, backbone, class_names: tuple[str, ...], *, tap: int | None = None, sigma: float = 4.0
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.class_names = tuple(class_names)
        self.tap = int(tap) if tap is not None else max(1, backbone.num_blocks // 2)
        if not 1 <= self.tap <= backbone.num_blocks:
            raise UserError(f"mean_patch option tap={tap}: need 1..{backbone.num_blocks}")
        self.sigma = float(sigma)
        self.register_buffer("center", torch.zeros(backbone.width))
        self.register_buffer("scale", torch.ones(backbone.width))

    def feature_key(self) -> str:
        return f"mean_patch|{self.backbone.spec.key()}|tap={self.tap}"

    @torch.no_grad()
    def extract(self, images: Tensor) -> Features:
        tokens = self.backbone.forward_features(images, taps=(self.tap,))
        return {"patches": tokens.patches[0].float()}  # (B, L, width)

    def setup_support(self, support: SupportSet) -> None:
        normal = support.features["patches"][support.labels.to(self.center.device) == 0]
        flat = normal.reshape(-1, normal.shape[-1]).to(self.center)
        self.center.copy_(flat.mean(dim=0))
        if flat.shape[0] > 1:
            self.scale.copy_(flat.std(dim=0).clamp_min(1e-6))

    def predict(self, features: Features) -> MethodOutput:
        patches = features["patches"].to(self.center)
        distance = ((patches - self.center) / self.scale).norm(dim=-1)  # (B, L)
        maps = upsample_maps(distance, self.backbone.grid_size, self.backbone.image_size)
        maps = gaussian_blur(maps, self.sigma)
        return MethodOutput(image_score=maps.flatten(1).amax(dim=1), anomaly_map=maps)
