"""Exact threshold-free ranking metrics: ROC AUC, average precision, F1-max.

All three are computed from one descending sort of the raw scores. Tied scores form one threshold
(the curve jumps over the whole tie group at once), exactly as scikit-learn's ``roc_curve`` /
``precision_recall_curve`` do, so the values equal ``roc_auc_score``, ``average_precision_score``
and the maximum F1 over ``precision_recall_curve``. Only the order of the scores matters: any real
values work (distances of 20 or -3 as well as probabilities), and a positive affine transform of
the scores gives the identical value. Counts are integers, so AUROC is summed exactly in int64.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from semclip_bench.data.labels import NORMAL_LABEL
from semclip_bench.metrics.base import (
    NotAvailable,
    check_same_length,
    label_array,
    score_array,
    to_numpy,
    undefined_reason,
)

__all__ = ["f1_max", "image_ap", "image_auroc", "per_type_auroc"]

#: Elements per chunk in the reductions over curve points (bounds the temporaries to ~32 MB each).
_CHUNK = 1 << 22


@dataclass
class RankedCounts:
    """Cumulative counts at each distinct threshold, thresholds in descending order.

    ``tps[i]`` / ``fps[i]``: positives / negatives with score >= the i-th largest distinct score.
    The last entries are the totals.
    """

    tps: np.ndarray  # int64
    fps: np.ndarray  # int64

    @property
    def n_pos(self) -> int:
        return int(self.tps[-1])

    @property
    def n_neg(self) -> int:
        return int(self.fps[-1])


def float32_sort_key(scores: np.ndarray) -> np.ndarray:
    """uint32 keys with the order of the float32 scores (IEEE bits, sign-flipped; -0.0 == +0.0)."""
    bits = np.ascontiguousarray(scores, dtype=np.float32).view(np.uint32)
    key = bits >> np.uint32(31)  # 1 for negative numbers
    np.negative(key, out=key)  # 0 or 0xFFFFFFFF: negatives get all bits flipped ...
    key |= np.uint32(0x80000000)  # ... positives only the sign bit
    key ^= bits
    key[key == np.uint32(0x7FFFFFFF)] = np.uint32(0x80000000)  # -0.0 ties with +0.0
    return key


def sort_descending(scores: np.ndarray, payload: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sort keys of the scores and the payload, both in descending score order.

    Equal scores have equal keys (tie order is irrelevant: metrics only read tie-group ends).
    float32 scores with a payload of at most 32 bits (flags, region ids) are packed into one uint64
    per element and sorted in place: several times faster than ``argsort`` plus two gathers and
    without the int64 index array. Other dtypes fall back to ``argsort``.
    """
    small_payload = payload.dtype == bool or (
        payload.dtype.itemsize <= 4 and payload.dtype.kind in "iu"
    )
    if scores.dtype == np.float32 and small_payload:
        packed = float32_sort_key(scores).astype(np.uint64)
        packed <<= np.uint64(32)
        if payload.dtype == bool:
            packed |= payload
        else:
            packed |= payload.astype(np.uint32, copy=False)
        packed.sort()
        words = packed.view(np.uint32).reshape(-1, 2)[::-1]
        high, low = (1, 0) if sys.byteorder == "little" else (0, 1)
        return words[:, high], words[:, low]
    order = np.argsort(scores)[::-1]
    return scores[order], payload[order]


def tie_group_ends(sorted_desc: np.ndarray) -> np.ndarray:
    """Index of the last element of each group of equal values in a sorted array (int64)."""
    n = sorted_desc.size
    changes = np.empty(n, dtype=bool)
    np.not_equal(sorted_desc[1:], sorted_desc[:-1], out=changes[:-1])
    changes[-1] = True
    return np.flatnonzero(changes)


def counts_from_sorted(positive_sorted: np.ndarray, ends: np.ndarray) -> RankedCounts:
    """Cumulative positive / negative counts at the tie-group ends of a descending order."""
    n = positive_sorted.size
    dtype = np.int32 if n < np.iinfo(np.int32).max else np.int64
    tps = np.cumsum(positive_sorted, dtype=dtype)[ends].astype(np.int64)
    fps = ends + 1  # new array: ends stays usable by the caller
    fps -= tps
    return RankedCounts(tps=tps, fps=fps)


def ranked_counts(scores: np.ndarray, labels: np.ndarray) -> RankedCounts:
    """Sort once and count: the sufficient statistics of every threshold-free binary metric."""
    keys, positive_sorted = sort_descending(scores, labels)
    ends = tie_group_ends(keys)
    del keys
    return counts_from_sorted(positive_sorted.astype(bool, copy=False), ends)


def _chunks(m: int):
    for start in range(0, m, _CHUNK):
        yield start, min(start + _CHUNK, m)


def auroc_from_counts(c: RankedCounts) -> float:
    """Trapezoidal area under the ROC curve (sklearn ``roc_curve`` + ``auc``), summed in integers.

    2 * area * P * N = sum over thresholds of dFP * (TP_prev + TP); the tie groups are the
    diagonal segments that give tied pairs half credit.
    """
    n_pos, n_neg = c.n_pos, c.n_neg
    exact_int = 2 * n_pos * n_neg < 2**62
    total: int | float = 0 if exact_int else 0.0
    for a, b in _chunks(c.tps.size):
        tp = c.tps[a:b]
        fp = c.fps[a:b]
        tp_prev = np.empty_like(tp)
        tp_prev[0] = c.tps[a - 1] if a else 0
        tp_prev[1:] = tp[:-1]
        fp_prev = np.empty_like(fp)
        fp_prev[0] = c.fps[a - 1] if a else 0
        fp_prev[1:] = fp[:-1]
        dfp = fp - fp_prev
        tp_prev += tp
        if exact_int:
            total += int(np.dot(dfp, tp_prev))
        else:
            total += float(np.dot(dfp.astype(np.float64), tp_prev.astype(np.float64)))
    return float(total / (2 * n_pos * n_neg)) if exact_int else total / (2.0 * n_pos * n_neg)


def ap_from_counts(c: RankedCounts) -> float:
    """Average precision as scikit-learn defines it: sum over thresholds of dRecall * Precision."""
    n_pos = c.n_pos
    total = 0.0
    for a, b in _chunks(c.tps.size):
        tp = c.tps[a:b]
        fp = c.fps[a:b]
        tp_prev = np.empty_like(tp)
        tp_prev[0] = c.tps[a - 1] if a else 0
        tp_prev[1:] = tp[:-1]
        dtp = tp - tp_prev
        precision = tp / (tp + fp)
        total += float(np.dot(dtp.astype(np.float64), precision))
    return total / n_pos


def f1max_from_counts(c: RankedCounts) -> float:
    """Max over thresholds of F1 = 2 TP / (2 TP + FP + FN) = 2 TP / (TP + FP + P)."""
    n_pos = c.n_pos
    best = 0.0
    for a, b in _chunks(c.tps.size):
        tp = c.tps[a:b]
        f1 = (2.0 * tp) / (tp + c.fps[a:b] + n_pos)
        best = max(best, float(f1.max()))
    return best


def _prepare(scores: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    s = score_array(scores)
    y = label_array(labels)
    check_same_length(s, y)
    return s, y


def image_auroc(scores: Any, labels: Any) -> float:
    """ROC AUC of scores, defect (label 1) vs normal (label 0); equals sklearn ``roc_auc_score``.

    Exact on the concatenated raw scores. ``NotAvailable`` when there is one class only, the input
    is empty or a score is NaN.
    """
    s, y = _prepare(scores, labels)
    reason = undefined_reason(s, y)
    if reason:
        return NotAvailable(reason)
    return auroc_from_counts(ranked_counts(s, y))


def image_ap(scores: Any, labels: Any) -> float:
    """Average precision (sklearn ``average_precision_score``), label 1 = defect = positive.

    ``NotAvailable`` with one class only (all-defect AP is trivially 1 and says nothing about the
    scores), on empty input and on NaN scores.
    """
    s, y = _prepare(scores, labels)
    reason = undefined_reason(s, y)
    if reason:
        return NotAvailable(reason)
    return ap_from_counts(ranked_counts(s, y))


def f1_max(scores: Any, labels: Any) -> float:
    """Maximum F1 over all thresholds (threshold-free, an upper bound: label it "max").

    Equals ``max(2PR / (P + R))`` over sklearn's ``precision_recall_curve``. Works on flattened
    pixels as well as on image scores. ``NotAvailable`` with one class only, empty input or NaN.
    """
    s, y = _prepare(scores, labels)
    reason = undefined_reason(s, y)
    if reason:
        return NotAvailable(reason)
    return f1max_from_counts(ranked_counts(s, y))


def per_type_auroc(
    scores: Any, labels: Any, types: Sequence[str] | np.ndarray, normal: str = NORMAL_LABEL
) -> dict[str, float]:
    """iAUROC of each defect type's images against all normal images (label 0).

    ``types`` gives each image's defect type (``normal`` for normal images); the types of the
    defect images (label 1) define the keys, sorted by name. A type whose image is labelled 0 but
    named otherwise is an inconsistency and raises ``ValueError``.
    """
    s, y = _prepare(scores, labels)
    t = _type_array(types, s.shape[0])
    if np.any(~y & (t != normal)):
        bad = sorted(set(t[~y & (t != normal)].tolist()))[:5]
        raise ValueError(f"images labelled normal (0) have defect types {bad}")
    normal_mask = ~y
    result: dict[str, float] = {}
    for name in sorted(set(t[y].tolist())):
        keep = normal_mask | (t == name)
        result[name] = image_auroc(s[keep], y[keep])
    return result


def _type_array(types: Sequence[str] | np.ndarray, n: int) -> np.ndarray:
    arr = to_numpy(types) if not isinstance(types, (list, tuple)) else np.asarray(types)
    arr = arr.astype(str).reshape(-1)
    if arr.shape[0] != n:
        raise ValueError(f"types and scores differ in length: {arr.shape[0]} vs {n}")
    return arr
