"""SEM-CLIP (Jin et al., ICCAD 2024): few-shot segmentation and classification of SEM wafer defects.

One class, :class:`SemClip`, holds the published form (``semclip``) and this project's variant
(``semclip_plus``) as options. The method card ``docs/methods/semclip.md`` describes the pipeline,
the choices where the paper is silent, the ablation switches and the zero-shot form.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from semclip_bench.errors import UserError
from semclip_bench.models.base import (
    Features,
    FewShotMethod,
    MethodOutput,
    SupportSet,
    pixel_supervision,
)
from semclip_bench.models.common import (
    cosine_logits,
    dice_loss,
    downsample_masks,
    feature_surgery_similarity,
    focal_loss,
    gaussian_blur,
    upsample_maps,
)
from semclip_bench.models.semclip_heads import TransformationLayers, folded_projection
from semclip_bench.prompts import PromptBank, class_text_embeddings, load_prompt_bank

log = logging.getLogger(__name__)

Paths = Literal["dual", "vanilla"]

#: Feature-name prefixes of the Transformation Layers' inputs a fit computes once
#: (:meth:`SemClip.training_features`): ``LN(x)`` and its standardisation ``z``, per layer module,
#: and the frozen base's output ``W0 LN(x) + b0`` (``transform_init="projection"``).
_NORMALISED_Y = "transform_ln_"
_NORMALISED_Z = "transform_z_"
_BASE_OUTPUT = "transform_base_"

#: Text embeddings already computed, keyed by (backbone weights, bank content, class names).
_TEXT_CACHE: dict[tuple, Tensor] = {}


@dataclass
class SemClipMaps:
    """Everything SEM-CLIP predicts for B images of size H x W.

    ``anomaly_map`` (B, H, W) smoothed; ``class_maps`` (B, C, H, W) smoothed mean class
    probabilities (type segmentation); ``image_score`` (B,); ``class_logits`` (B, C) fused;
    ``head_logits`` (B, C); ``clip_logits`` (B, C) or None without text guidance.
    """

    anomaly_map: Tensor
    class_maps: Tensor
    image_score: Tensor
    class_logits: Tensor
    head_logits: Tensor
    clip_logits: Tensor | None


class SemClip(FewShotMethod):
    """SEM-CLIP core (plain ``nn.Module``); ``docs/methods/semclip.md`` describes each option.

    Args:
        backbone: frozen :class:`~semclip_bench.backbones.ClipBackbone` (kept as a submodule so
            ``.to(device)`` moves it; its weights never train).
        class_names: (normal, *defect types); index 0 is the normal class.
        prompts: "expert" | "generic" | path to a prompt bank YAML.
        paths: "dual" (vanilla + v-v maps) | "vanilla" (single path, no v-v branch).
        text_guidance: Transformation Layer + CLIP text logits on (True) or off (False).
        taps: 1-based tapped blocks; None = ``backbone.default_taps()``.
        vv_blocks: number of last blocks with the v-v branch; None = all blocks.
        transform: "shared" | "separate" Transformation Layers for the two paths.
        transform_init: "random" (published) | "projection" (addition) Transformation Layers.
        head_hidden: 0 = linear head; > 0 = MLP with that many hidden units.
        class_logit_weight: lambda, weight of the CLIP image-text logits vs the head's.
        image_score_weight: w of the image-score rule.
        temperature: softmax temperature of every image/token-text similarity.
        sigma: Gaussian smoothing of the maps at input resolution, in pixels (0 = off).
        surgery: CLIP Surgery feature surgery on the similarities (False = plain cosine).
        text_centering: remove the class-common part of the text vectors (addition; False).
        loss_resolution: "grid" | "input" (see ``docs/methods/semclip.md``).
        grid_target: "any" | "area" patch targets of the grid loss.
        focal_weight, dice_weight, ce_weight: weights of the loss terms.
    """

    name: ClassVar[str] = "semclip"
    supervision: ClassVar = "normal+defects"
    classifies: ClassVar[bool] = True
    trainable: ClassVar[bool] = True
    #: No data-dependent control flow in training_loss: seeds train as one stack (stacked.py).
    trains_stacked: ClassVar[bool] = True
    #: Pixel losses on the support masks (defect images without a mask: cross-entropy only).
    uses_masks: ClassVar[bool] = True
    #: K = 0 runs as zero-shot: frozen-projection maps and CLIP text logits (untrained head off).
    zero_shot: ClassVar[bool] = True

    def __init__(
        self,
        backbone,
        class_names: tuple[str, ...],
        *,
        prompts: str | Path | PromptBank = "expert",
        paths: Paths = "dual",
        text_guidance: bool = True,
        taps: tuple[int, ...] | list[int] | None = None,
        vv_blocks: int | None = None,
        transform: Literal["shared", "separate"] = "shared",
        transform_init: Literal["projection", "random"] = "random",
        head_hidden: int = 0,
        class_logit_weight: float = 0.5,
        image_score_weight: float = 0.5,
        temperature: float = 0.07,
        sigma: float = 4.0,
        surgery: bool = True,
        text_centering: bool = False,
        loss_resolution: Literal["grid", "input"] = "grid",
        grid_target: Literal["any", "area"] = "any",
        focal_weight: float = 1.0,
        dice_weight: float = 1.0,
        ce_weight: float = 1.0,
    ) -> None:
        super().__init__()
        self.class_names = tuple(class_names)
        if len(self.class_names) < 2:
            raise UserError(f"semclip needs the normal class and >= 1 defect type: {class_names}")
        _check_choice("paths", paths, ("dual", "vanilla"))
        _check_choice("transform", transform, ("shared", "separate"))
        _check_choice("transform_init", transform_init, ("projection", "random"))
        _check_choice("loss_resolution", loss_resolution, ("grid", "input"))
        _check_choice("grid_target", grid_target, ("any", "area"))
        for opt, value in (("class_logit_weight", class_logit_weight),
                           ("image_score_weight", image_score_weight)):  # fmt: skip
            if not 0.0 <= float(value) <= 1.0:
                raise UserError(f"semclip option {opt} must lie in [0, 1], got {value}")
        if temperature <= 0:
            raise UserError(f"semclip option temperature must be > 0, got {temperature}")
        if sigma < 0:
            raise UserError(f"semclip option sigma must be >= 0, got {sigma}")
        if head_hidden < 0:
            raise UserError(f"semclip option head_hidden must be >= 0, got {head_hidden}")

        self.backbone = backbone
        self.prompt_bank = load_prompt_bank(prompts)
        self.paths: Paths = paths
        self.text_guidance = bool(text_guidance)
        n_blocks = int(backbone.num_blocks)
        self.taps: tuple[int, ...] = (
            tuple(backbone.default_taps()) if taps is None else tuple(int(t) for t in taps)
        )
        bad = [t for t in self.taps if not 1 <= t <= n_blocks]
        if not self.taps or bad or len(set(self.taps)) != len(self.taps):
            raise UserError(
                f"semclip option taps {list(self.taps)}: need distinct blocks in 1..{n_blocks}"
            )
        if paths == "vanilla":
            self.vv_blocks = 0
        else:
            self.vv_blocks = n_blocks if vv_blocks is None else int(vv_blocks)
            if not 1 <= self.vv_blocks <= n_blocks:
                raise UserError(
                    f"semclip option vv_blocks={vv_blocks}: need 1..{n_blocks} with paths=dual"
                )
        first_vv = n_blocks - self.vv_blocks  # taps after this block have a v-v level
        #: Indices into ``taps`` of the levels that have a v-v map (dual mode).
        self.vv_levels: tuple[int, ...] = tuple(
            i for i, t in enumerate(self.taps) if self.vv_blocks and t > first_vv
        )
        if paths == "dual" and not self.vv_levels:
            raise UserError(
                f"semclip options vv_blocks={self.vv_blocks}, taps={list(self.taps)}: no tap has a "
                "v-v level (raise vv_blocks or use paths=vanilla)"
            )
        self.transform = transform
        self.transform_init = transform_init
        self.class_logit_weight = float(class_logit_weight)
        self.image_score_weight = float(image_score_weight)
        self.temperature = float(temperature)
        self.sigma = float(sigma)
        self.surgery = bool(surgery)
        self.text_centering = bool(text_centering)
        self.loss_resolution = loss_resolution
        self.grid_target = grid_target
        self.focal_weight = float(focal_weight)
        self.dice_weight = float(dice_weight)
        self.ce_weight = float(ce_weight)
        self.grid: tuple[int, int] = (int(backbone.grid_size[0]), int(backbone.grid_size[1]))
        self.image_size = int(backbone.image_size)
        width, embed_dim, n_classes = int(backbone.width), int(backbone.embed_dim), len(class_names)

        self.transforms: TransformationLayers | None = None
        self.transforms_vv: TransformationLayers | None = None
        if self.text_guidance:
            base = folded_projection(backbone) if transform_init == "projection" else None

            def make(n: int) -> TransformationLayers:
                if base is None:
                    return TransformationLayers(n, width, embed_dim)
                return TransformationLayers(n, width, embed_dim, base[0], base[1], eps=base[2])

            self.transforms = make(len(self.taps))
            if paths == "dual" and transform == "separate":
                self.transforms_vv = make(len(self.vv_levels))
        # Layer of each (level, path) map in the shared mode: F levels, then the v-v levels.
        self.register_buffer(
            "map_levels",
            torch.tensor(list(range(len(self.taps))) + list(self.vv_levels), dtype=torch.long),
            persistent=False,
        )

        if head_hidden > 0:
            self.head: nn.Module = nn.Sequential(
                nn.Linear(embed_dim, head_hidden), nn.GELU(), nn.Linear(head_hidden, n_classes)
            )
        else:
            self.head = nn.Linear(embed_dim, n_classes)

        # Support statistics standardising the trainable inputs (identity until setup_support).
        n_maps = len(self.taps) + (len(self.vv_levels) if paths == "dual" else 0)
        self.register_buffer("token_mean", torch.zeros(n_maps, width))
        self.register_buffer("token_std", torch.ones(n_maps, width))
        self.register_buffer("cls_mean", torch.zeros(embed_dim))
        self.register_buffer("cls_std", torch.ones(embed_dim))
        self.register_buffer("text_embeddings", torch.zeros(n_classes, embed_dim))
        self.register_buffer("text_ready", torch.zeros((), dtype=torch.bool))
        # False after setup_support with an empty support set: the untrained head is not used.
        self.register_buffer("head_active", torch.ones((), dtype=torch.bool))
        # Likewise the untrained Transformation Layers: zero-shot maps use the frozen projection.
        self.register_buffer("transform_active", torch.ones((), dtype=torch.bool))

    # ------------------------------------------------------------------ frozen part
    @property
    def n_maps(self) -> int:
        """Number of (level, path) maps averaged into the anomaly map."""
        return len(self.taps) + (len(self.vv_levels) if self.paths == "dual" else 0)

    def feature_key(self) -> str:
        taps = ",".join(map(str, self.taps))
        return f"semclip|{self.backbone.spec.key()}|taps={taps}|vv={self.vv_blocks}|{self.paths}"

    @torch.no_grad()
    def extract(self, images: Tensor) -> Features:
        """Frozen features: ``cls`` (B, D), ``patches`` (B, n_levels, L, width) and, in dual mode,
        ``patches_vv`` (B, n_vv_levels, L, width) (all levels with the default ``vv_blocks``)."""
        tokens = self.backbone.forward_features(images, self.taps, self.vv_blocks)
        feats: Features = {"cls": tokens.cls, "patches": torch.stack(tokens.patches, dim=1)}
        if self.paths == "dual":
            vv = [tokens.patches_vv[i] for i in self.vv_levels]
            if any(v is None for v in vv):
                raise RuntimeError("backbone returned no v-v tokens for a v-v level")
            feats["patches_vv"] = torch.stack(vv, dim=1)  # type: ignore[arg-type]
        return feats

    # ------------------------------------------------------------------ text
    @torch.no_grad()
    def compute_text_embeddings(self, class_names: tuple[str, ...] | None = None) -> Tensor:
        """(C, embed_dim) class text embeddings from the prompt bank (cached per backbone)."""
        names = tuple(class_names or self.class_names)
        bank = self.prompt_bank
        key = (self.backbone.spec.key(), bank.templates, tuple(sorted(bank.states.items())), names)
        if key not in _TEXT_CACHE:
            _TEXT_CACHE[key] = class_text_embeddings(self.backbone, names, self.prompt_bank).cpu()
        return _TEXT_CACHE[key]

    def setup_support(self, support: SupportSet) -> None:
        """Embed the class prompts (no gradients); the support images are used in training."""
        if tuple(support.class_names) != self.class_names:
            raise ValueError(
                f"support classes {support.class_names} differ from the method's {self.class_names}"
            )
        self._set_text(self.compute_text_embeddings())
        has_support = len(support.labels) > 0 and bool(support.features)
        self.head_active.fill_(has_support or not self.text_guidance)
        self.transform_active.fill_(has_support)
        if has_support:
            self._set_statistics(support.features)

    @torch.no_grad()
    def _set_statistics(self, features: Features) -> None:
        """Per-channel mean/std of the support's LayerNormed tokens (per map) and CLS embedding."""
        tokens = self._raw_tokens(features)  # (B, M, L, W)
        for m in range(tokens.shape[1]):  # one map at a time bounds the peak memory
            y = F.layer_norm(tokens[:, m], (tokens.shape[-1],))
            self.token_mean[m] = y.mean(dim=(0, 1))
            self.token_std[m] = _safe_std(y, dim=(0, 1))
        cls = features["cls"].to(self.cls_mean)
        c = F.layer_norm(cls, (cls.shape[-1],))
        self.cls_mean.copy_(c.mean(dim=0))
        if len(c) > 1:
            self.cls_std.copy_(_safe_std(c, dim=(0,)))

    def _set_text(self, emb: Tensor) -> None:
        self.text_embeddings.copy_(emb.to(self.text_embeddings))
        self.text_ready.fill_(True)

    def _text(self) -> Tensor:
        """(C, D) class text vectors used for the similarities (after text centring if on)."""
        if not bool(self.text_ready):
            self._set_text(self.compute_text_embeddings())
        text = self.text_embeddings
        if self.text_centering:
            text = F.normalize(text - text.mean(dim=0, keepdim=True), dim=-1)
        return text

    # ------------------------------------------------------------------ head
    def _dtype(self) -> torch.dtype:
        return next(self.head.parameters()).dtype

    def _raw_tokens(self, features: Features) -> Tensor:
        """(B, n_maps, L, width) raw tokens of every (level, path) map, F levels first."""
        patches = features["patches"].to(self._dtype())
        if self.paths == "vanilla":
            return patches
        if "patches_vv" not in features:
            raise KeyError("semclip with paths=dual needs the 'patches_vv' feature")
        return torch.cat([patches, features["patches_vv"].to(patches.dtype)], dim=1)

    def _normalised_tokens(self, features: Features) -> list[tuple[Tensor, Tensor]]:
        """``(LN(x), z)`` per Transformation Layer module (one, or F then V when separate).

        Taken from the features when a fit put them there (:meth:`training_features`), else
        computed from the raw tokens (the same ops on the same rows: the same values).
        """
        if _NORMALISED_Z + "0" in features:
            return [
                (
                    features.get(f"{_NORMALISED_Y}{i}", features[f"{_NORMALISED_Z}{i}"]),
                    features[f"{_NORMALISED_Z}{i}"],
                )
                for i in range(1 if self.transforms_vv is None else 2)
            ]
        assert self.transforms is not None
        tokens = self._raw_tokens(features)
        mean, std = self.token_mean.to(tokens.dtype), self.token_std.to(tokens.dtype)
        if self.transforms_vv is None:
            return [self.transforms.normalise(tokens, mean, std)]
        n = len(self.taps)
        return [
            self.transforms.normalise(tokens[:, :n], mean[:n], std[:n]),
            self.transforms_vv.normalise(tokens[:, n:], mean[n:], std[n:]),
        ]

    def training_features(self, support: SupportSet) -> Features:
        """The support features with the Transformation Layers' frozen inputs computed once.

        ``LN(x)`` and its support standardisation ``z`` depend on the frozen tokens and the
        support statistics only, yet the step recomputed them for every batch; here they are
        computed once per fit for every support image (a batch gathers its rows). The raw patch
        tokens are then not needed by the step and are left out. Where a frozen projection base
        acts on ``LN(x)`` (``transform_init="projection"``), its output ``W0 LN(x) + b0`` is
        computed once too (a matrix product of the size of the trainable one, issue 23) and
        kept instead of ``LN(x)``: on the CPU only, where its rows were checked to equal a
        batch's product bit for bit (``tests/models/test_semclip.py``). A CUDA GEMM may choose
        another kernel, and so another summation order, for another row count; there ``LN(x)``
        is kept and the step multiplies its batch, as the committed GPU rows were made.
        """
        features = support.features
        if self.transforms is None or not bool(self.transform_active) or not features:
            return features
        with torch.no_grad():
            parts = self._normalised_tokens(features)
            layers = [self.transforms, self.transforms_vv][: len(parts)]
            out = {k: v for k, v in features.items() if k not in ("patches", "patches_vv")}
            for i, ((y, z), layer) in enumerate(zip(parts, layers, strict=True)):
                out[f"{_NORMALISED_Z}{i}"] = z
                if layer is None or not layer.has_base:
                    continue
                if y.device.type == "cpu":
                    out[f"{_BASE_OUTPUT}{i}"] = layer.base_output(y)
                elif z is not y:
                    out[f"{_NORMALISED_Y}{i}"] = y
        return out

    def _base_outputs(self, features: Features) -> list[Tensor | None]:
        """The per-fit base outputs of :meth:`training_features`, one per layer module (None:
        not there, computed from ``LN(x)`` in the step)."""
        n = 1 if self.transforms_vv is None else 2
        return [features.get(f"{_BASE_OUTPUT}{i}") for i in range(n)]

    def _tokens_in_text_space(self, features: Features) -> Tensor:
        """(B, n_maps, L, embed_dim) tokens of every (level, path), F levels first."""
        if self.transforms is None or not bool(self.transform_active):
            # No text guidance, or zero-shot (nothing trained): frozen ln_post + projection.
            tokens = self._raw_tokens(features)
            return self.backbone.project_tokens(tokens).to(tokens.dtype)
        parts = self._normalised_tokens(features)
        bases = self._base_outputs(features)
        if self.transforms_vv is None:
            return self.transforms.on_normalised(*parts[0], self.map_levels, base=bases[0])
        return torch.cat(
            [
                self.transforms.on_normalised(*parts[0], base=bases[0]),
                self.transforms_vv.on_normalised(*parts[1], base=bases[1]),
            ],
            dim=1,
        )

    def class_probabilities(self, features: Features) -> Tensor:
        """(B, n_maps, L, C) per-token class probabilities of every (level, path) map."""
        text = self._text().to(self._dtype())
        tokens = self._tokens_in_text_space(features)
        b, m, n, d = tokens.shape
        flat = tokens.reshape(b, m * n, d)
        if self.surgery:
            cls = features["cls"].to(tokens.dtype)
            sim = feature_surgery_similarity(flat, text, cls)
        else:
            sim = F.normalize(flat, dim=-1) @ F.normalize(text, dim=-1).t()
        return (sim / self.temperature).softmax(dim=-1).reshape(b, m, n, -1)

    def logits(self, features: Features) -> tuple[Tensor, Tensor, Tensor | None]:
        """(fused, head, clip) class logits; clip is None without text guidance."""
        cls = features["cls"].to(self._dtype())
        z = (F.layer_norm(cls, (cls.shape[-1],)) - self.cls_mean) / self.cls_std
        head = self.head(z.to(cls.dtype))
        if not self.text_guidance:
            return head, head, None
        clip = cosine_logits(cls, self._text().to(cls.dtype), self.temperature)
        if not bool(self.head_active):  # zero-shot: no trained head to fuse
            return clip, head, clip
        lam = self.class_logit_weight
        return (1 - lam) * head + lam * clip, head, clip

    # ------------------------------------------------------------------ prediction
    def _finish_maps(self, per_token: Tensor) -> Tensor:
        """(..., L) grid values -> (..., H, W) upsampled and smoothed at input resolution."""
        maps = upsample_maps(per_token, self.grid, self.image_size)
        return gaussian_blur(maps, self.sigma)

    def _image_score(self, anomaly_map: Tensor, fused: Tensor) -> Tensor:
        w = self.image_score_weight
        p_defect = 1 - fused.softmax(dim=-1)[:, 0]
        return (1 - w) * anomaly_map.flatten(1).amax(dim=1) + w * p_defect

    def predict(self, features: Features) -> MethodOutput:
        probs = self.class_probabilities(features)
        anomaly = self._finish_maps(1 - probs[..., 0].mean(dim=1))
        fused, _, _ = self.logits(features)
        return MethodOutput(self._image_score(anomaly, fused), anomaly, fused)

    def predict_maps(self, features: Features) -> SemClipMaps:
        """Like :meth:`predict`, plus per-class maps and the separate logits."""
        probs = self.class_probabilities(features)  # (B, M, L, C)
        mean_probs = probs.mean(dim=1).transpose(1, 2)  # (B, C, L)
        class_maps = self._finish_maps(mean_probs)
        anomaly = 1 - class_maps[:, 0]  # linear ops commute with the mean
        fused, head, clip = self.logits(features)
        return SemClipMaps(
            anomaly, class_maps, self._image_score(anomaly, fused), fused, head, clip
        )

    # ------------------------------------------------------------------ training
    def training_loss(self, features: Features, labels: Tensor, masks: Tensor) -> dict[str, Tensor]:
        """Focal + Dice on every (level, path) map, + cross-entropy on the fused class logits."""
        labels = labels.long()
        n_classes = len(self.class_names)
        probs = self.class_probabilities(features)  # (B, M, L, C)
        b, m = probs.shape[:2]
        masks = masks.to(probs.dtype)
        # Pixel supervision only where it exists: normal images, or defect images with a mask.
        pixel_weight = pixel_supervision(labels, masks).to(probs.dtype)
        if self.loss_resolution == "grid":
            target = downsample_masks(masks, self.grid)  # (B, L) area fractions
            if self.grid_target == "any":
                target = (target > 0).to(probs.dtype)
            class_probs = probs.permute(0, 3, 1, 2)  # (B, C, M, L)
        else:
            target = masks.flatten(1)  # (B, H*W)
            size = masks.shape[-2:]
            up = upsample_maps(probs.permute(0, 1, 3, 2), self.grid, tuple(size))  # (B,M,C,H,W)
            class_probs = up.flatten(3).permute(0, 2, 1, 3)  # (B, C, M, H*W)
        onehot = F.one_hot(labels, n_classes).to(probs.dtype)  # (B, C)
        normal = torch.zeros_like(onehot)
        normal[:, 0] = 1
        # Soft pixel class targets: defect class on the masked fraction, normal elsewhere.
        q = (1 - target)[:, None, :] * normal[:, :, None] + target[:, None, :] * onehot[:, :, None]
        q = q[:, :, None, :].expand_as(class_probs)
        focal = focal_loss(class_probs, q, gamma=2.0, soft_classes=True, weight=pixel_weight)
        anomaly = 1 - class_probs[:, 0]  # (B, M, N)
        dice = dice_loss(
            anomaly.reshape(b * m, -1),
            target[:, None, :].expand(b, m, -1).reshape(b * m, -1),
            weight=pixel_weight.repeat_interleave(m),
        )
        fused, _, _ = self.logits(features)
        ce = F.cross_entropy(fused, labels)
        total = self.ce_weight * ce
        if self.text_guidance:  # without it the maps have no trainable parameter
            total = total + self.focal_weight * focal + self.dice_weight * dice
        return {"loss": total, "focal": focal.detach(), "dice": dice.detach(), "ce": ce.detach()}

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The Transformation Layers and the head (never the backbone)."""
        own = [p for name, p in self.named_parameters() if not name.startswith("backbone.")]
        return [p for p in own if p.requires_grad]

    def head_state_dict(self) -> dict[str, Tensor]:
        """The method's own state (transformation layers, head, text) without the backbone."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("backbone.")}


def _safe_std(x: Tensor, dim: tuple[int, ...]) -> Tensor:
    """Standard deviation over ``dim``, floored at 1e-3 of its mean (no division blow-ups)."""
    std = x.std(dim=dim)
    return std.clamp_min(1e-3 * float(std.mean()) + 1e-12)


def _check_choice(option: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise UserError(f"semclip option {option}={value!r}: choose from {', '.join(choices)}")


__all__ = ["SemClip", "SemClipMaps", "TransformationLayers", "folded_projection"]
