"""Shared tensor helpers: blur vs scipy, resizing, focal/dice on hand-computed values, surgery."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter

from semclip_bench.models.common import (
    binary_focal_loss,
    cosine_logits,
    dice_loss,
    downsample_masks,
    feature_surgery_similarity,
    focal_loss,
    gaussian_blur,
    gaussian_kernel1d,
    harmonic_mean,
    upsample_maps,
)


# ----------------------------------------------------------------------------- gaussian blur
def test_gaussian_blur_impulse_matches_scipy() -> None:
    impulse = np.zeros((61, 61), dtype=np.float64)
    impulse[30, 30] = 1.0
    ours = gaussian_blur(torch.from_numpy(impulse)[None], 4.0)[0].numpy()
    ref = gaussian_filter(impulse, sigma=4.0)
    np.testing.assert_allclose(ours, ref, atol=1e-12)
    assert ours.sum() == pytest.approx(1.0)
    # The impulse response is the separable Gaussian: peak = k0^2 for the 1-D kernel's centre k0.
    k = gaussian_kernel1d(4.0, dtype=torch.float64)
    assert ours[30, 30] == pytest.approx(float(k[k.numel() // 2] ** 2))


@pytest.mark.parametrize("mode", ["reflect", "mirror", "nearest", "constant"])
@pytest.mark.parametrize("sigma", [0.7, 2.0, 4.0])
def test_gaussian_blur_matches_scipy_at_borders(mode: str, sigma: float) -> None:
    rng = np.random.default_rng(0)
    maps = rng.random((3, 13, 17))  # smaller than the kernel: the padding wraps more than once
    ours = gaussian_blur(torch.from_numpy(maps), sigma, mode=mode).numpy()  # type: ignore[arg-type]
    ref = np.stack([gaussian_filter(m, sigma=sigma, mode=mode) for m in maps])
    np.testing.assert_allclose(ours, ref, atol=1e-10)


def test_gaussian_blur_keeps_shape_dtype_and_zero_sigma() -> None:
    maps = torch.rand(2, 3, 8, 9)
    out = gaussian_blur(maps, 1.5)
    assert out.shape == maps.shape and out.dtype == maps.dtype
    assert torch.equal(gaussian_blur(maps, 0.0), maps)
    assert torch.allclose(gaussian_blur(torch.ones(1, 8, 8), 3.0), torch.ones(1, 8, 8))


# ----------------------------------------------------------------------------- resizing
def test_upsample_maps_matches_interpolate_and_rowmajor_layout() -> None:
    grid = (3, 5)
    maps = torch.rand(2, 4, 15)
    out = upsample_maps(maps, grid, (12, 20))
    assert out.shape == (2, 4, 12, 20)
    ref = F.interpolate(
        maps.reshape(8, 1, 3, 5), size=(12, 20), mode="bilinear", align_corners=False
    )
    assert torch.allclose(out, ref.reshape(2, 4, 12, 20))
    # Token 1 is row 0, column 1: its block of the nearest-upsampled map lies at rows 0..3.
    onehot = torch.zeros(1, 15)
    onehot[0, 1] = 1
    near = upsample_maps(onehot, grid, (12, 20), mode="nearest")[0]
    assert near[:4, 4:8].eq(1).all() and near.sum() == 16
    with pytest.raises(ValueError):
        upsample_maps(torch.rand(2, 14), grid, 10)


@pytest.mark.parametrize(("grid", "size"), [((15, 15), 240), ((3, 5), (12, 20)), ((4, 4), (3, 7))])
def test_upsample_maps_under_vmap_matches_interpolate(grid, size) -> None:
    """Inside a stacked fit (vmap) the bilinear resize runs as two weight-matrix products:
    the values and gradients of F.interpolate up to float32 rounding."""
    from torch.func import vmap

    maps = torch.rand(3, 2, 4, grid[0] * grid[1], requires_grad=True)  # 3 members
    weight = torch.rand(3, 2, 4, *((size, size) if isinstance(size, int) else size))
    stacked = vmap(lambda m: upsample_maps(m, grid, size))(maps)
    (stacked_grad,) = torch.autograd.grad((stacked * weight).sum(), maps)
    plain = upsample_maps(maps, grid, size)
    (plain_grad,) = torch.autograd.grad((plain * weight).sum(), maps)
    torch.testing.assert_close(stacked, plain, atol=1e-5, rtol=0)
    torch.testing.assert_close(stacked_grad, plain_grad, atol=1e-4, rtol=1e-5)


def test_downsample_masks_gives_area_fractions() -> None:
    masks = torch.zeros(1, 8, 8)
    masks[0, :2, :4] = 1  # half of the top-left 4x4 patch
    out = downsample_masks(masks, (2, 2))
    assert torch.allclose(out, torch.tensor([[0.5, 0.0, 0.0, 0.0]]))


# ----------------------------------------------------------------------------- losses
def test_focal_loss_binary_known_values() -> None:
    p = torch.tensor([[0.9, 0.2]])
    t = torch.tensor([[1.0, 0.0]])
    # element 1: -(1-0.9)^2 log 0.9 ; element 2: -(1-0.8)^2 log 0.8
    expected = (-(0.1**2) * math.log(0.9) - (0.2**2) * math.log(0.8)) / 2
    assert focal_loss(p, t).item() == pytest.approx(expected, rel=1e-6)
    # gamma = 0 is binary cross-entropy
    assert focal_loss(p, t, gamma=0.0).item() == pytest.approx(
        F.binary_cross_entropy(p, t).item(), rel=1e-6
    )
    logits = torch.logit(p)
    assert focal_loss(logits, t, from_logits=True).item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("threads", [1, 2])
def test_binary_focal_loss_equals_focal_loss_bit_for_bit(weighted: bool, threads: int) -> None:
    # AnomalyCLIP-style's shapes (B * taps, H, W), with probabilities at and beyond the clamp
    # (0, 1, 1e-9) and a weight that drops a row: same loss and same gradient to the last bit.
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(12, 64, 64, generator=g) * 4
    logits[0, :3, 0] = torch.tensor([-1e4, 1e4, -20.7])
    target = torch.rand(12, 64, 64, generator=g) > 0.7
    target[3] = False
    weight = (torch.arange(12) != 5).float() if weighted else None
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        results = []
        for fast in (False, True):
            x = logits.clone().requires_grad_(True)
            p = torch.sigmoid(x)
            if fast:
                loss = binary_focal_loss(p, target, weight=weight)
            else:
                loss = focal_loss(p, target.float(), weight=weight)
            (loss * 3.0).backward()
            results.append((loss.detach(), x.grad))
    finally:
        torch.set_num_threads(before)
    (slow_loss, slow_grad), (fast_loss, fast_grad) = results
    assert torch.equal(slow_loss, fast_loss)
    assert torch.equal(slow_grad, fast_grad)
    with pytest.raises(ValueError, match="bool"):
        binary_focal_loss(p, target.float())
    with pytest.raises(ValueError, match="does not fit"):
        binary_focal_loss(p, target[:, :2])


def test_focal_loss_multiclass_ids_soft_targets_and_weights() -> None:
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]])  # (B=2, C=3), no spatial dims
    ids = torch.tensor([0, 2])
    expected = (-(0.3**2) * math.log(0.7) - (0.2**2) * math.log(0.8)) / 2
    assert focal_loss(probs, ids).item() == pytest.approx(expected, rel=1e-6)
    soft = F.one_hot(ids, 3).float()
    assert focal_loss(probs, soft, soft_classes=True).item() == pytest.approx(expected, rel=1e-6)
    # weight 0 drops the second item
    only_first = -(0.3**2) * math.log(0.7)
    got = focal_loss(probs, ids, weight=torch.tensor([1.0, 0.0])).item()
    assert got == pytest.approx(only_first, rel=1e-6)
    # logits path equals the probability path
    logits = probs.log() + 3.0
    assert focal_loss(logits, ids, from_logits=True).item() == pytest.approx(expected, rel=1e-5)
    # spatial layout (B, C, H, W) with (B, H, W) ids
    sp = probs.t()[None, :, :, None]  # (1, 3, 2, 1)
    assert focal_loss(sp, ids[None, :, None]).item() == pytest.approx(expected, rel=1e-6)
    with pytest.raises(ValueError):
        focal_loss(probs, torch.zeros(3, dtype=torch.long)[:, None, None])


def test_dice_loss_known_values() -> None:
    p = torch.tensor([[0.5, 0.5, 0.0, 0.0]])
    t = torch.tensor([[1.0, 0.0, 0.0, 0.0]])
    # 1 - (2 * 0.5 + 1) / (1 + 1 + 1) = 1/3
    assert dice_loss(p, t).item() == pytest.approx(1 / 3)
    assert dice_loss(t, t, smooth=0.0).item() == pytest.approx(0.0)
    # empty target: 1 - 1 / (sum p + 1)
    assert dice_loss(p, torch.zeros_like(p)).item() == pytest.approx(0.5)
    both = dice_loss(torch.cat([p, t]), torch.cat([t, t]), weight=torch.tensor([0.0, 1.0]))
    assert both.item() == pytest.approx(1 - 3 / 3)
    with pytest.raises(ValueError):
        dice_loss(p, t[:, :3])


# ----------------------------------------------------------------------------- similarities
def test_feature_surgery_matches_the_elementwise_definition() -> None:
    torch.manual_seed(0)
    f = F.normalize(torch.randn(2, 5, 8, dtype=torch.float64), dim=-1)
    t = F.normalize(torch.randn(3, 8, dtype=torch.float64), dim=-1)
    cls = torch.randn(2, 8, dtype=torch.float64)
    ours = feature_surgery_similarity(f, t, cls)
    # Direct (B, L, C, D) definition from CLIP Surgery.
    prob = (2 * F.normalize(cls, dim=-1) @ t.t()).softmax(-1)
    w = prob / prob.mean(-1, keepdim=True)
    feats = f[:, :, None, :] * t[None, None] * w[:, None, :, None]
    ref = (feats - feats.mean(2, keepdim=True)).sum(-1)
    assert torch.allclose(ours, ref, atol=1e-12)
    assert torch.allclose(ours.sum(-1), torch.zeros(2, 5, dtype=torch.float64), atol=1e-12)
    plain = feature_surgery_similarity(f, t)
    cos = f @ t.t()
    assert torch.allclose(plain, cos - cos.mean(-1, keepdim=True))


def test_cosine_logits_and_harmonic_mean() -> None:
    x = torch.tensor([[3.0, 0.0]])
    t = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    assert torch.allclose(cosine_logits(x, t, 0.5), torch.tensor([[2.0, 0.0]]))
    assert harmonic_mean(torch.tensor([[1.0, 2.0, 4.0]]), dim=1).item() == pytest.approx(
        3 / (1 + 0.5 + 0.25)
    )
