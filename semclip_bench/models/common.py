"""Tensor helpers shared by the methods: smoothing, resizing, segmentation losses, CLIP scores.

Everything here is vectorised (no Python loops over pixels, patches or images), works on any device
and dtype, and is differentiable where it makes sense, so that trainable heads can reuse it.
"""

from __future__ import annotations

import functools
import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from semclip_bench.backbones.clip import is_vmapped

PadMode = Literal["reflect", "mirror", "nearest", "constant"]


# ----------------------------------------------------------------------------- smoothing / resizing
def gaussian_kernel1d(
    sigma: float, truncate: float = 4.0, *, dtype: torch.dtype = torch.float32, device=None
) -> Tensor:
    """Normalised 1-D Gaussian of standard deviation ``sigma``, radius ``int(truncate*sigma+0.5)``.

    The radius rule is ``scipy.ndimage.gaussian_filter``'s, so both blur identically.
    """
    radius = int(truncate * float(sigma) + 0.5)
    x = torch.arange(-radius, radius + 1, dtype=torch.float64, device=device)
    kernel = torch.exp(-0.5 * (x / float(sigma)) ** 2)
    return (kernel / kernel.sum()).to(dtype)


def _pad_index(n: int, radius: int, mode: PadMode, device) -> Tensor:
    """Source indices of a length-``n`` axis padded by ``radius`` on both sides (any radius)."""
    idx = torch.arange(-radius, n + radius, device=device)
    if mode == "reflect":  # scipy "reflect" (half-sample symmetric): d c b a | a b c d | d c b a
        m = idx.remainder(2 * n)
        return torch.where(m < n, m, 2 * n - 1 - m)
    if mode == "mirror":  # scipy "mirror" / torch "reflect": d c b | a b c d | c b a
        if n == 1:
            return torch.zeros_like(idx)
        m = idx.remainder(2 * n - 2)
        return torch.where(m < n, m, 2 * n - 2 - m)
    if mode == "nearest":
        return idx.clamp(0, n - 1)
    raise ValueError(f"unknown padding mode {mode!r}")


def gaussian_blur(
    maps: Tensor, sigma: float, *, truncate: float = 4.0, mode: PadMode = "reflect"
) -> Tensor:
    """Gaussian-smooth the last two dimensions of ``maps`` (..., H, W) with std ``sigma`` pixels.

    Separable: one 1-D convolution along W, then along H, for all leading dimensions at once.
    ``mode`` is the border rule with scipy's names; the default ``"reflect"`` (half-sample
    symmetric) reproduces ``scipy.ndimage.gaussian_filter(x, sigma)`` per map. ``"constant"``
    pads with zeros. ``sigma <= 0`` returns ``maps`` unchanged.
    """
    if sigma <= 0:
        return maps
    if maps.dim() < 2:
        raise ValueError(f"gaussian_blur needs (..., H, W) maps, got shape {tuple(maps.shape)}")
    work_dtype = maps.dtype if maps.dtype in (torch.float32, torch.float64) else torch.float32
    kernel = gaussian_kernel1d(sigma, truncate, dtype=work_dtype, device=maps.device)
    radius = (kernel.numel() - 1) // 2
    lead = maps.shape[:-2]
    h, w = maps.shape[-2:]
    x = maps.reshape(-1, 1, h, w).to(work_dtype)
    if mode == "constant":
        x = F.conv2d(x, kernel.view(1, 1, 1, -1), padding=(0, radius))
        x = F.conv2d(x, kernel.view(1, 1, -1, 1), padding=(radius, 0))
    else:
        x = x.index_select(3, _pad_index(w, radius, mode, maps.device))
        x = F.conv2d(x, kernel.view(1, 1, 1, -1))
        x = x.index_select(2, _pad_index(h, radius, mode, maps.device))
        x = F.conv2d(x, kernel.view(1, 1, -1, 1))
    return x.reshape(*lead, h, w).to(maps.dtype)


def upsample_maps(
    maps: Tensor, grid: tuple[int, int], size: tuple[int, int] | int, mode: str = "bilinear"
) -> Tensor:
    """Resize token maps (..., L) laid out row-major on ``grid`` = (gh, gw) to (..., H, W).

    ``L`` must equal gh * gw (patch tokens without CLS). Bilinear with ``align_corners=False``,
    i.e. every patch value sits at its patch centre, the standard for CLIP anomaly maps.
    """
    gh, gw = grid
    if maps.shape[-1] != gh * gw:
        raise ValueError(f"maps have {maps.shape[-1]} tokens, grid {grid} needs {gh * gw}")
    size = (size, size) if isinstance(size, int) else tuple(size)
    lead = maps.shape[:-1]
    x = maps.reshape(-1, 1, gh, gw)
    if x.dtype not in (torch.float32, torch.float64):
        x = x.float()
    if mode == "bilinear" and (gh, gw) != size and is_vmapped(maps):
        # Inside a stacked fit, vmap runs F.interpolate through its decomposition into
        # indexing, whose backward (an index_put, sorted under deterministic CUDA) is slow. The
        # same resize as two products with the bilinear
        # weight matrices is fast and deterministic; it differs from F.interpolate only in the
        # rounding of its sums (stacking's bound allows that: PROTOCOL.md).
        # Both products are written as plain 2-D ones so that vmap folds the members into
        # their rows (a broadcast matmul would copy the weights once per map).
        rows = _bilinear_weights(gh, size[0], x.device, x.dtype)  # (H, gh)
        cols = _bilinear_weights(gw, size[1], x.device, x.dtype)  # (W, gw)
        n = x.shape[0]
        y = (x.reshape(n * gh, gw) @ cols.t()).reshape(n, gh, size[1])
        z = y.transpose(1, 2).reshape(n * size[1], gh) @ rows.t()  # (n * W, H)
        return z.reshape(n, size[1], size[0]).transpose(1, 2).reshape(*lead, *size).to(maps.dtype)
    if (gh, gw) != size:
        kwargs = {"align_corners": False} if mode in ("bilinear", "bicubic") else {}
        x = F.interpolate(x, size=size, mode=mode, **kwargs)
    return x.reshape(*lead, *size).to(maps.dtype)


@functools.lru_cache(maxsize=32)
def _bilinear_weights(n_in: int, n_out: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """(n_out, n_in) weights of 1-D bilinear resizing as ``F.interpolate`` computes it
    (``align_corners=False``, size given): output i samples the input at (i + 0.5) n_in / n_out
    - 0.5, clamped at 0, between its two neighbours (the last input repeats past the edge).
    Cached: built once per shape and device (a host-to-device copy each step would wait for the
    device), never modified."""
    source = ((torch.arange(n_out, dtype=torch.float64) + 0.5) * (n_in / n_out) - 0.5).clamp(min=0)
    low = source.floor().long().clamp(max=n_in - 1)
    high = (low + 1).clamp(max=n_in - 1)
    frac = source - low
    weights = torch.zeros(n_out, n_in, dtype=torch.float64)
    rows = torch.arange(n_out)
    weights.index_put_((rows, low), 1 - frac, accumulate=True)
    weights.index_put_((rows, high), frac, accumulate=True)
    return weights.to(device, dtype)


def downsample_masks(masks: Tensor, grid: tuple[int, int]) -> Tensor:
    """Area fraction of each patch covered by the mask: (..., H, W) {0, 1} -> (..., gh * gw).

    Adaptive average pooling, so a small defect keeps a soft target instead of vanishing.
    """
    lead = masks.shape[:-2]
    h, w = masks.shape[-2:]
    pooled = F.adaptive_avg_pool2d(masks.reshape(-1, 1, h, w).float(), grid)
    return pooled.reshape(*lead, grid[0] * grid[1])


# ----------------------------------------------------------------------------- losses
def focal_loss(
    probs: Tensor,
    target: Tensor,
    gamma: float = 2.0,
    *,
    from_logits: bool = False,
    soft_classes: bool = False,
    weight: Tensor | None = None,
    eps: float = 1e-6,
) -> Tensor:
    """Focal loss (Lin et al. 2017) ``-sum_c q_c (1 - p_c)^gamma log p_c``, averaged over elements.

    Layouts (``S`` = any spatial shape, possibly empty), chosen from ``target``:

    * integer ``target`` (B, *S): multi-class, ``probs`` (B, C, *S) class probabilities over
      dim 1 (logits with ``from_logits=True``; then a log-softmax is used);
    * float ``target`` (B, C, *S) with ``soft_classes=True``: a class distribution per element
      (soft targets, e.g. patch area fractions), ``probs`` as above;
    * float ``target`` with ``probs``' shape (default): binary, ``probs`` = probability of the
      positive class (its logit with ``from_logits=True``), ``target`` in [0, 1]; treated as the
      two-class case [1 - p, p], the APRIL-GAN / AnomalyCLIP use.

    ``weight`` (B,) optionally weights each item (0 drops an image); the mean then runs over the
    weighted elements. ``gamma = 0`` gives cross-entropy. Probabilities are clamped to
    [eps, 1] before the log.
    """
    if not target.dtype.is_floating_point:
        if target.dim() != probs.dim() - 1:
            raise ValueError(
                f"focal_loss: class-id target {tuple(target.shape)} needs probs (B, C, ...), "
                f"got {tuple(probs.shape)}"
            )
        q = F.one_hot(target.long(), probs.shape[1]).movedim(-1, 1).to(probs.dtype)
    elif target.shape != probs.shape:
        raise ValueError(
            f"focal_loss: target {tuple(target.shape)} does not fit probs {tuple(probs.shape)}"
        )
    elif soft_classes:
        q = target.to(probs.dtype)
    else:
        p = torch.sigmoid(probs) if from_logits else probs
        probs = torch.stack([1 - p, p], dim=1)
        q = torch.stack([1 - target, target], dim=1).to(probs.dtype)
        from_logits = False
    if from_logits:
        log_p = F.log_softmax(probs, dim=1)
        p = log_p.exp()
    else:
        p = probs.clamp(eps, 1.0)
        log_p = p.log()
    per_elem = -(q * (1 - p).pow(gamma) * log_p).sum(dim=1)  # (B, *S)
    return _mean_per_item(per_elem, weight, eps)


def binary_focal_loss(
    probs: Tensor,
    target: Tensor,
    gamma: float = 2.0,
    *,
    weight: Tensor | None = None,
    eps: float = 1e-6,
) -> Tensor:
    """:func:`focal_loss` of a binary probability map against a hard {0, 1} target, at half the
    work: the same value and the same gradient, bit for bit.

    ``probs`` (B, *S) float, the probability of the positive class; ``target`` (B, *S) bool.
    :func:`focal_loss` stacks both classes, ``[1 - p, p]``, and sums ``q_c (1 - p_c)^gamma
    log p_c`` over them; with a hard target one of the two ``q_c`` is 0 and the other 1, so its
    sum is the chosen class's term plus a product with 0 (a signed zero: ``p_c`` is clamped to
    [eps, 1], so every factor is finite), and multiplying by ``q_c = 1`` is exact. Here the chosen
    class's ``p_c`` is picked first (``torch.where``) and only its term is computed, with the
    same operations in the same order; in the backward the other class's gradient, a signed zero
    there, is a zero here, and adding a zero changes no sum (``tests/models/test_common.py``
    checks both bit for bit). AnomalyCLIP-style's full-resolution pixel loss spends most of its
    forward here (``docs/performance.md``, issue 23).
    """
    if target.dtype != torch.bool:
        raise ValueError(f"binary_focal_loss: target must be bool, got {target.dtype}")
    if target.shape != probs.shape:
        raise ValueError(
            f"binary_focal_loss: target {tuple(target.shape)} does not fit probs "
            f"{tuple(probs.shape)}"
        )
    p = torch.where(target, probs, 1 - probs).clamp(eps, 1.0)
    log_p = p.log()
    per_elem = -((1 - p).pow(gamma) * log_p)  # (B, *S)
    return _mean_per_item(per_elem, weight, eps)


def _mean_per_item(per_elem: Tensor, weight: Tensor | None, eps: float) -> Tensor:
    """Mean of (B, *S) per-element losses, each item weighted by ``weight`` (B,) when given."""
    per_elem = per_elem.reshape(per_elem.shape[0], -1)
    if weight is None:
        return per_elem.mean()
    w = weight.to(per_elem.dtype).reshape(-1, 1).expand_as(per_elem)
    return (per_elem * w).sum() / w.sum().clamp_min(eps)


def dice_loss(
    probs: Tensor, target: Tensor, *, smooth: float = 1.0, weight: Tensor | None = None
) -> Tensor:
    """Soft Dice loss per item, averaged: ``1 - (2 sum(p t) + s) / (sum p + sum t + s)``.

    ``probs`` and ``target`` (B, ...) same shape, values in [0, 1]; sums run over everything but
    the first dimension. ``smooth`` (s = 1, as in APRIL-GAN) keeps an empty target well defined:
    the loss then pushes the prediction to zero. ``weight`` (B,) optionally weights the items.
    """
    if probs.shape != target.shape:
        raise ValueError(f"dice_loss: shapes differ {tuple(probs.shape)} vs {tuple(target.shape)}")
    p = probs.reshape(probs.shape[0], -1)
    t = target.reshape(target.shape[0], -1).to(p.dtype)
    dice = (2 * (p * t).sum(1) + smooth) / (p.sum(1) + t.sum(1) + smooth)
    loss = 1 - dice
    if weight is None:
        return loss.mean()
    w = weight.to(loss.dtype)
    return (loss * w).sum() / w.sum().clamp_min(1e-6)


# ----------------------------------------------------------------------------- CLIP similarities
def cosine_logits(features: Tensor, text: Tensor, temperature: float = 0.07) -> Tensor:
    """``cos(features, text_c) / temperature``: (..., D) x (C, D) -> (..., C), both normalised."""
    return F.normalize(features, dim=-1) @ F.normalize(text, dim=-1).t() / temperature


def feature_surgery_similarity(
    tokens: Tensor, text: Tensor, cls: Tensor | None = None, *, weight_temperature: float = 2.0
) -> Tensor:
    """CLIP Surgery "feature surgery" similarity of patch tokens to C text embeddings.

    ``tokens`` (B, L, D) and ``text`` (C, D) are L2-normalised here; ``cls`` (B, D) the image
    embedding. CLIP Surgery forms ``feat_c = f * t_c * w_c`` channel-wise, subtracts the mean over
    classes (the redundant, class-common part) and sums over channels. With
    ``w_c = softmax_c(2 cos(cls, t_c)) / mean_c(...)`` (classes that dominate the whole image are
    damped) this is exactly ``w_c (f . t_c) - mean_c' w_c' (f . t_c')`` -- computed in that closed
    form, so the (B, L, C, D) product is never materialised. ``cls=None`` uses ``w_c = 1``
    (plain cosine minus its class mean). Returns (B, L, C).

    Note: subtracting a class-constant term does not change a softmax over classes; with a softmax
    the surgery acts through ``w`` only.
    """
    f = F.normalize(tokens, dim=-1)
    t = F.normalize(text, dim=-1).to(f.dtype)
    sim = f @ t.t()  # (B, L, C)
    if cls is not None:
        prob = (weight_temperature * (F.normalize(cls, dim=-1).to(f.dtype) @ t.t())).softmax(-1)
        w = prob / prob.mean(-1, keepdim=True)  # (B, C)
        sim = sim * w.unsqueeze(1)
    return sim - sim.mean(-1, keepdim=True)


def harmonic_mean(values: Tensor, dim: int, eps: float = 1e-12) -> Tensor:
    """Harmonic mean along ``dim`` of positive values (WinCLIP's aggregation)."""
    n = values.shape[dim]
    return n / (1.0 / values.clamp_min(eps)).sum(dim)


def grid_side(n_tokens: int) -> tuple[int, int]:
    """The square grid of ``n_tokens`` patch tokens; ValueError when it is not a square."""
    side = math.isqrt(n_tokens)
    if side * side != n_tokens:
        raise ValueError(f"{n_tokens} tokens do not form a square grid")
    return side, side


__all__ = [
    "binary_focal_loss",
    "cosine_logits",
    "dice_loss",
    "downsample_masks",
    "feature_surgery_similarity",
    "focal_loss",
    "gaussian_blur",
    "gaussian_kernel1d",
    "grid_side",
    "harmonic_mean",
    "upsample_maps",
]
