"""Pixel-level metrics over all pixels of all query images: pAUROC, pF1-max and AUPRO.

Maps are anomaly maps (any real values; larger = more anomalous), masks the ground truth
(bool, or numbers where > 0.5 is defect, so float {0, 1} and uint8 {0, 255} both work).
Accepted layouts: one array/tensor (N, H, W), (N, 1, H, W) or (H, W); or a list of such batches
(concatenated in order), which may also hold single maps of different sizes.

A mask whose size differs from its map is resized to the map size with nearest-neighbour sampling
at pixel centres (source index ``floor((i + 0.5) * h_mask / H_map)``, like PIL ``NEAREST``); maps
are never resized. All three metrics share one descending sort of the pixel scores, so
``evaluate`` sorts the 33 M pixels of 500 maps of 256 x 256 once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from semclip_bench.metrics.base import NotAvailable, is_batch_list, to_numpy
from semclip_bench.metrics.ranking import (
    RankedCounts,
    auroc_from_counts,
    counts_from_sorted,
    f1max_from_counts,
    sort_descending,
    tie_group_ends,
)

__all__ = ["aupro", "pixel_auroc", "pixel_f1_max", "resize_mask_nearest"]

#: 8-connectivity for the defect regions of AUPRO (MVTec AD definition).
_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


def resize_mask_nearest(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of the last two axes of a mask to ``size`` = (H, W).

    Samples source pixel ``floor((i + 0.5) * h / H)`` (integer arithmetic, pixel-centre aligned):
    a mask of 2x the map size keeps its odd rows/columns; a half-size mask repeats each pixel twice.
    """
    h, w = mask.shape[-2:]
    out_h, out_w = size
    if (h, w) == (out_h, out_w):
        return mask
    rows = ((2 * np.arange(out_h) + 1) * h) // (2 * out_h)
    cols = ((2 * np.arange(out_w) + 1) * w) // (2 * out_w)
    return mask[..., rows[:, None], cols[None, :]]


def _blocks(x: Any, name: str) -> list[np.ndarray]:
    """Maps or masks as a list of (B, H, W) numpy blocks (views where possible)."""
    items = list(x) if is_batch_list(x) else [x]
    blocks = []
    for item in items:
        arr = to_numpy(item)
        if arr.ndim == 4 and arr.shape[1] == 1:
            arr = arr[:, 0]
        elif arr.ndim == 2:
            arr = arr[None]
        if arr.ndim != 3:
            raise ValueError(
                f"{name} must be (N, H, W), (N, 1, H, W) or (H, W) arrays, got shape {arr.shape}"
            )
        blocks.append(arr)
    return blocks


def _binary(mask: np.ndarray) -> np.ndarray:
    if mask.dtype == bool:
        return mask
    if mask.dtype.kind not in "biuf":
        raise ValueError(f"masks must be bool or numeric, got dtype {mask.dtype}")
    return mask > 0.5


@dataclass
class PixelData:
    """All query pixels flattened: scores, defect flags and (optionally) global region ids."""

    scores: np.ndarray  # 1-D float32/float64
    defect: np.ndarray  # 1-D bool
    regions: np.ndarray | None  # 1-D int32/int64, 0 = normal, 1..K = connected defect regions
    n_regions: int


def pixel_data(maps: Any, masks: Any, with_regions: bool) -> PixelData:
    """Flatten maps and masks (masks nearest-resized to map size); label regions if asked."""
    map_blocks = _blocks(maps, "maps")
    mask_blocks = _blocks(masks, "masks")
    n_maps = sum(b.shape[0] for b in map_blocks)
    n_masks = sum(b.shape[0] for b in mask_blocks)
    if n_maps != n_masks:
        raise ValueError(f"maps and masks differ in number of images: {n_maps} vs {n_masks}")
    dtype = np.result_type(*[b.dtype for b in map_blocks])
    if dtype.kind not in "biuf":
        raise ValueError(f"maps must be real numbers, got dtype {dtype}")
    if dtype not in (np.float32, np.float64):
        dtype = np.dtype(np.float32) if dtype == np.float16 else np.dtype(np.float64)

    # Per-image views pair maps with masks across differently batched inputs.
    map_views = [m for b in map_blocks for m in b]
    mask_views = [m for b in mask_blocks for m in b]
    total = sum(m.size for m in map_views)

    filled = len(map_blocks) == 1 and map_blocks[0].dtype == dtype
    if filled:
        scores = np.ascontiguousarray(map_blocks[0]).reshape(-1)  # a view when contiguous
    else:
        scores = np.empty(total, dtype=dtype)
    defect = np.empty(total, dtype=bool)
    regions = None
    if with_regions:
        regions = np.empty(total, dtype=np.int32 if total < 2**31 - 1 else np.int64)
    n_regions = 0
    offset = 0
    same_size_block = len(mask_blocks) == 1 and len(map_blocks) == 1
    if same_size_block:  # one vectorised resize for the common case of stacked arrays
        resized = _binary(resize_mask_nearest(mask_blocks[0], map_blocks[0].shape[-2:]))
        mask_views = list(resized)
    for m, k in zip(map_views, mask_views, strict=True):
        size = m.size
        sl = slice(offset, offset + size)
        if not filled:
            scores[sl] = m.reshape(-1)
        k = _binary(resize_mask_nearest(k, m.shape)) if not same_size_block else k
        defect[sl] = k.reshape(-1)
        if regions is not None:
            out = regions[sl].reshape(m.shape)
            count = int(ndimage.label(k, structure=_EIGHT_CONNECTED, output=out))
            out[out > 0] += n_regions
            n_regions += count
        offset += size
    return PixelData(scores=scores, defect=defect, regions=regions, n_regions=n_regions)


def pixel_reason(data: PixelData) -> str | None:
    """Why pixel metrics are undefined on ``data``, or None."""
    if data.scores.size == 0:
        return "empty input"
    if np.isnan(data.scores).any():
        return "NaN in maps"
    n_def = int(np.count_nonzero(data.defect))
    if n_def == 0:
        return "no defect pixels"
    if n_def == data.defect.size:
        return "no normal pixels"
    return None


@dataclass
class PixelCurves:
    """Counts at each distinct pixel threshold, and the PRO curve up to the FPR limit."""

    counts: RankedCounts
    pro_fpr: np.ndarray | None = None  # FPR at each threshold (ascending), from (0, 0) on
    pro: np.ndarray | None = None  # mean region overlap at the same thresholds


def pixel_curves(data: PixelData, fpr_limit: float | None) -> PixelCurves:
    """One descending sort of all pixels gives ROC counts and, if ``fpr_limit``, the PRO curve.

    PRO(t) = mean over regions of (region pixels >= t) / (region size) is a sum of per-pixel
    weights 1 / (K * size of the pixel's region), so its value at every distinct threshold is a
    cumulative sum along the same sorted order: exact, with no threshold grid.
    """
    payload = data.defect if data.regions is None else data.regions
    keys, payload_sorted = sort_descending(data.scores, payload)
    ends = tie_group_ends(keys)
    del keys
    counts = counts_from_sorted(payload_sorted != 0, ends)
    if data.regions is None or fpr_limit is None:
        return PixelCurves(counts=counts)
    region_sorted = payload_sorted
    n_neg = counts.n_neg
    # Thresholds up to the first whose FPR exceeds the limit (needed to interpolate there).
    last = min(int(np.searchsorted(counts.fps, fpr_limit * n_neg, side="right")), ends.size - 1)
    ends = ends[: last + 1]
    sizes = np.bincount(data.regions, minlength=data.n_regions + 1).astype(np.float64)
    weight = np.zeros_like(sizes)
    weight[1:] = 1.0 / (sizes[1:] * data.n_regions)
    pro_cum = weight[region_sorted[: ends[-1] + 1]]
    del region_sorted, payload_sorted
    np.cumsum(pro_cum, out=pro_cum)
    pro = np.concatenate(([0.0], pro_cum[ends]))
    fpr = np.concatenate(([0.0], counts.fps[: last + 1] / n_neg))
    return PixelCurves(counts=counts, pro_fpr=fpr, pro=pro)


def aupro_from_curve(fpr: np.ndarray, pro: np.ndarray, fpr_limit: float) -> float:
    """Trapezoid area under PRO(FPR) on [0, fpr_limit], interpolated at the limit, / limit."""
    inside = int(np.searchsorted(fpr, fpr_limit, side="right"))  # points with fpr <= limit
    x = fpr[:inside]
    y = pro[:inside]
    if inside < fpr.size and x[-1] < fpr_limit:
        x0, x1, y0, y1 = fpr[inside - 1], fpr[inside], pro[inside - 1], pro[inside]
        y_end = y0 + (y1 - y0) * (fpr_limit - x0) / (x1 - x0)
        x = np.append(x, fpr_limit)
        y = np.append(y, y_end)
    area = float(np.sum(np.diff(x) * (y[1:] + y[:-1]) / 2.0))
    return area / fpr_limit


def pixel_auroc(maps: Any, masks: Any) -> float:
    """ROC AUC over all pixels of all images (pixels pooled, not averaged per image).

    Masks of another size are nearest-resized to the map size. ``NotAvailable`` without defect
    pixels, without normal pixels, on empty input or NaN in the maps.
    """
    data = pixel_data(maps, masks, with_regions=False)
    reason = pixel_reason(data)
    if reason:
        return NotAvailable(reason)
    return auroc_from_counts(pixel_curves(data, None).counts)


def pixel_f1_max(maps: Any, masks: Any) -> float:
    """Max F1 over all thresholds of the pooled pixel scores (the paper's "F1-max").

    Same as ``f1_max(maps.ravel(), masks.ravel())`` after nearest-resizing the masks.
    """
    data = pixel_data(maps, masks, with_regions=False)
    reason = pixel_reason(data)
    if reason:
        return NotAvailable(reason)
    return f1max_from_counts(pixel_curves(data, None).counts)


def aupro(maps: Any, masks: Any, fpr_limit: float = 0.3) -> float:
    """Area under the per-region-overlap curve up to ``fpr_limit``, divided by it (MVTec AD).

    For each threshold t (every distinct pixel score; exact, no grid): FPR(t) = fraction of normal
    pixels (outside every defect, over all images) with score >= t; PRO(t) = mean over all defect
    regions (8-connected components of each image's mask, ``scipy.ndimage.label``) of the fraction
    of the region's pixels with score >= t. The curve starts at (0, 0), is interpolated linearly at
    ``fpr_limit`` and integrated with the trapezoid rule. Masks are nearest-resized to the maps.
    """
    if not 0.0 < fpr_limit <= 1.0:
        raise ValueError(f"fpr_limit must be in (0, 1], got {fpr_limit}")
    data = pixel_data(maps, masks, with_regions=True)
    reason = pixel_reason(data)
    if reason:
        return NotAvailable(reason)
    curves = pixel_curves(data, fpr_limit)
    return aupro_from_curve(curves.pro_fpr, curves.pro, fpr_limit)
