"""AnomalyCLIP-style baseline: object-agnostic learnable prompts on a frozen CLIP with DPAM.

A re-implementation of Zhou et al., "AnomalyCLIP" (ICLR 2024), whose prompts are trained on each
episode's K-shot support set instead of an auxiliary dataset. The method card
``docs/methods/anomalyclip.md`` describes the prompts, maps, loss and that deviation.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

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
    binary_focal_loss,
    dice_loss,
    gaussian_blur,
    upsample_maps,
)

if TYPE_CHECKING:
    from semclip_bench.backbones import ClipBackbone

#: State words of the two object-agnostic prompts (after the learnable context words).
NORMAL_WORDS = "object."
ABNORMAL_WORDS = "damaged object."
#: Placeholder word whose token embeddings are replaced by the learnable context vectors.
PLACEHOLDER = "X"


class AnomalyClip(FewShotMethod):
    """AnomalyCLIP-style learnable object-agnostic prompts + DPAM, fitted on the support set.

    Options (mirrored in ``configs/methods/anomalyclip.yaml``):
    ``n_ctx``: learnable context words per prompt (published 12).
    ``deep_prompt_depth``: text layers with learnable tokens, counting the input layer (published 9;
    0 or 1 = no deep tokens; clamped to the text depth).
    ``deep_prompt_length``: learnable tokens per deep layer (published 4; clamped to ``n_ctx``
    so that they overwrite context positions only).
    ``taps``: 1-based vision blocks whose tokens make maps (default ``backbone.default_taps()``).
    ``vv_blocks``: number of last blocks with the v-v (DPAM) branch. Default: from the first tap
    to the last block, ``num_blocks - taps[0] + 1``: this reproduces the published DPAM on layers
    6-24 of ViT-L/14 with taps (6, 12, 18, 24), and gives blocks 3-12 (10 blocks) for a 12-block
    ViT with taps (3, 6, 9, 12), so every tap has DPAM tokens as in the paper. 0 disables DPAM
    (vanilla patch tokens; a tap before the first v-v block also uses its vanilla tokens).
    ``temperature``: softmax temperature of all image-text similarities (0.07).
    ``sigma``: Gaussian blur of the maps at input resolution (4).
    ``seg_loss_weight``: weight of the segmentation losses against the image cross-entropy (4 in the
    public training script).
    ``seed``: seed of the N(0, 0.02) initialisation of the learnable tokens; None draws from
    torch's global generator (which the runner seeds with the episode seed).
    """

    name = "anomalyclip"
    supervision = "normal+defects"
    classifies = False
    trainable = True
    #: training_loss has no data-dependent control flow once setup_support has run: the runner
    #: may train several seeds' prompts as one stack (models/stacked.py).
    trains_stacked = True
    uses_masks = True

    def __init__(
        self,
        backbone: ClipBackbone,
        class_names: tuple[str, ...],
        *,
        n_ctx: int = 12,
        deep_prompt_depth: int = 9,
        deep_prompt_length: int = 4,
        taps: tuple[int, ...] | list[int] | None = None,
        vv_blocks: int | None = None,
        temperature: float = 0.07,
        sigma: float = 4.0,
        seg_loss_weight: float = 4.0,
        seed: int | None = None,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.class_names = tuple(class_names)
        num_blocks = int(backbone.num_blocks)
        taps = tuple(int(t) for t in (backbone.default_taps() if taps is None else taps))
        if (
            not taps
            or any(t < 1 or t > num_blocks for t in taps)
            or list(taps) != sorted(set(taps))
        ):
            raise UserError(
                f"anomalyclip option 'taps' must be increasing block numbers in 1..{num_blocks}, "
                f"got {taps}"
            )
        if vv_blocks is None:
            vv_blocks = num_blocks - taps[0] + 1
        if not 0 <= int(vv_blocks) <= num_blocks:
            raise UserError(f"anomalyclip option 'vv_blocks' must be in 0..{num_blocks}")
        if int(n_ctx) < 1:
            raise UserError("anomalyclip option 'n_ctx' must be at least 1")
        if temperature <= 0:
            raise UserError("anomalyclip option 'temperature' must be positive")
        if sigma < 0:
            raise UserError("anomalyclip option 'sigma' must be >= 0")
        if deep_prompt_depth < 0:
            raise UserError("anomalyclip option 'deep_prompt_depth' must be >= 0")
        self.taps = taps
        self.vv_blocks = int(vv_blocks)
        #: Whether the pixel losses weight rows (set by setup_support; None: decide per batch).
        self._pixel_weighted: bool | None = None
        self.n_ctx = int(n_ctx)
        self.temperature = float(temperature)
        self.sigma = float(sigma)
        self.seg_loss_weight = float(seg_loss_weight)
        self.seed = None if seed is None else int(seed)
        #: (key, text features) of the last prediction-time text pass (see text_features).
        self._text_cache: tuple[tuple, Tensor] | None = None
        self.register_load_state_dict_post_hook(_drop_text_cache)

        tower = getattr(backbone.model, "text", backbone.model)
        text_layers = len(tower.transformer.resblocks)
        width = int(backbone.text_width)
        # Deep tokens go to the input of text layers 2..depth (layer 1 holds the context vectors).
        n_deep = max(0, min(int(deep_prompt_depth), text_layers) - 1)
        if n_deep and int(deep_prompt_length) < 1:
            raise UserError("anomalyclip option 'deep_prompt_length' must be at least 1")
        self.deep_prompt_depth = n_deep + 1 if n_deep else 0
        # Clamped to n_ctx so that deep tokens only overwrite context positions, never the words.
        self.deep_prompt_length = min(int(deep_prompt_length), self.n_ctx) if n_deep else 0

        # Frozen token embeddings of "X X ... X object." / "X X ... X damaged object.".
        prefix = " ".join([PLACEHOLDER] * self.n_ctx)
        ids = backbone.tokenize([f"{prefix} {NORMAL_WORDS}", f"{prefix} {ABNORMAL_WORDS}"]).long()
        placeholder = ids[:, 1 : 1 + self.n_ctx]
        if not bool((placeholder == placeholder[0, 0]).all()):
            raise UserError("anomalyclip: the tokenizer does not give one token per placeholder")
        with torch.no_grad():
            embeddings = backbone.token_embeddings(ids).detach().float()
        device = embeddings.device
        self.register_buffer("token_ids", ids, persistent=False)
        self.register_buffer("token_embeddings", embeddings, persistent=False)
        # EOT = highest token id: CLIP pools the text at the argmax of the ids.
        self.register_buffer("eot_indices", ids.argmax(dim=-1), persistent=False)

        generator = None if self.seed is None else torch.Generator().manual_seed(self.seed)

        def init(*shape: int) -> nn.Parameter:
            return nn.Parameter((torch.randn(*shape, generator=generator) * 0.02).to(device))

        self.ctx_normal = init(self.n_ctx, width)
        self.ctx_abnormal = init(self.n_ctx, width)
        self.deep_prompts = nn.ParameterList(
            [init(self.deep_prompt_length, width) for _ in range(n_deep)]
        )
        for p in self.backbone.parameters():
            p.requires_grad_(False)
        self.backbone.eval()

    # ----------------------------------------------------------------------------------------
    def feature_key(self) -> str:
        taps = ",".join(str(t) for t in self.taps)
        return f"anomalyclip|{self.backbone.spec.key()}|taps={taps}|vv={self.vv_blocks}"

    def train(self, mode: bool = True) -> AnomalyClip:
        """Train mode for the prompts only: the backbone always stays in eval mode.

        Either way the kept prediction-time text features are dropped (a fit runs between).
        """
        super().train(mode)
        self._text_cache = None
        self.backbone.eval()
        return self

    def setup_support(self, support: SupportSet) -> None:
        """Decide once whether the pixel losses need per-row weights: only when some support
        image has no pixel supervision (a defect without a mask). Deciding per batch would need
        a host sync every step and data-dependent control flow."""
        rows = pixel_supervision(support.labels, support.masks)
        self._pixel_weighted = not bool(rows.all()) if len(rows) else None

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [self.ctx_normal, self.ctx_abnormal, *self.deep_prompts]

    @torch.no_grad()
    def extract(self, images: Tensor) -> Features:
        """Vanilla CLS (B, D) and DPAM patch tokens of every tap (B, n_taps, L, D), projected.

        A tap without v-v tokens (``vv_blocks = 0`` or a tap before the first v-v block) gives its
        vanilla patch tokens.
        """
        tokens = self.backbone.forward_features(images, taps=self.taps, vv_blocks=self.vv_blocks)
        levels = [
            vv if vv is not None else vanilla
            for vv, vanilla in zip(tokens.patches_vv, tokens.patches, strict=True)
        ]
        patches = self.backbone.project_tokens(torch.stack(levels, dim=1))
        return {"cls": tokens.cls.float(), "patches_vv": patches.float()}

    def text_features(self) -> Tensor:
        """(2, D) normalised text features [normal, abnormal], differentiable in the prompts.

        With gradients on (training) they are recomputed on every call. Without (prediction)
        the result is kept and reused until a learnable token may have changed: it is dropped by
        ``train()``/``eval()`` and ``load_state_dict``, and its key holds each token's storage
        and in-place version counter (bumped by ``copy_`` and the unfused optimisers; fused ones
        do not bump it, hence the other two). A query batch then costs no text-encoder pass (12
        text layers: on a GPU about half of AnomalyCLIP's per-batch prediction time, all of it
        launch-bound); the features are the same tensor the pass would give.
        """
        if torch.is_grad_enabled():
            return self._encode_prompts()
        key = self._text_key()
        if self._text_cache is None or self._text_cache[0] != key:
            self._text_cache = (key, self._encode_prompts())
        return self._text_cache[1]

    def _text_key(self) -> tuple:
        """What the prompt text features depend on, besides the frozen text tower."""
        tensors = (self.ctx_normal, self.ctx_abnormal, *self.deep_prompts, self.token_embeddings)
        autocast = tuple(
            torch.is_autocast_enabled(kind) for kind in ("cpu", self.token_embeddings.device.type)
        )
        return (
            tuple((t.untyped_storage().data_ptr(), t.data_ptr(), t._version) for t in tensors),
            self.token_embeddings.device,
            autocast,
        )

    def _encode_prompts(self) -> Tensor:
        ctx = torch.stack([self.ctx_normal, self.ctx_abnormal]).to(self.token_embeddings.dtype)
        emb = self.token_embeddings
        emb = torch.cat([emb[:, :1], ctx, emb[:, 1 + self.n_ctx :]], dim=1)
        deep = list(self.deep_prompts) if len(self.deep_prompts) else None
        text = self.backbone.encode_text_tokens(emb, self.eot_indices, deep)
        return F.normalize(text.float(), dim=-1)

    def _logits(self, features: Features) -> tuple[Tensor, Tensor]:
        """Image logits (B, 2) and per-tap patch probabilities (B, n_taps, 2, L)."""
        text = self.text_features()
        cls = F.normalize(features["cls"].float(), dim=-1)
        image_logits = cls @ text.t() / self.temperature
        patches = F.normalize(features["patches_vv"].float(), dim=-1)
        probs = (patches @ text.t() / self.temperature).softmax(dim=-1)  # (B, n, L, 2)
        return image_logits, probs.transpose(-1, -2)

    def predict(self, features: Features) -> MethodOutput:
        """Image score softmax(cls . t / T)[abn]; map = sum over taps, upsampled and blurred."""
        with torch.no_grad():
            image_logits, probs = self._logits(features)
            # The per-tap map and the sum over taps are linear, so they commute with the bilinear
            # upsampling: combine on the patch grid, upsample once (same result, less memory).
            grid_map = ((probs[:, :, 1] + 1.0 - probs[:, :, 0]) / 2.0).sum(dim=1)  # (B, L)
            size = int(self.backbone.image_size)
            maps = upsample_maps(grid_map, self.backbone.grid_size, size)
            maps = gaussian_blur(maps, self.sigma)
            score = image_logits.softmax(dim=-1)[:, 1]
        return MethodOutput(image_score=score, anomaly_map=maps, class_logits=None)

    def training_loss(self, features: Features, labels: Tensor, masks: Tensor) -> dict[str, Tensor]:
        """Per tap focal + Dice(abn, gt) + Dice(norm, 1 - gt) on maps upsampled to the mask size
        (summed over taps, averaged over images), plus normal-vs-defect image cross-entropy.
        Defect images without a mask (all-zero mask) get the image cross-entropy only."""
        image_logits, probs = self._logits(features)
        b, n = probs.shape[:2]
        size = tuple(masks.shape[-2:])
        # Two prompts: p_norm = 1 - p_abn, and bilinear weights sum to 1, so upsampling p_abn alone
        # and taking 1 - it gives exactly the upsampled normal channel (half the work).
        p_abn = upsample_maps(probs[:, :, 1], self.backbone.grid_size, size).flatten(0, 1)
        p_norm = 1.0 - p_abn  # (B * n, H, W)
        hard = (masks.to(p_abn.device).float() > 0.5).unsqueeze(1).expand(b, n, *size)
        hard = hard.flatten(0, 1)  # (B * n, H, W) bool
        gt = hard.float()
        # Pixel losses only on rows with pixel supervision (None: all rows, the plain mean).
        rows = pixel_supervision(labels, masks).to(p_abn.device)
        weighted = self._pixel_weighted
        if weighted is None:  # not set up from a support set: decide from this batch
            weighted = not bool(rows.all())
        weight = rows.repeat_interleave(n) if weighted else None
        # Means over (image, tap) pairs times n = per-tap means summed over taps.
        # focal_loss(p_abn, gt) bit for bit, without the normal channel's zero terms.
        focal = binary_focal_loss(p_abn, hard, weight=weight) * n
        dice = (
            dice_loss(p_abn, gt, weight=weight) + dice_loss(p_norm, 1.0 - gt, weight=weight)
        ) * n
        image = F.cross_entropy(image_logits, (labels > 0).long().to(image_logits.device))
        loss = self.seg_loss_weight * (focal + dice) + image
        return {"loss": loss, "focal": focal.detach(), "dice": dice.detach(), "image_ce": image}


def _drop_text_cache(module: AnomalyClip, incompatible_keys) -> None:
    """``load_state_dict`` post-hook: loaded prompts invalidate the kept text features."""
    module._text_cache = None
