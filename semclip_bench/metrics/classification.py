"""Multi-class defect-type classification metrics (accuracy and macro precision / recall / F1).

Macro averages follow scikit-learn's ``precision_recall_fscore_support(target, pred,
average="macro", zero_division=0)``: the average runs over the classes that occur in the target or
in the predictions (a class that is neither true nor predicted on this query set says nothing and
is left out instead of counting as 0); within it, a 0/0 precision or recall counts as 0 (a class
never predicted although present was missed), and F1 is averaged per class, not computed from
the macro precision and recall.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from semclip_bench.metrics.base import NotAvailable, is_batch_list, to_numpy

__all__ = ["classification_metrics", "type_scores"]

_KEYS = ("accuracy", "precision", "recall", "f1")


def _class_ids(x: Any, name: str, num_classes: int) -> np.ndarray:
    parts = [to_numpy(b) for b in x] if is_batch_list(x) else [to_numpy(x)]
    arr = parts[0] if len(parts) == 1 else np.concatenate(parts)
    if arr.ndim == 2:  # (N, C) scores or logits: the predicted class is the arg-max
        if arr.shape[1] != num_classes:
            raise ValueError(f"{name} has {arr.shape[1]} score columns, expected {num_classes}")
        arr = arr.argmax(axis=1) if arr.shape[0] else np.zeros(0, dtype=np.int64)
    arr = arr.reshape(-1)
    if arr.dtype.kind == "f":
        if arr.size and not np.all(arr == np.round(arr)):
            raise ValueError(f"{name} must be integer class ids")
        arr = arr.astype(np.int64)
    if arr.dtype.kind not in "biu":
        raise ValueError(f"{name} must be integer class ids, got dtype {arr.dtype}")
    arr = arr.astype(np.int64)
    if arr.size and (arr.min() < 0 or arr.max() >= num_classes):
        raise ValueError(f"{name} has class ids outside [0, {num_classes})")
    return arr


def classification_metrics(pred: Any, target: Any, num_classes: int) -> dict[str, float]:
    """Accuracy, macro precision, macro recall and macro F1 of predicted class ids.

    ``pred`` is (N,) class ids or (N, num_classes) scores (arg-max taken); ``target`` (N,) ids.
    Returns ``{"accuracy", "precision", "recall", "f1"}``; all ``NotAvailable`` on empty input.
    """
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    p = _class_ids(pred, "pred", num_classes)
    t = _class_ids(target, "target", num_classes)
    if p.shape[0] != t.shape[0]:
        raise ValueError(f"pred and target differ in length: {p.shape[0]} vs {t.shape[0]}")
    if p.size == 0:
        return {k: NotAvailable("empty input") for k in _KEYS}
    confusion = np.bincount(t * num_classes + p, minlength=num_classes**2).reshape(
        num_classes, num_classes
    )
    tp = np.diag(confusion).astype(np.float64)
    predicted = confusion.sum(axis=0).astype(np.float64)
    actual = confusion.sum(axis=1).astype(np.float64)
    present = (predicted > 0) | (actual > 0)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, actual, out=np.zeros_like(tp), where=actual > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    return {
        "accuracy": float(tp.sum() / p.size),
        "precision": float(precision[present].mean()),
        "recall": float(recall[present].mean()),
        "f1": float(f1[present].mean()),
    }


def type_scores(pred: np.ndarray, target: np.ndarray, num_classes: int) -> dict[str, Any]:
    """Accuracy, macro-F1 and the confusion matrix (rows: true, columns: predicted) by
    torchmetrics; its macro average leaves out classes neither true nor predicted, as
    :func:`classification_metrics` does (tests check both agree)."""
    import torch
    from torchmetrics.functional.classification import (
        multiclass_accuracy,
        multiclass_confusion_matrix,
        multiclass_f1_score,
    )

    p = torch.as_tensor(np.asarray(pred, dtype=np.int64))
    t = torch.as_tensor(np.asarray(target, dtype=np.int64))
    if p.numel() == 0:
        return {"accuracy": NotAvailable("empty input"), "f1": NotAvailable("empty input")}
    n = max(num_classes, 2)  # torchmetrics needs two classes; an absent one is left out anyway
    confusion = multiclass_confusion_matrix(p, t, num_classes=n).numpy()
    return {
        "accuracy": float(multiclass_accuracy(p, t, num_classes=n, average="micro")),
        "f1": float(multiclass_f1_score(p, t, num_classes=n, average="macro")),
        "confusion": confusion[:num_classes, :num_classes],
    }
