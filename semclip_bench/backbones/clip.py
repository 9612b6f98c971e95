"""Frozen open_clip ViT backbone shared by every CLIP-based method of the benchmark.

One wrapper, :class:`ClipBackbone`, runs the visual transformer block by block (reading open_clip's
modules directly, no forward hooks) so that methods can tap intermediate patch tokens, add the CLIP
Surgery v-v attention branch, re-encode WinCLIP windows, and run the text tower from learnable
token embeddings (AnomalyCLIP-style prompts). The weights are never modified.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import open_clip
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from semclip_bench.backbones.files import file_digest
from semclip_bench.backbones.loading import (
    RANDOM_INIT_SEED,
    create_model,
    is_local_file,
    quiet_root_logger,
)
from semclip_bench.errors import UserError

log = logging.getLogger(__name__)

#: Bumped when the numerics of the feature paths change, so feature caches keyed on
#: :meth:`BackboneSpec.key` are invalidated.
FEATURE_VERSION = "v1"


# --------------------------------------------------------------------------------------- spec
@dataclass(frozen=True)
class BackboneSpec:
    """Which backbone to build: open_clip model name, weights and input size.

    ``pretrained``: None = seeded random init; an open_clip tag (e.g. "laion400m_e32"); or a path
    to a local checkpoint file (plain state dict, or ``{"state_dict": ...}``; "module."/"model."
    or any wrapper prefix in front of the open_clip keys is stripped).
    ``image_size``: None = the model's native size; otherwise the position embeddings are
    interpolated to the new grid.
    """

    name: str = "semclip-vit-m16"
    pretrained: str | None = None
    image_size: int | None = None

    def key(self) -> str:
        """Stable identity for feature caches (weights file content hash, resolved image size)."""
        if self.pretrained is None:
            weights = f"random{RANDOM_INIT_SEED}"
        elif is_local_file(self.pretrained):
            weights = "file-" + file_digest(self.pretrained)
        else:
            weights = f"tag-{self.pretrained}"
        size = self.image_size if self.image_size is not None else _native_image_size(self.name)
        return f"{self.name}|{weights}|{size}|{FEATURE_VERSION}"


def _native_image_size(name: str) -> int | str:
    cfg = open_clip.get_model_config(name)
    if cfg is None:
        return "native"
    size = cfg.get("vision_cfg", {}).get("image_size", "native")
    return size if isinstance(size, int) else "x".join(str(s) for s in size)


# ------------------------------------------------------------------------------------ outputs
@dataclass
class VisualTokens:
    """Result of :meth:`ClipBackbone.forward_features`.

    ``cls``: (B, embed_dim) projected CLS of the vanilla path (== encode_image).
    ``patches``: per tap, (B, L, width) raw vanilla-path patch tokens (no CLS, no ln_post).
    ``patches_vv``: per tap, (B, L, width) raw v-v-stream patch tokens, or None where the tap
    precedes the first v-v block (or vv_blocks == 0).
    ``taps``: the 1-based block indices; ``grid``: (rows, cols) of the patch grid.
    """

    cls: Tensor
    patches: list[Tensor]
    patches_vv: list[Tensor | None]
    taps: tuple[int, ...]
    grid: tuple[int, int]


# ----------------------------------------------------------------------------------- building
def build_backbone(spec: BackboneSpec, device: str | torch.device = "cpu") -> ClipBackbone:
    """Build the frozen backbone described by ``spec`` on ``device``.

    Raises UserError for an unknown model name, an unknown or unreachable pretrained tag, or a
    checkpoint file that cannot be read or does not fit the architecture.
    """
    model = create_model(spec)
    return ClipBackbone(spec, model).to(device)


# ----------------------------------------------------------------------------------- backbone
class ClipBackbone(nn.Module):
    """Frozen open_clip model with the feature paths the methods need; see the module docstring.

    All image/text encoders run under ``torch.no_grad`` (pass ``grad=True`` to keep the graph).
    :meth:`project_tokens` and :meth:`encode_text_tokens` follow the ambient grad mode so that
    gradients reach trainable inputs (the weights themselves never require grad). Calling
    ``.train()`` keeps the backbone in eval mode.
    """

    def __init__(self, spec: BackboneSpec, model: nn.Module) -> None:
        super().__init__()
        visual = getattr(model, "visual", None)
        if not isinstance(visual, open_clip.transformer.VisionTransformer):
            raise UserError(
                f"backbone {spec.name}: only open_clip ViT towers are supported "
                f"(got {type(visual).__name__})"
            )
        if visual.attn_pool is not None or visual.pool_type != "tok":
            raise UserError(f"backbone {spec.name}: needs CLS-token pooling (no attentional pool)")
        self.spec = spec
        self.model = model
        for p in self.model.parameters():
            p.requires_grad_(False)
        super().train(False)

        with quiet_root_logger():
            self.tokenizer = open_clip.get_tokenizer(spec.name)
        size = visual.image_size
        self.image_size: int = int(size[0] if isinstance(size, tuple | list) else size)
        pp = getattr(visual, "preprocess_cfg", {}) or {}
        self.mean: tuple[float, ...] = tuple(
            float(m) for m in pp.get("mean", open_clip.OPENAI_DATASET_MEAN)
        )
        self.std: tuple[float, ...] = tuple(
            float(s) for s in pp.get("std", open_clip.OPENAI_DATASET_STD)
        )
        patch = visual.patch_size
        self.patch_size: int = int(patch[0] if isinstance(patch, tuple | list) else patch)
        self.grid_size: tuple[int, int] = (int(visual.grid_size[0]), int(visual.grid_size[1]))
        self.width: int = int(visual.conv1.out_channels)
        self.embed_dim: int = int(visual.output_dim)
        self.num_blocks: int = len(visual.transformer.resblocks)

    # ---------------------------------------------------------------- module plumbing
    def train(self, mode: bool = True) -> ClipBackbone:
        """The backbone is frozen: it always stays in eval mode."""
        return super().train(False)

    @property
    def device(self) -> torch.device:
        return self.model.visual.conv1.weight.device

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    def default_taps(self) -> tuple[int, ...]:
        """Four 1-based taps spread over the depth: 12 blocks -> (3, 6, 9, 12)."""
        n = self.num_blocks
        taps = sorted({min(n, max(1, round(n * i / 4))) for i in range(1, 5)})
        return tuple(taps)

    def _prep(self, images: Tensor) -> Tensor:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be (B, 3, H, W), got {tuple(images.shape)}")
        expect = tuple(int(s) for s in _pair(self.model.visual.image_size))
        if tuple(images.shape[-2:]) != expect:
            raise ValueError(
                f"images are {tuple(images.shape[-2:])}, backbone {self.spec.name} expects {expect}"
            )
        return images.to(device=self.device, dtype=self.model.visual.conv1.weight.dtype)

    def _run_block(self, block: nn.Module, x: Tensor) -> Tensor:
        """Run one visual residual block on batch-first ``x`` whatever the tower's layout."""
        if self._visual_batch_first:
            return block(x)
        return block(x.transpose(0, 1)).transpose(0, 1)

    @property
    def _visual_batch_first(self) -> bool:
        return bool(getattr(self.model.visual.transformer, "batch_first", True))

    @property
    def _text_batch_first(self) -> bool:
        return bool(getattr(self._text_transformer(), "batch_first", True))

    # ---------------------------------------------------------------- image side
    def tokenize(self, texts: Sequence[str]) -> Tensor:
        """(T, context_length) token ids on the backbone's device."""
        return self.tokenizer(list(texts)).to(self.device)

    def encode_text(self, texts: Sequence[str], normalize: bool = True, *, grad: bool = False):
        """(T, embed_dim) text embeddings of ``texts`` (L2-normalised by default)."""
        with torch.set_grad_enabled(grad):
            return self.model.encode_text(self.tokenize(texts), normalize=normalize)

    def encode_image(self, images: Tensor, normalize: bool = False, *, grad: bool = False):
        """(B, embed_dim) image embeddings; identical to ``model.encode_image``."""
        with torch.set_grad_enabled(grad):
            return self.model.encode_image(self._prep(images), normalize=normalize)

    def _embed_tokens(self, images: Tensor) -> Tensor:
        """conv1 -> CLS + positional embedding -> patch dropout -> ln_pre: (B, 1+L, width)."""
        v = self.model.visual
        x = v.conv1(images)
        x = x.flatten(2).transpose(1, 2)
        cls = v.class_embedding.to(x.dtype).view(1, 1, -1).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1) + v.positional_embedding.to(x.dtype)
        x = v.patch_dropout(x)
        return v.ln_pre(x)

    def _vv_attention(self, block: nn.Module, x: Tensor) -> Tensor:
        """CLIP Surgery v-v branch of one block: ls_1(out_proj(softmax(v v^T s) v)) on ln_1(x)."""
        attn = block.attn
        if not isinstance(attn, nn.MultiheadAttention) or not getattr(
            attn, "_qkv_same_embed_dim", True
        ):
            raise UserError(f"backbone {self.spec.name}: v-v attention needs nn.MultiheadAttention")
        y = block.ln_1(x)
        b, n, c = y.shape
        h = attn.num_heads
        w_v = attn.in_proj_weight[2 * c :]
        b_v = attn.in_proj_bias[2 * c :] if attn.in_proj_bias is not None else None
        v = F.linear(y, w_v, b_v).view(b, n, h, c // h).transpose(1, 2)  # (B, H, N, hd)
        # softmax(v v^T * hd**-0.5) v per head: SDPA with q = k = v and its default scale.
        o = F.scaled_dot_product_attention(v, v, v)
        o = o.transpose(1, 2).reshape(b, n, c)
        o = attn.out_proj(o)
        return block.ls_1(o)

    def _check_taps(self, taps: Sequence[int] | None) -> tuple[int, ...]:
        if taps is None:
            return self.default_taps()
        out = tuple(int(t) for t in taps)
        bad = [t for t in out if not 1 <= t <= self.num_blocks]
        if bad:
            raise UserError(f"taps {bad} outside 1..{self.num_blocks} (blocks of {self.spec.name})")
        return out

    def forward_features(
        self,
        images: Tensor,
        taps: Sequence[int] | None = None,
        vv_blocks: int = 0,
        *,
        grad: bool = False,
    ) -> VisualTokens:
        """Vanilla path (== encode_image) with patch tokens at ``taps`` and an optional v-v stream.

        ``vv_blocks``: the last ``vv_blocks`` blocks also feed the CLIP Surgery v-v branch; its
        stream starts from the residual entering the first of them and accumulates the v-v
        attention outputs (no MLP). The vanilla stream is untouched by it.
        """
        taps_t = self._check_taps(taps)
        if not 0 <= int(vv_blocks) <= self.num_blocks:
            raise UserError(f"vv_blocks={vv_blocks} outside 0..{self.num_blocks}")
        first_vv = self.num_blocks - int(vv_blocks)  # 0-based index of the first modified block
        want = set(taps_t)
        with torch.set_grad_enabled(grad):
            x = self._embed_tokens(self._prep(images))
            vv: Tensor | None = None
            by_block: dict[int, Tensor] = {}
            by_block_vv: dict[int, Tensor] = {}
            for i, block in enumerate(self.model.visual.transformer.resblocks):
                if i >= first_vv:
                    if vv is None:
                        vv = x
                    vv = vv + self._vv_attention(block, x)
                x = self._run_block(block, x)
                if i + 1 in want:
                    by_block[i + 1] = x[:, 1:]
                    if vv is not None:
                        by_block_vv[i + 1] = vv[:, 1:]
            cls = self.project_tokens(x[:, 0])
        return VisualTokens(
            cls=cls,
            patches=[by_block[t] for t in taps_t],
            patches_vv=[by_block_vv.get(t) for t in taps_t],
            taps=taps_t,
            grid=self.grid_size,
        )

    def project_tokens(self, tokens: Tensor) -> Tensor:
        """ln_post then the visual projection: (..., width) -> (..., embed_dim).

        Follows the ambient grad mode so gradients can reach trainable inputs.
        """
        v = self.model.visual
        out = v.ln_post(tokens)
        return out @ v.proj.to(out.dtype) if v.proj is not None else out

    def encode_token_subsets(
        self,
        images: Tensor,
        subsets: Tensor,
        *,
        max_tokens: int = 1 << 16,
        grad: bool = False,
    ) -> Tensor:
        """WinCLIP window embeddings: (B, W, embed_dim) projected CLS of each re-encoded subset.

        ``subsets`` (W, n) indexes patch tokens 0..L-1 (row-major). Each subset, with the CLS token
        prepended, goes through the whole transformer after patch + position embedding and ln_pre;
        windows are processed in chunks of about ``max_tokens`` tokens to bound memory.
        """
        subsets = torch.as_tensor(subsets, dtype=torch.long, device=self.device)
        n_patches = self.grid_size[0] * self.grid_size[1]
        if subsets.ndim != 2 or subsets.shape[1] == 0:
            raise ValueError(f"subsets must be (W, n) with n >= 1, got {tuple(subsets.shape)}")
        if subsets.numel() and (subsets.min() < 0 or subsets.max() >= n_patches):
            raise ValueError(f"subset indices must lie in 0..{n_patches - 1}")
        with torch.set_grad_enabled(grad):
            x = self._embed_tokens(self._prep(images))  # (B, 1+L, C); ln_pre is per-token
            b, _, c = x.shape
            n_win, n = subsets.shape
            cls, patches = x[:, :1], x[:, 1:]
            chunk = max(1, max_tokens // max(1, b * (n + 1)))
            outs = []
            for s in range(0, n_win, chunk):
                idx = subsets[s : s + chunk]  # (w, n)
                w = idx.shape[0]
                tok = patches[:, idx.reshape(-1)].view(b, w, n, c)
                seq = torch.cat([cls.unsqueeze(1).expand(b, w, 1, c), tok], dim=2)
                seq = seq.reshape(b * w, n + 1, c)
                for block in self.model.visual.transformer.resblocks:
                    seq = self._run_block(block, seq)
                outs.append(self.project_tokens(seq[:, 0]).view(b, w, -1))
            return torch.cat(outs, dim=1)

    # ---------------------------------------------------------------- text side
    def _text_tower(self) -> nn.Module:
        return getattr(self.model, "text", self.model)

    def _text_transformer(self) -> nn.Module:
        return self._text_tower().transformer

    @property
    def text_width(self) -> int:
        """Width of the text transformer (size of token embeddings)."""
        return int(self._text_tower().positional_embedding.shape[-1])

    def token_embeddings(self, tokens: Tensor) -> Tensor:
        """(T, ctx, text_width) token embeddings (no positional embedding) of token ids."""
        return self._text_tower().token_embedding(tokens.to(self.device))

    def encode_text_tokens(
        self,
        token_embeddings: Tensor,
        eot_indices: Tensor,
        deep_prompts: Sequence[Tensor | None] | None = None,
    ) -> Tensor:
        """Text tower from token embeddings: (T, ctx, width) -> (T, embed_dim), not normalised.

        Adds the positional embedding, applies the model's (causal) attention mask, ln_final, takes
        the token at ``eot_indices`` and applies the text projection. Gradients flow to
        ``token_embeddings`` and ``deep_prompts`` (ambient grad mode).

        ``deep_prompts[j]`` ((n, width) or (T, n, width)) replaces the n hidden tokens right after
        SOS (positions 1..n) at the INPUT of text block j+1, 0-based, i.e. from the second block on
        (the first block's prompt tokens are those inside ``token_embeddings``); None entries skip a
        block. So at most ``num_text_blocks - 1`` deep prompts.
        """
        tower = self._text_tower()
        blocks = tower.transformer.resblocks
        if token_embeddings.ndim != 3:
            raise ValueError(
                f"token_embeddings must be (T, ctx, width), got {token_embeddings.shape}"
            )
        t, ctx, _ = token_embeddings.shape
        deep = list(deep_prompts or [])
        if len(deep) > len(blocks) - 1:
            raise ValueError(
                f"{len(deep)} deep prompts for {len(blocks)} text blocks (max {len(blocks) - 1})"
            )
        cast = tower.transformer.get_cast_dtype()
        x = token_embeddings.to(self.device, cast) + tower.positional_embedding[:ctx].to(cast)
        mask = tower.attn_mask
        if mask is not None:
            mask = mask[:ctx, :ctx]
        for i, block in enumerate(blocks):
            if 1 <= i <= len(deep) and deep[i - 1] is not None:
                p = deep[i - 1].to(x.dtype)
                p = p.unsqueeze(0).expand(t, -1, -1) if p.ndim == 2 else p
                x = torch.cat([x[:, :1], p, x[:, 1 + p.shape[1] :]], dim=1)
            x = self._run_text_block(block, x, mask)
        x = tower.ln_final(x)
        eot = torch.as_tensor(eot_indices, dtype=torch.long, device=x.device)
        pooled = x[torch.arange(t, device=x.device), eot]
        proj = tower.text_projection
        if proj is None:
            return pooled
        if isinstance(proj, nn.Linear):
            return proj(pooled)
        return pooled @ proj.to(pooled.dtype)

    def _run_text_block(self, block: nn.Module, x: Tensor, mask: Tensor | None) -> Tensor:
        if is_vmapped(x) and _plain_self_attention_block(block):
            return _text_block_under_vmap(block, x, mask)
        if self._text_batch_first:
            return block(x, attn_mask=mask)
        return block(x.transpose(0, 1), attn_mask=mask).transpose(0, 1)


def is_vmapped(t: Tensor) -> bool:
    """Whether ``t`` is being batched by ``torch.func.vmap`` (a stacked fit's member dimension,
    ``models/stacked.py``). Some ops are batched badly there, and their callers pick a form
    that batches well; outside vmap nothing changes (the exact rows of fits trained alone)."""
    return bool(torch._C._functorch.is_batchedtensor(t))


def _plain_self_attention_block(block: nn.Module) -> bool:
    """An open_clip text block of the standard CLIP form (what :func:`_text_block_under_vmap`
    re-runs): pre-norm self-attention through ``nn.MultiheadAttention`` and an MLP."""
    needed = ("ln_1", "attn", "ls_1", "ln_2", "mlp", "ls_2")
    return (
        all(hasattr(block, n) for n in needed)
        and not hasattr(block, "ln_1_kv")
        and isinstance(block.attn, nn.MultiheadAttention)
        and block.attn._qkv_same_embed_dim
    )


def _text_block_under_vmap(block: nn.Module, x: Tensor, mask: Tensor | None) -> Tensor:
    """One text block on (T, ctx, width) inside vmap, the same arithmetic as ``block(x)``.

    ``nn.MultiheadAttention(batch_first=True)`` transposes its input to (ctx, T, width) as a
    view. With that non-contiguous input (which requires grad: the learnable prompts), matmul
    does not fold it into one matrix product but expands the projection weight to one copy per
    position; under vmap those copies become real (members x ctx of them, gigabytes for a large
    text tower). Here the input is made contiguous in that layout first, so the projections are
    single matrix products.
    """
    attn = block.attn
    y = block.ln_1(x).transpose(0, 1).contiguous()  # (ctx, T, width), as MHA computes in
    out = F.multi_head_attention_forward(
        y,
        y,
        y,
        attn.embed_dim,
        attn.num_heads,
        attn.in_proj_weight,
        attn.in_proj_bias,
        attn.bias_k,
        attn.bias_v,
        attn.add_zero_attn,
        attn.dropout,
        attn.out_proj.weight,
        attn.out_proj.bias,
        training=attn.training,
        need_weights=False,
        attn_mask=None if mask is None else mask.to(y.dtype),
    )[0]
    x = x + block.ls_1(out.transpose(0, 1))
    return x + block.ls_2(block.mlp(block.ln_2(x)))


def _pair(v: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(v, int):
        return (v, v)
    return (int(v[0]), int(v[1]))


def count_parameters(model: nn.Module) -> int:
    """Number of parameters (for reports)."""
    return sum(p.numel() for p in model.parameters())


__all__ = [
    "FEATURE_VERSION",
    "BackboneSpec",
    "ClipBackbone",
    "VisualTokens",
    "build_backbone",
    "count_parameters",
    "is_vmapped",
]
