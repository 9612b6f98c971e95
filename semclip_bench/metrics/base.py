"""Shared pieces of the metrics: the "not available" value, formatting and input conversion.

Every metric accepts numpy arrays, torch tensors (any device, any float dtype) or a list of such
batches, which are concatenated first: a metric is always computed on the whole query set at once,
so the result cannot depend on how the data was batched (see ``PROTOCOL.md``).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

__all__ = ["NotAvailable", "format_metric", "is_available"]


class NotAvailable(float):
    """A metric value that is undefined on the given data: a float NaN that carries its reason.

    It behaves as ``float("nan")`` in arithmetic, comparisons and ``math.isnan`` (so means over
    seeds stay NaN instead of silently using a made-up 0 or 0.5), and prints as ``n/a (reason)``.
    """

    __slots__ = ("reason",)
    reason: str

    def __new__(cls, reason: str) -> NotAvailable:
        value = super().__new__(cls, math.nan)
        value.reason = str(reason)
        return value

    def __str__(self) -> str:
        return f"n/a ({self.reason})"

    def __repr__(self) -> str:
        return f"NotAvailable({self.reason!r})"

    def __format__(self, spec: str) -> str:
        # "{:.3f}".format(value) in a table must print the reason, not "nan".
        return str(self)

    def __reduce__(self) -> tuple[type, tuple[str]]:
        return (NotAvailable, (self.reason,))

    def __copy__(self) -> NotAvailable:
        return self

    def __deepcopy__(self, memo: dict) -> NotAvailable:
        return self


def is_available(value: Any) -> bool:
    """True for a finite-or-infinite real number, False for None, NaN and ``NotAvailable``."""
    if value is None:
        return False
    try:
        return not math.isnan(float(value))
    except (TypeError, ValueError):
        return False


def format_metric(value: Any, digits: int = 1, percent: bool = True) -> str:
    """Format a metric for a table: ``93.1`` (percent by default), or ``n/a (reason)``.

    ``NotAvailable`` prints its reason; a plain NaN or None prints ``n/a``.
    """
    if isinstance(value, NotAvailable):
        return str(value)
    if not is_available(value):
        return "n/a"
    number = float(value) * (100.0 if percent else 1.0)
    return f"{number:.{digits}f}"


# --------------------------------------------------------------------------------------------
# Input conversion (internal).


def is_tensor(x: Any) -> bool:
    return isinstance(x, torch.Tensor)


def to_numpy(x: Any) -> np.ndarray:
    """An array view of ``x``: tensors go to CPU; float16/bfloat16 widen exactly to float32."""
    if is_tensor(x):
        t = x.detach()
        if t.dtype in (torch.float16, torch.bfloat16):
            t = t.float()
        return t.cpu().numpy()
    return np.asarray(x)


def is_batch_list(x: Any) -> bool:
    """True for a list/tuple of arrays or tensors (batches to concatenate)."""
    return (
        isinstance(x, (list, tuple))
        and len(x) > 0
        and all(is_tensor(b) or isinstance(b, np.ndarray) for b in x)
    )


def score_array(x: Any) -> np.ndarray:
    """Scores as one 1-D array (float32/64 kept; ints exact up to 2**53 as float64); batches joined.

    Raw values are kept exactly: no sigmoid, no clipping, no normalisation.
    """
    parts = [to_numpy(b) for b in x] if is_batch_list(x) else [to_numpy(x)]
    parts = [_squeeze_1d(p, "scores") for p in parts]
    arr = parts[0] if len(parts) == 1 else np.concatenate(parts)
    if arr.dtype == np.float32 or arr.dtype == np.float64:
        return arr
    if arr.dtype == np.float16:
        return arr.astype(np.float32)
    if arr.dtype.kind in "biuf":
        return arr.astype(np.float64)
    raise ValueError(f"scores must be real numbers, got dtype {arr.dtype}")


def label_array(x: Any, name: str = "labels") -> np.ndarray:
    """Binary labels (bool, or numbers that are all 0 or 1) as one 1-D bool array."""
    parts = [to_numpy(b) for b in x] if is_batch_list(x) else [to_numpy(x)]
    parts = [_squeeze_1d(p, name) for p in parts]
    arr = parts[0] if len(parts) == 1 else np.concatenate(parts)
    if arr.dtype == bool:
        return arr
    if arr.dtype.kind not in "biuf":
        raise ValueError(f"{name} must be 0/1 numbers or booleans, got dtype {arr.dtype}")
    positive = arr == 1
    if not np.all(positive | (arr == 0)):
        bad = np.unique(arr[~(positive | (arr == 0))])[:5]
        raise ValueError(f"{name} must be 0 or 1, found {bad.tolist()}")
    return positive


def _squeeze_1d(arr: np.ndarray, name: str) -> np.ndarray:
    if arr.ndim == 0:
        return arr.reshape(1)
    if arr.ndim == 2 and arr.shape[1] == 1:
        return arr[:, 0]
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D (one value per sample), got shape {arr.shape}")
    return arr


def check_same_length(scores: np.ndarray, labels: np.ndarray, what: str = "scores") -> None:
    if scores.shape[0] != labels.shape[0]:
        raise ValueError(
            f"{what} and labels differ in length: {scores.shape[0]} vs {labels.shape[0]}"
        )


def undefined_reason(scores: np.ndarray, labels: np.ndarray, unit: str = "samples") -> str | None:
    """Why a ranking metric is undefined on (scores, labels), or None if it is defined."""
    if scores.size == 0:
        return "empty input"
    if np.isnan(scores).any():
        return "NaN in scores"
    n_pos = int(np.count_nonzero(labels))
    if n_pos == 0:
        return f"no defect {unit}"
    if n_pos == labels.size:
        return f"no normal {unit}"
    return None
