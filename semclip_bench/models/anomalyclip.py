"""AnomalyCLIP-style baseline: object-agnostic learnable prompts on a frozen CLIP with DPAM.

Re-implementation of Zhou et al., "AnomalyCLIP" (ICLR 2024), from the facts in
``shared/design/REFERENCE.md``, trained on an episode's support set (K normal + K per defect type,
with masks: the supervision SEM-CLIP gets) instead of on an auxiliary dataset.

- Two prompts, "[V1..Vn] object." (normal) and "[W1..Wn] damaged object." (abnormal). The n
  placeholder words are replaced by learnable context vectors in the token-embedding space.
- Optional learnable tokens in the early text layers ("deep" / compound prompts): for
  ``deep_prompt_depth = J`` the text layers 2..J get ``deep_prompt_length`` learnable tokens that
  replace the hidden states right after SOS at their input (layer 1's learnable tokens are the
  context vectors themselves), as in the public code where depth 9 means 8 extra tensors.
- Vision: CLS from the vanilla path (image score); patch tokens from the v-v (DPAM) path at every
  tap (segmentation), both through ``ln_post`` + projection.
- Map per tap = (softmax(cos/T)[abn] + 1 - softmax(cos/T)[norm]) / 2, summed over taps (as
  published; a map in [0, n_taps]), upsampled bilinearly to the input size, Gaussian blur sigma 4.
  Image score = softmax(cls . text / T)[abn].
- Loss = ``seg_loss_weight`` x sum over taps of
  [focal(p, gt) + dice(p_abn, gt) + dice(p_norm, 1 - gt)]
  + cross-entropy of the image logits on normal vs defect (public code: weight 4).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from semclip_bench.errors import UserError
from semclip_bench.models.base import Features, FewShotMethod, MethodOutput

#: State words of the two object-agnostic prompts (after the learnable context words).
NORMAL_WORDS = "object."
ABNORMAL_WORDS = "damaged object."
#: Placeholder word whose token embeddings are replaced by the learnable context vectors.
PLACEHOLDER = "X"


def _text_tower(model: nn.Module) -> tuple[nn.Embedding, int]:
    """Token embedding and number of transformer layers of an open_clip model's text tower."""
    tower = model if hasattr(model, "token_embedding") else getattr(model, "text", None)
    if tower is None or not hasattr(tower, "token_embedding"):
        raise UserError("anomalyclip needs an open_clip CLIP text tower with token embeddings")
    blocks = tower.transformer.resblocks
    return tower.token_embedding, len(blocks)


def _gaussian_blur(maps: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian blur of (B, H, W) maps, radius 4 sigma (as scipy), reflect padding."""
    if sigma <= 0:
        return maps
    h, w = maps.shape[-2:]
    radius = min(int(4.0 * sigma + 0.5), h - 1, w - 1)
    x = torch.arange(-radius, radius + 1, dtype=maps.dtype, device=maps.device)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    kernel = kernel / kernel.sum()
    out = F.pad(maps.unsqueeze(1), (radius, radius, radius, radius), mode="reflect")
    out = F.conv2d(out, kernel.view(1, 1, 1, -1))
    out = F.conv2d(out, kernel.view(1, 1, -1, 1))
    return out.squeeze(1)


def _focal(prob: Tensor, target: Tensor, gamma: float = 2.0, smooth: float = 1e-5) -> Tensor:
    """Focal loss of (B, n, H, W) abnormal-probability maps: mean per tap, summed over taps.

    AnomalyCLIP's two-channel form: the probability of the true class is ``p`` where gt = 1 and
    ``1 - p`` (the normal channel) where gt = 0; ``smooth`` keeps the log finite.
    """
    pt = torch.where(target > 0.5, prob, 1.0 - prob) + smooth
    loss = -(1.0 - pt).clamp_min(0.0).pow(gamma) * pt.log()
    return loss.mean(dim=(0, 2, 3)).sum()


def _dice(prob: Tensor, target: Tensor, smooth: float = 1.0) -> Tensor:
    """Soft Dice loss 1 - (2|P.G| + s) / (|P| + |G| + s) of (B, n, H, W) maps per image and tap,
    averaged over images and summed over taps."""
    p, g = prob.flatten(2), target.flatten(2)
    dice = 1.0 - (2.0 * (p * g).sum(-1) + smooth) / (p.sum(-1) + g.sum(-1) + smooth)
    return dice.mean(dim=0).sum()


class AnomalyClip(FewShotMethod):
    """AnomalyCLIP-style learnable object-agnostic prompts + DPAM, fitted on the support set.

    Options (mirrored in ``configs/methods/anomalyclip.yaml``):
    ``n_ctx``: learnable context words per prompt (published 12).
    ``deep_prompt_depth``: text layers with learnable tokens, counting the input layer (published 9;
    0 or 1 = no deep tokens; clamped to the text depth).
    ``deep_prompt_length``: learnable tokens per deep layer (published 4; at most ``n_ctx`` so that
    they overwrite context positions only).
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
    ``seed``: seed of the N(0, 0.02) initialisation of the learnable tokens.
    """

    name = "anomalyclip"
    supervision = "normal+defects"
    classifies = False
    trainable = True

    def __init__(
        self,
        backbone: nn.Module,
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
        seed: int = 0,
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
        self.n_ctx = int(n_ctx)
        self.temperature = float(temperature)
        self.sigma = float(sigma)
        self.seg_loss_weight = float(seg_loss_weight)
        self.seed = int(seed)

        token_embedding, text_layers = _text_tower(backbone.model)
        width = int(token_embedding.embedding_dim)
        # Deep tokens go to the input of text layers 2..depth (layer 1 holds the context vectors).
        n_deep = max(0, min(int(deep_prompt_depth), text_layers) - 1)
        if n_deep and not 1 <= int(deep_prompt_length) <= self.n_ctx:
            raise UserError(
                f"anomalyclip option 'deep_prompt_length' must be in 1..n_ctx ({self.n_ctx})"
            )
        self.deep_prompt_depth = n_deep + 1 if n_deep else 0
        self.deep_prompt_length = int(deep_prompt_length) if n_deep else 0

        # Frozen token embeddings of "X X ... X object." / "X X ... X damaged object.".
        prefix = " ".join([PLACEHOLDER] * self.n_ctx)
        ids = backbone.tokenizer([f"{prefix} {NORMAL_WORDS}", f"{prefix} {ABNORMAL_WORDS}"])
        ids = torch.as_tensor(ids, dtype=torch.long)
        placeholder = ids[:, 1 : 1 + self.n_ctx]
        if not bool((placeholder == placeholder[0, 0]).all()):
            raise UserError("anomalyclip: the tokenizer does not give one token per placeholder")
        device = token_embedding.weight.device
        with torch.no_grad():
            embeddings = token_embedding(ids.to(device)).detach().float()
        self.register_buffer("token_ids", ids.to(device), persistent=False)
        self.register_buffer("token_embeddings", embeddings, persistent=False)
        # EOT = highest token id, as CLIP pools the text (argmax of the ids).
        self.register_buffer("eot_indices", ids.argmax(dim=-1).to(device), persistent=False)

        generator = torch.Generator().manual_seed(self.seed)

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
        """Train mode for the prompts only: the backbone always stays in eval mode."""
        super().train(mode)
        self.backbone.eval()
        return self

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [self.ctx_normal, self.ctx_abnormal, *self.deep_prompts]

    @torch.no_grad()
    def extract(self, images: Tensor) -> Features:
        """Vanilla CLS and DPAM patch tokens of every tap, projected into the joint space."""
        tokens = self.backbone.forward_features(images, taps=self.taps, vv_blocks=self.vv_blocks)
        levels = [
            vv if vv is not None else vanilla
            for vv, vanilla in zip(tokens.patches_vv, tokens.patches, strict=True)
        ]
        patches = self.backbone.project_tokens(torch.stack(levels, dim=1))
        return {"cls": tokens.cls.float(), "patches_vv": patches.float()}

    def text_features(self) -> Tensor:
        """(2, D) normalised text features [normal, abnormal], differentiable in the prompts."""
        ctx = torch.stack([self.ctx_normal, self.ctx_abnormal]).to(self.token_embeddings.dtype)
        emb = self.token_embeddings
        emb = torch.cat([emb[:, :1], ctx, emb[:, 1 + self.n_ctx :]], dim=1)
        deep = list(self.deep_prompts) if len(self.deep_prompts) else None
        text = self.backbone.encode_text_tokens(emb, self.eot_indices, deep)
        return F.normalize(text.float(), dim=-1)

    def _logits(self, features: Features) -> tuple[Tensor, Tensor]:
        """Image logits (B, 2) and per-tap patch probabilities (B, n_taps, 2, gh, gw)."""
        text = self.text_features()
        cls = F.normalize(features["cls"].float(), dim=-1)
        image_logits = cls @ text.t() / self.temperature
        patches = F.normalize(features["patches_vv"].float(), dim=-1)
        probs = (patches @ text.t() / self.temperature).softmax(dim=-1)  # (B, n, L, 2)
        b, n, length, _ = probs.shape
        gh, gw = self._grid(length)
        probs = probs.transpose(-1, -2).reshape(b, n, 2, gh, gw)
        return image_logits, probs

    def _grid(self, length: int) -> tuple[int, int]:
        grid = tuple(int(g) for g in self.backbone.grid_size)
        if grid[0] * grid[1] == length:
            return grid
        side = math.isqrt(length)
        if side * side != length:
            raise ValueError(f"cannot arrange {length} patch tokens on a grid")
        return side, side

    def _output_size(self) -> tuple[int, int]:
        size = self.backbone.image_size
        return (int(size), int(size)) if isinstance(size, int) else tuple(int(s) for s in size)

    def predict(self, features: Features) -> MethodOutput:
        """Image score softmax(cls . t / T)[abn]; map = sum over taps, upsampled and blurred."""
        with torch.no_grad():
            image_logits, probs = self._logits(features)
            # The layer map and the sum over taps are linear, so they commute with the bilinear
            # upsampling: combine on the patch grid, upsample once (same result, less memory).
            layer_maps = (probs[:, :, 1] + 1.0 - probs[:, :, 0]) / 2.0
            grid_map = layer_maps.sum(dim=1, keepdim=True)
            maps = F.interpolate(grid_map, size=self._output_size(), mode="bilinear").squeeze(1)
            maps = _gaussian_blur(maps, self.sigma)
            score = image_logits.softmax(dim=-1)[:, 1]
        return MethodOutput(image_score=score, anomaly_map=maps, class_logits=None)

    def training_loss(self, features: Features, labels: Tensor, masks: Tensor) -> dict[str, Tensor]:
        """Per-tap focal + two Dice terms on upsampled maps, plus normal-vs-defect cross-entropy."""
        image_logits, probs = self._logits(features)
        b, n = probs.shape[:2]
        size = masks.shape[-2:]
        up = F.interpolate(probs.reshape(b * n, 2, *probs.shape[-2:]), size=size, mode="bilinear")
        up = up.reshape(b, n, 2, *size)
        gt = (masks.float() > 0.5).float().unsqueeze(1).expand(b, n, *size)
        p_norm, p_abn = up[:, :, 0], up[:, :, 1]
        focal = _focal(p_abn, gt)
        dice = _dice(p_abn, gt) + _dice(p_norm, 1.0 - gt)
        seg = focal + dice
        image = F.cross_entropy(image_logits, (labels > 0).long().to(image_logits.device))
        loss = self.seg_loss_weight * seg + image
        return {"loss": loss, "focal": focal.detach(), "dice": dice.detach(), "image_ce": image}
