"""Pixel-level metrics over all pixels of all query images: pAUROC, pF1-max and AUPRO.

Maps are anomaly maps (any real values; larger = more anomalous), masks the ground truth
(bool, or numbers where > 0.5 is defect, so float {0, 1} and uint8 {0, 255} both work).
Accepted layouts: one array/tensor (N, H, W), (N, 1, H, W) or (H, W); or a list of such batches
(concatenated in order), which may also hold single maps of different sizes.

A mask whose size differs from its map is resized to the map size with nearest-neighbour sampling
at pixel centres (source index ``floor((i + 0.5) * h_mask / H_map)``, like PIL ``NEAREST``); maps
are never resized. All three metrics share one descending sort of the pixel scores, so
``evaluate`` sorts the 33 M pixels of 500 maps of 256 x 256 once.

``device``: None (default) sorts CUDA-tensor maps on their GPU with torch and everything else on
the CPU with numpy; a device ("cpu", "cuda:0") forces the torch path there. Both paths give the
same values (exact integer counts; masks and connected components are always made on the CPU).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from scipy import ndimage

from semclip_bench.metrics.base import NotAvailable, is_batch_list, is_tensor, to_numpy
from semclip_bench.metrics.ranking import (
    RankedCounts,
    auroc_from_counts,
    counts_from_sorted,
    f1max_from_counts,
    float32_sort_key,
    sort_descending,
    tie_group_ends,
)

__all__ = [
    "PixelTruth",
    "aupro",
    "pixel_auroc",
    "pixel_f1_max",
    "pixel_truth",
    "resize_mask_nearest",
]

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


def _blocks(x: Any, name: str, keep_tensors: bool = False) -> list:
    """Maps or masks as a list of (B, H, W) blocks: numpy views, or tensors if ``keep_tensors``."""
    items = list(x) if is_batch_list(x) else [x]
    blocks = []
    for item in items:
        arr = item if keep_tensors and is_tensor(item) else to_numpy(item)
        if arr.ndim == 4 and arr.shape[1] == 1:
            arr = arr[:, 0]
        elif arr.ndim == 2:
            arr = arr[None]
        if arr.ndim != 3:
            raise ValueError(
                f"{name} must be (N, H, W), (N, 1, H, W) or (H, W) arrays, got shape "
                f"{tuple(arr.shape)}"
            )
        blocks.append(arr)
    return blocks


def _binary(mask: np.ndarray) -> np.ndarray:
    if mask.dtype == bool:
        return mask
    if mask.dtype.kind not in "biuf":
        raise ValueError(f"masks must be bool or numeric, got dtype {mask.dtype}")
    return mask > 0.5


def resolve_device(maps: Any, device: Any) -> torch.device | None:
    """Where the pixel sort runs: None = numpy on CPU; a torch device = the torch path there.

    ``device=None`` keeps CUDA tensors on their GPU and uses numpy for everything else.
    """
    if device is not None:
        return torch.device(device)
    items = list(maps) if is_batch_list(maps) else [maps]
    if items and all(is_tensor(m) and m.is_cuda for m in items):
        return items[0].device
    return None


@dataclass
class PixelTruth:
    """The mask side of the pixel metrics for one query set at given map shapes.

    Flattened defect flags and (optionally) 8-connected region ids, built once from the masks and
    reusable by every method scored on the same query (the runner keeps it per query set): only
    the scores differ between methods. Device copies of the sort payload and of the region weights
    are cached on first use by the torch path.
    """

    shapes: tuple[tuple[int, int], ...]  # per-image map shape (H, W) the masks were resized to
    defect: np.ndarray  # 1-D bool
    regions: np.ndarray | None  # 1-D int32/int64, 0 = normal, 1..K = connected defect regions
    n_regions: int
    _weights: np.ndarray | None = None
    _n_defect: int | None = None
    _on_device: dict = field(default_factory=dict)

    @property
    def n_defect(self) -> int:
        if self._n_defect is None:
            self._n_defect = int(np.count_nonzero(self.defect))
        return self._n_defect

    def region_weights(self) -> np.ndarray:
        """Per-region weight 1 / (K * region size) (float64), index 0 (normal pixels) weighs 0."""
        if self._weights is None:
            sizes = np.bincount(self.regions, minlength=self.n_regions + 1).astype(np.float64)
            weight = np.zeros_like(sizes)
            weight[1:] = 1.0 / (sizes[1:] * self.n_regions)
            self._weights = weight
        return self._weights

    def on_device(self, name: str, device: torch.device) -> torch.Tensor:
        """``defect``, ``regions`` or ``weights`` as a tensor on ``device`` (copied once)."""
        key = (name, str(device))
        if key not in self._on_device:
            source = self.region_weights() if name == "weights" else getattr(self, name)
            self._on_device[key] = torch.from_numpy(source).to(device)
        return self._on_device[key]


@dataclass
class PixelData:
    """All query pixels flattened: scores, defect flags and (optionally) global region ids."""

    scores: np.ndarray | torch.Tensor  # 1-D float32/float64; a tensor on the torch path
    defect: np.ndarray  # 1-D bool
    regions: np.ndarray | None  # 1-D int32/int64, 0 = normal, 1..K = connected defect regions
    n_regions: int
    truth: PixelTruth | None = None


def _score_dtype(dtypes: list) -> np.dtype:
    dtype = np.result_type(*dtypes)
    if dtype.kind not in "biuf":
        raise ValueError(f"maps must be real numbers, got dtype {dtype}")
    if dtype in (np.float32, np.float64):
        return dtype
    return np.dtype(np.float32) if dtype == np.float16 else np.dtype(np.float64)


def _torch_scores(blocks: list, device: torch.device) -> torch.Tensor:
    """Flattened maps as one tensor on ``device`` (float16/bfloat16 widened exactly to float32)."""
    flat = []
    for b in blocks:
        t = b if is_tensor(b) else torch.from_numpy(np.ascontiguousarray(b))
        if t.dtype in (torch.float16, torch.bfloat16):
            t = t.float()
        elif t.is_complex():
            raise ValueError(f"maps must be real numbers, got dtype {t.dtype}")
        elif not t.is_floating_point():
            t = t.double()  # integers and booleans, exactly
        flat.append(t.to(device).reshape(-1))
    if len(flat) == 1:
        return flat[0]
    dtype = torch.float64 if any(t.dtype == torch.float64 for t in flat) else torch.float32
    return torch.cat([t.to(dtype) for t in flat])


def pixel_truth(
    masks: Any, map_shapes: Sequence[tuple[int, int]], with_regions: bool = True
) -> PixelTruth:
    """Flattened masks (nearest-resized to each map's shape) and, if asked, their regions.

    ``map_shapes``: the (H, W) of every map in order. Regions are labelled on the CPU with
    ``scipy.ndimage.label`` (8-connectivity) and numbered globally over the images.
    """
    mask_blocks = _blocks(masks, "masks")
    map_shapes = tuple((int(h), int(w)) for h, w in map_shapes)
    n_masks = sum(b.shape[0] for b in mask_blocks)
    if len(map_shapes) != n_masks:
        raise ValueError(
            f"maps and masks differ in number of images: {len(map_shapes)} vs {n_masks}"
        )
    total = sum(h * w for h, w in map_shapes)
    if len(mask_blocks) == 1 and len(set(map_shapes)) <= 1 and map_shapes:
        # one vectorised resize for the common case of stacked arrays
        mask_views = list(_binary(resize_mask_nearest(mask_blocks[0], map_shapes[0])))
    else:
        raw = [k for b in mask_blocks for k in b]
        mask_views = [
            _binary(resize_mask_nearest(k, hw)) for k, hw in zip(raw, map_shapes, strict=True)
        ]
    defect = np.empty(total, dtype=bool)
    regions = None
    if with_regions:
        regions = np.empty(total, dtype=np.int32 if total < 2**31 - 1 else np.int64)
    n_regions = 0
    offset = 0
    for shape, k in zip(map_shapes, mask_views, strict=True):
        size = shape[0] * shape[1]
        sl = slice(offset, offset + size)
        defect[sl] = k.reshape(-1)
        if regions is not None:
            out = regions[sl].reshape(shape)
            count = int(ndimage.label(k, structure=_EIGHT_CONNECTED, output=out))
            out[out > 0] += n_regions
            n_regions += count
        offset += size
    return PixelTruth(shapes=map_shapes, defect=defect, regions=regions, n_regions=n_regions)


def pixel_data(
    maps: Any,
    masks: Any,
    with_regions: bool,
    device: Any = None,
    truth: PixelTruth | None = None,
) -> PixelData:
    """Flatten maps and masks (masks nearest-resized to map size); label regions if asked.

    Masks and regions are always built on the CPU (``scipy.ndimage.label``); the scores stay a
    tensor on ``resolve_device(maps, device)`` when that is not None. ``truth``: the mask side
    already built by :func:`pixel_truth` for these map shapes (``masks`` is then not read).
    """
    torch_device = resolve_device(maps, device)
    map_blocks = _blocks(maps, "maps", keep_tensors=torch_device is not None)
    map_shapes = tuple(
        (int(b.shape[-2]), int(b.shape[-1])) for b in map_blocks for _ in range(b.shape[0])
    )
    if truth is None:
        truth = pixel_truth(masks, map_shapes, with_regions)
    elif truth.shapes != map_shapes:
        raise ValueError("pixel truth was built for other map shapes or another number of maps")
    elif with_regions and truth.regions is None:
        raise ValueError("pixel truth was built without regions")
    total = truth.defect.size

    if torch_device is not None:
        scores: np.ndarray | torch.Tensor = _torch_scores(map_blocks, torch_device)
    else:
        dtype = _score_dtype([b.dtype for b in map_blocks])
        if len(map_blocks) == 1 and map_blocks[0].dtype == dtype:
            scores = np.ascontiguousarray(map_blocks[0]).reshape(-1)  # a view when contiguous
        else:
            scores = np.empty(total, dtype=dtype)
            offset = 0
            for block in map_blocks:
                scores[offset : offset + block.size] = block.reshape(-1)
                offset += block.size
    regions = truth.regions if with_regions else None
    return PixelData(
        scores=scores, defect=truth.defect, regions=regions, n_regions=truth.n_regions, truth=truth
    )


def pixel_reason(data: PixelData) -> str | None:
    """Why pixel metrics are undefined on ``data``, or None."""
    if data.defect.size == 0:
        return "empty input"
    has_nan = (
        bool(torch.isnan(data.scores).any())
        if is_tensor(data.scores)
        else bool(np.isnan(data.scores).any())
    )
    if has_nan:
        return "NaN in maps"
    n_def = data.truth.n_defect if data.truth is not None else int(np.count_nonzero(data.defect))
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
    if is_tensor(data.scores):
        return _pixel_curves_torch(data, fpr_limit)
    if data.scores.dtype == np.float32:
        return _pixel_curves_split(data, fpr_limit)
    payload = data.defect if data.regions is None else data.regions
    keys, payload_sorted = sort_descending(data.scores, payload)
    ends = tie_group_ends(keys)
    del keys
    counts = counts_from_sorted(payload_sorted != 0, ends)
    if data.regions is None or fpr_limit is None:
        return PixelCurves(counts=counts)
    last = _last_needed(counts, fpr_limit)
    ends = ends[: last + 1]
    pro_cum = _region_weights(data)[payload_sorted[: ends[-1] + 1]]
    del payload_sorted
    np.cumsum(pro_cum, out=pro_cum)
    return _with_pro(counts, last, pro_cum[ends])


def _pixel_curves_split(data: PixelData, fpr_limit: float | None) -> PixelCurves:
    """:func:`pixel_curves` for float32 scores, with the same arrays bit for bit, faster.

    Only the defect pixels (a few percent) need their payload (region ids) in score order, so the
    big sort is of the bare uint32 score keys (half the bytes of the packed key+payload sort);
    the defect pixels are sorted on their own by (key, region) and placed among the tie groups
    with a search. Counts are integers; the PRO sums run over the defect pixels in the same
    order as the packed sort (descending key, then descending region id; normal pixels only add
    exact zeros there), so every value equals the packed path's.
    """
    keys = float32_sort_key(data.scores)
    positive = np.flatnonzero(data.defect)
    pos_keys = keys[positive]
    regions_desc = None
    if data.regions is not None and fpr_limit is not None:
        packed = pos_keys.astype(np.uint64)
        packed <<= np.uint64(32)
        packed |= data.regions[positive].astype(np.uint32, copy=False)
        packed.sort()
        pos_keys = (packed >> np.uint64(32)).astype(np.uint32)
        regions_desc = (packed & np.uint64(0xFFFFFFFF))[::-1]
        del packed
    else:
        pos_keys.sort()
    del positive
    keys.sort()  # ascending; the descending order is its reverse
    n = keys.size
    is_start = np.empty(n, dtype=bool)
    is_start[0] = True
    np.not_equal(keys[1:], keys[:-1], out=is_start[1:])
    starts = np.flatnonzero(is_start)  # first index of each tie group, ascending
    del is_start
    # Group of each defect pixel, then the defect pixels below each group (ascending order).
    group = np.searchsorted(starts, np.searchsorted(keys, pos_keys, side="left"), side="left")
    del keys, pos_keys
    below = np.bincount(group, minlength=starts.size)
    del group
    np.cumsum(below, out=below)
    below[1:] = below[:-1].copy()
    below[0] = 0
    n_pos = int(np.count_nonzero(data.defect)) if data.truth is None else data.truth.n_defect
    # Descending thresholds: group g (from the top) starts at ascending index starts[-1 - g].
    tps = n_pos - below[::-1]
    fps = (n - starts[::-1]) - tps
    del below, starts
    counts = RankedCounts(tps=np.ascontiguousarray(tps), fps=np.ascontiguousarray(fps))
    if regions_desc is None:
        return PixelCurves(counts=counts)
    last = _last_needed(counts, fpr_limit)
    pro_cum = _region_weights(data)[regions_desc[: int(counts.tps[last])]]
    np.cumsum(pro_cum, out=pro_cum)
    at_ends = counts.tps[: last + 1]
    pro = np.zeros(last + 1, dtype=np.float64)
    hit = at_ends > 0
    pro[hit] = pro_cum[at_ends[hit] - 1]
    return _with_pro(counts, last, pro)


def _last_needed(counts: RankedCounts, fpr_limit: float) -> int:
    """Index of the first threshold whose FPR exceeds the limit (needed to interpolate there).

    FP counts are integers, so ``fps > limit * n_neg`` iff ``fps > floor(limit * n_neg)``: an
    integer search (no float64 copy of the whole count array).
    """
    bound = np.int64(math.floor(fpr_limit * counts.n_neg))
    return min(int(np.searchsorted(counts.fps, bound, side="right")), counts.fps.size - 1)


def _region_weights(data: PixelData) -> np.ndarray:
    """Per-region weight 1 / (K * region size), index 0 (normal pixels) weighs 0."""
    if data.truth is not None:
        return data.truth.region_weights()
    return PixelTruth((), data.defect, data.regions, data.n_regions).region_weights()


def _with_pro(counts: RankedCounts, last: int, pro_at_ends: np.ndarray) -> PixelCurves:
    fpr = np.concatenate(([0.0], counts.fps[: last + 1] / counts.n_neg))
    pro = np.concatenate(([0.0], pro_at_ends))
    return PixelCurves(counts=counts, pro_fpr=fpr, pro=pro)


def _ranked_torch(data: PixelData) -> tuple[torch.Tensor, ...]:
    """One descending sort of the pixels on the scores' device: the last index of each tie group
    (``ends``), the payload in score order, and the cumulative true/false positives at each end."""
    scores = data.scores
    device = scores.device
    values, order = torch.sort(scores, descending=True)
    changes = torch.empty(values.numel(), dtype=torch.bool, device=device)
    torch.ne(values[1:], values[:-1], out=changes[:-1])
    changes[-1] = True
    del values
    ends = torch.nonzero(changes).squeeze(1)
    del changes
    payload_sorted = _device_payload(data, device)[order]
    del order
    tps = torch.cumsum(payload_sorted != 0, 0, dtype=torch.int64)[ends]
    return ends, payload_sorted, tps, ends + 1 - tps


def _pixel_curves_torch(data: PixelData, fpr_limit: float | None) -> PixelCurves:
    """The same computation with torch on the scores' device (e.g. a GPU).

    Sort, tie groups, cumulative counts and the PRO cumulative sum run on the device (integer
    counts, float64 PRO); the per-threshold arrays then come back for the shared reductions.
    """
    device = data.scores.device
    ends, payload_sorted, tps, fps = _ranked_torch(data)
    counts = RankedCounts(tps=tps.cpu().numpy(), fps=fps.cpu().numpy())
    del tps, fps
    if data.regions is None or fpr_limit is None:
        return PixelCurves(counts=counts)
    last = _last_needed(counts, fpr_limit)
    ends = ends[: last + 1]
    weight = (
        data.truth.on_device("weights", device)
        if data.truth is not None
        else torch.from_numpy(_region_weights(data)).to(device)
    )
    pro_cum = torch.cumsum(weight[payload_sorted[: int(ends[-1]) + 1].long()], 0)
    return _with_pro(counts, last, pro_cum[ends].cpu().numpy())


def pixel_metric_values(data: PixelData, fpr_limit: float) -> tuple[float, float, float]:
    """(pAUROC, pF1-max, AUPRO) of ``data`` (with regions) from one sort of its pixels.

    The numpy path reduces the counts of :func:`pixel_curves`. The torch path (scores a tensor,
    e.g. on a GPU) also reduces on the scores' device, so only the three values come back: no
    copy of the per-threshold counts (hundreds of MB for a query set) to the host. pAUROC
    (integer sums) and pF1-max (the same correctly rounded divisions) equal the numpy path's
    bit for bit; AUPRO's float64 sums run in another order (equal to ~1e-15).
    """
    if not is_tensor(data.scores):
        curves = pixel_curves(data, fpr_limit)
        return (
            auroc_from_counts(curves.counts),
            f1max_from_counts(curves.counts),
            aupro_from_curve(curves.pro_fpr, curves.pro, fpr_limit),
        )
    if data.regions is None:
        raise ValueError("pixel_metric_values needs region ids (with_regions=True)")
    return _pixel_values_torch(data, fpr_limit)


def _pixel_values_torch(data: PixelData, fpr_limit: float) -> tuple[float, float, float]:
    device = data.scores.device
    ends, payload_sorted, tps, fps = _ranked_torch(data)
    n_pos, n_neg = (int(v) for v in torch.stack([tps[-1], fps[-1]]).tolist())

    zero = tps.new_zeros(1)
    tp_prev = torch.cat([zero, tps[:-1]])
    dfp = fps - torch.cat([zero, fps[:-1]])
    if 2 * n_pos * n_neg < 2**62:  # exact in int64, as auroc_from_counts
        total = int(torch.sum(dfp * (tp_prev + tps)))
        auroc = float(total / (2 * n_pos * n_neg))
    else:
        total_f = float(torch.sum(dfp.double() * (tp_prev + tps).double()))
        auroc = total_f / (2.0 * n_pos * n_neg)
    del tp_prev, dfp
    f1 = (2.0 * tps.double()) / (tps + fps + n_pos).double()
    f1max = max(0.0, float(f1.max()))
    del f1

    bound = torch.tensor([math.floor(fpr_limit * n_neg)], dtype=fps.dtype, device=device)
    last = min(int(torch.searchsorted(fps, bound, right=True)), fps.numel() - 1)
    ends = ends[: last + 1]
    weight = data.truth.on_device("weights", device) if data.truth is not None else None
    if weight is None:
        weight = torch.from_numpy(_region_weights(data)).to(device)
    pro_cum = torch.cumsum(weight[payload_sorted[: int(ends[-1]) + 1].long()], 0)
    del payload_sorted
    zero_f = torch.zeros(1, dtype=torch.float64, device=device)
    fpr = torch.cat([zero_f, fps[: last + 1].double() / n_neg])
    pro = torch.cat([zero_f, pro_cum[ends]])
    return auroc, f1max, _aupro_torch(fpr, pro, fpr_limit)


def _aupro_torch(fpr: torch.Tensor, pro: torch.Tensor, fpr_limit: float) -> float:
    """:func:`aupro_from_curve` on the curve's device."""
    limit = torch.tensor([fpr_limit], dtype=fpr.dtype, device=fpr.device)
    inside = int(torch.searchsorted(fpr, limit, right=True))  # points with fpr <= limit
    x = fpr[:inside]
    y = pro[:inside]
    if inside < fpr.numel():
        x0, x1, y0, y1 = torch.stack(
            [fpr[inside - 1], fpr[inside], pro[inside - 1], pro[inside]]
        ).tolist()
        if x0 < fpr_limit:
            y_end = y0 + (y1 - y0) * (fpr_limit - x0) / (x1 - x0)
            x = torch.cat([x, limit])
            y = torch.cat([y, torch.tensor([y_end], dtype=y.dtype, device=y.device)])
    area = float(torch.sum(torch.diff(x) * (y[1:] + y[:-1]) / 2.0))
    return area / fpr_limit


def _device_payload(data: PixelData, device: torch.device) -> torch.Tensor:
    """Region ids (or defect flags) on ``device``; copied once per query set via the truth."""
    name = "defect" if data.regions is None else "regions"
    if data.truth is not None:
        return data.truth.on_device(name, device)
    return torch.from_numpy(getattr(data, name)).to(device)


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


def pixel_auroc(maps: Any, masks: Any, device: Any = None) -> float:
    """ROC AUC over all pixels of all images (pixels pooled, not averaged per image).

    Masks of another size are nearest-resized to the map size. ``NotAvailable`` without defect
    pixels, without normal pixels, on empty input or NaN in the maps.
    """
    data = pixel_data(maps, masks, with_regions=False, device=device)
    reason = pixel_reason(data)
    if reason:
        return NotAvailable(reason)
    return auroc_from_counts(pixel_curves(data, None).counts)


def pixel_f1_max(maps: Any, masks: Any, device: Any = None) -> float:
    """Max F1 over all thresholds of the pooled pixel scores (the paper's "F1-max").

    Same as ``f1_max(maps.ravel(), masks.ravel())`` after nearest-resizing the masks.
    """
    data = pixel_data(maps, masks, with_regions=False, device=device)
    reason = pixel_reason(data)
    if reason:
        return NotAvailable(reason)
    return f1max_from_counts(pixel_curves(data, None).counts)


def aupro(maps: Any, masks: Any, fpr_limit: float = 0.3, device: Any = None) -> float:
    """Area under the per-region-overlap curve up to ``fpr_limit``, divided by it (MVTec AD).

    For each threshold t (every distinct pixel score; exact, no grid): FPR(t) = fraction of normal
    pixels (outside every defect, over all images) with score >= t; PRO(t) = mean over all defect
    regions (8-connected components of each image's mask, ``scipy.ndimage.label``) of the fraction
    of the region's pixels with score >= t. The curve starts at (0, 0), is interpolated linearly at
    ``fpr_limit`` and integrated with the trapezoid rule. Masks are nearest-resized to the maps.
    """
    if not 0.0 < fpr_limit <= 1.0:
        raise ValueError(f"fpr_limit must be in (0, 1], got {fpr_limit}")
    data = pixel_data(maps, masks, with_regions=True, device=device)
    reason = pixel_reason(data)
    if reason:
        return NotAvailable(reason)
    curves = pixel_curves(data, fpr_limit)
    return aupro_from_curve(curves.pro_fpr, curves.pro, fpr_limit)
