"""Pixel AUROC / F1-max: pooled over all pixels, masks nearest-resized to the maps."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from semclip_bench.metrics import (
    NotAvailable,
    aupro,
    f1_max,
    pixel_auroc,
    pixel_f1_max,
    resize_mask_nearest,
)


def _maps_and_masks(seed: int = 0, n: int = 4, h: int = 24, w: int = 20):
    rng = np.random.default_rng(seed)
    masks = np.zeros((n, h, w), dtype=bool)
    masks[1, 3:9, 4:10] = True
    masks[2, 15:18, 2:5] = True
    masks[2, 0, w - 1] = True
    maps = rng.normal(size=(n, h, w)).astype(np.float32) + 1.2 * masks
    return maps, masks


def test_pixel_auroc_equals_sklearn_on_all_pixels() -> None:
    maps, masks = _maps_and_masks()
    expected = roc_auc_score(masks.ravel(), maps.ravel())
    assert pixel_auroc(maps, masks) == pytest.approx(expected, abs=1e-12)


def test_pixel_f1_max_equals_flattened_f1_max() -> None:
    maps, masks = _maps_and_masks(1)
    maps = np.round(maps, 1)  # ties
    assert pixel_f1_max(maps, masks) == f1_max(maps.ravel(), masks.ravel())


def test_layouts_torch_and_batches_agree() -> None:
    maps, masks = _maps_and_masks(2)
    reference = pixel_auroc(maps, masks)
    t_maps, t_masks = torch.from_numpy(maps), torch.from_numpy(masks.astype(np.float32))
    assert pixel_auroc(t_maps, t_masks) == reference
    assert pixel_auroc(t_maps[:, None], t_masks[:, None]) == reference  # (N, 1, H, W)
    assert pixel_auroc([t_maps[:1], t_maps[1:3], t_maps[3:]], [t_masks[:3], t_masks[3:]]) == (
        reference
    )
    assert pixel_auroc(list(maps), list(masks.astype(np.uint8) * 255)) == reference
    assert pixel_f1_max(t_maps, t_masks) == pixel_f1_max(maps, masks)
    assert aupro(t_maps, t_masks) == aupro(maps, masks)


def test_maps_of_different_sizes_in_a_list() -> None:
    rng = np.random.default_rng(3)
    maps = [rng.random((8, 8)), rng.random((5, 7))]
    masks = [np.zeros((8, 8), bool), np.zeros((5, 7), bool)]
    masks[0][2:4, 2:4] = True
    masks[1][0, :3] = True
    flat_maps = np.concatenate([m.ravel() for m in maps])
    flat_masks = np.concatenate([m.ravel() for m in masks])
    assert pixel_auroc(maps, masks) == pytest.approx(roc_auc_score(flat_masks, flat_maps))


def test_mask_twice_the_map_size_is_resized_nearest() -> None:
    maps, masks = _maps_and_masks(4)
    big = np.kron(masks, np.ones((1, 2, 2), dtype=bool))  # each pixel -> a 2x2 block
    assert big.shape == (4, 48, 40)
    assert np.array_equal(resize_mask_nearest(big, (24, 20)), masks)
    assert pixel_auroc(maps, big) == pixel_auroc(maps, masks)
    assert pixel_f1_max(maps, big) == pixel_f1_max(maps, masks)
    assert aupro(maps, big) == aupro(maps, masks)


def test_nearest_resize_samples_pixel_centres_and_keeps_orientation() -> None:
    mask = np.arange(6 * 4).reshape(6, 4)  # non-square: rows and columns must not swap
    small = resize_mask_nearest(mask, (3, 2))
    assert np.array_equal(small, mask[[1, 3, 5]][:, [1, 3]])
    up = resize_mask_nearest(mask, (12, 8))
    assert np.array_equal(up, np.repeat(np.repeat(mask, 2, axis=0), 2, axis=1))
    assert resize_mask_nearest(mask, (6, 4)) is mask
    # A mask of another aspect ratio is resampled per axis (as the image itself was resized).
    odd = resize_mask_nearest(mask, (2, 4))
    assert np.array_equal(odd, mask[[1, 4]])


def test_maps_are_never_resized() -> None:
    maps, masks = _maps_and_masks(5)
    small_mask = masks[:, ::2, ::2]
    # The pixel count is the map's, whatever the mask size.
    upsampled = resize_mask_nearest(small_mask, maps.shape[-2:])
    assert pixel_auroc(maps, small_mask) == pytest.approx(
        roc_auc_score(upsampled.ravel(), maps.ravel()), abs=1e-12
    )


@pytest.mark.parametrize("metric", [pixel_auroc, pixel_f1_max, aupro])
def test_undefined_pixel_cases(metric) -> None:
    maps, masks = _maps_and_masks(6)
    value = metric(maps, np.zeros_like(masks))
    assert isinstance(value, NotAvailable) and value.reason == "no defect pixels"
    value = metric(maps, np.ones_like(masks))
    assert isinstance(value, NotAvailable) and value.reason == "no normal pixels"
    bad = maps.copy()
    bad[0, 0, 0] = np.nan
    value = metric(bad, masks)
    assert isinstance(value, NotAvailable) and value.reason == "NaN in maps"
    value = metric(np.zeros((0, 4, 4)), np.zeros((0, 4, 4)))
    assert isinstance(value, NotAvailable) and value.reason == "empty input"


def test_mismatched_image_counts_raise() -> None:
    maps, masks = _maps_and_masks(7)
    with pytest.raises(ValueError, match="number of images"):
        pixel_auroc(maps, masks[:3])


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("decimals", [None, 1])
def test_torch_path_equals_numpy_path(device: str, decimals: int | None) -> None:
    maps, masks = _maps_and_masks(8)
    if decimals is not None:
        maps = np.round(maps, decimals)  # heavy ties
    for m in (maps, maps.astype(np.float64)):
        assert pixel_auroc(m, masks, device=device) == pixel_auroc(m, masks)
        assert pixel_f1_max(m, masks, device=device) == pixel_f1_max(m, masks)
        # The PRO cumulative sum may add within a tie group in another order: equal to rounding.
        assert aupro(m, masks, device=device) == pytest.approx(aupro(m, masks), rel=1e-12)
    on_device = torch.from_numpy(maps).to(device)  # device=None: tensors stay where they are
    assert pixel_auroc(on_device, torch.from_numpy(masks)) == pixel_auroc(maps, masks)
    batches = [on_device[:2].half(), on_device[2:].half()]
    assert pixel_auroc(batches, masks, device=device) == pytest.approx(
        roc_auc_score(masks.ravel(), np.concatenate([b.float().cpu().numpy() for b in batches])
                      .ravel()), abs=1e-12
    )  # fmt: skip
