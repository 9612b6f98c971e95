"""AUPRO against a naive, obviously correct reference (loop over thresholds and regions)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from semclip_bench.metrics import NotAvailable, aupro


def naive_aupro(maps: np.ndarray, masks: np.ndarray, fpr_limit: float) -> float:
    """MVTec AUPRO straight from the definition, one threshold at a time."""
    regions = []  # (image index, boolean region mask)
    for i, mask in enumerate(masks):
        labelled, count = ndimage.label(mask, structure=np.ones((3, 3)))
        regions += [(i, labelled == r) for r in range(1, count + 1)]
    normal = ~masks
    fprs, pros = [0.0], [0.0]
    for threshold in sorted(set(maps.ravel().tolist()), reverse=True):
        predicted = maps >= threshold
        fprs.append(np.sum(predicted & normal) / np.sum(normal))
        overlaps = [np.sum(predicted[i] & region) / np.sum(region) for i, region in regions]
        pros.append(float(np.mean(overlaps)))
    area = 0.0
    for k in range(1, len(fprs)):
        x0, x1, y0, y1 = fprs[k - 1], fprs[k], pros[k - 1], pros[k]
        if x0 >= fpr_limit:
            break
        if x1 > fpr_limit:  # cut the segment at the limit, interpolating linearly
            y1 = y0 + (y1 - y0) * (fpr_limit - x0) / (x1 - x0)
            x1 = fpr_limit
        area += (x1 - x0) * (y0 + y1) / 2
    return area / fpr_limit


def _scene(seed: int, decimals: int | None = 2):
    """Three 32x32 images: a 2-px and a 400-px region, a diagonal region, a normal image."""
    rng = np.random.default_rng(seed)
    masks = np.zeros((3, 32, 32), dtype=bool)
    masks[0, 5, 5:7] = True  # 2 px
    masks[0, 10:30, 8:28] = True  # 400 px
    masks[1, [3, 4, 5, 6], [3, 4, 5, 6]] = True  # one 8-connected diagonal region of 4 px
    masks[1, 20:23, 20:25] = True
    maps = rng.normal(size=masks.shape) + 1.0 * masks
    maps[0, 10:30, 8:18] += 1.5  # half of the big region is easy
    if decimals is not None:
        maps = np.round(maps, decimals)  # ties across and within regions
    return maps, masks


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("fpr_limit", [0.3, 0.05, 1.0])
def test_aupro_matches_naive_reference(seed: int, fpr_limit: float) -> None:
    maps, masks = _scene(seed)
    expected = naive_aupro(maps, masks, fpr_limit)
    assert aupro(maps, masks, fpr_limit=fpr_limit) == pytest.approx(expected, rel=1e-9)


def test_aupro_without_ties_and_float32() -> None:
    maps, masks = _scene(2, decimals=None)
    maps = maps.astype(np.float32)
    expected = naive_aupro(maps, masks, 0.3)
    assert aupro(maps, masks) == pytest.approx(expected, rel=1e-9)


def test_small_region_weighs_as_much_as_large_one() -> None:
    """PRO averages over regions: detecting only the 400-px region scores half, not ~99 %."""
    masks = np.zeros((1, 32, 32), dtype=bool)
    masks[0, 1, 1:3] = True
    masks[0, 10:30, 8:28] = True
    maps = np.where(masks, -2.0, -1.0)  # small region below every normal pixel
    maps[0, 10:30, 8:28] = 1.0  # big region above every normal pixel
    # Curve (FPR, PRO): (0, 0) (0, 0.5) (1, 0.5) (1, 1): flat at 0.5 up to the limit.
    assert aupro(maps, masks, fpr_limit=0.3) == pytest.approx(0.5)
    assert aupro(maps, masks, fpr_limit=0.3) == pytest.approx(naive_aupro(maps, masks, 0.3))


def test_hand_computed_curve_with_interpolation() -> None:
    # One image, one 2-px region (scores 0.9, 0.5); normal pixels 0.8, 0.7, 0.6, 0.4, 0.3, 0.2.
    maps = np.array([[[0.9, 0.5, 0.8, 0.7], [0.6, 0.4, 0.3, 0.2]]])
    masks = np.array([[[1, 1, 0, 0], [0, 0, 0, 0]]], dtype=bool)
    # Curve (FPR, PRO): (0,0) (0,.5) (1/6,.5) (2/6,.5) (3/6,.5) (3/6,1) ...; limit 0.25 lies on
    # the flat part at 0.5: area = 0.5 * 0.25, normalised -> 0.5.
    assert aupro(maps, masks, fpr_limit=0.25) == pytest.approx(0.5)
    # Limit 1: area = 0.5 * 0.5 + 1 * 0.5 = 0.75.
    assert aupro(maps, masks, fpr_limit=1.0) == pytest.approx(0.75)


def test_eight_connectivity() -> None:
    """Diagonal neighbours form one region (8-connectivity), not two."""
    masks = np.zeros((1, 6, 6), dtype=bool)
    masks[0, 1, 1] = masks[0, 2, 2] = masks[0, 4, 4] = True
    maps = np.zeros((1, 6, 6))
    maps[0, 1, 1] = 1.0  # found before every normal pixel
    maps[0, 2, 2] = maps[0, 4, 4] = -1.0  # found after every normal pixel
    # Curve (0, 0) (0, PRO) (1, PRO) (1, 1), so AUPRO = PRO at FPR 0. Regions {(1,1), (2,2)}
    # (overlap 1/2) and {(4,4)} (overlap 0) -> 0.25; 4-connectivity would give 3 regions, 1/3.
    assert aupro(maps, masks, fpr_limit=0.3) == pytest.approx(0.25)


def test_aupro_invalid_limit_raises() -> None:
    maps, masks = _scene(3)
    with pytest.raises(ValueError, match="fpr_limit"):
        aupro(maps, masks, fpr_limit=0.0)


def test_aupro_of_a_constant_map() -> None:
    maps, masks = _scene(4)
    flat = np.zeros_like(maps)
    # One threshold: everything positive at once, FPR jumps 0 -> 1 with PRO 0 -> 1.
    assert aupro(flat, masks, fpr_limit=0.3) == pytest.approx(0.15)
    assert not isinstance(aupro(flat, masks), NotAvailable)


@pytest.mark.parametrize("seed", range(5))
def test_aupro_random_scenes_match_naive_reference(seed: int) -> None:
    rng = np.random.default_rng(100 + seed)
    masks = rng.random((4, 16, 16)) < 0.04
    if seed % 2:
        masks = ndimage.binary_dilation(masks)  # larger, merged regions
    masks[0, 0, 0] = True  # at least one region
    maps = np.round(rng.normal(size=masks.shape) + rng.uniform(0, 2) * masks, 1)
    for fpr_limit in (0.3, 0.1):
        expected = naive_aupro(maps, masks, fpr_limit)
        assert aupro(maps, masks, fpr_limit=fpr_limit) == pytest.approx(expected, rel=1e-9)
