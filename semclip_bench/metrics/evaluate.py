"""All metrics of one query set in one dict (the row a table or a CSV gets)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from semclip_bench.data.labels import NORMAL_LABEL
from semclip_bench.metrics.base import NotAvailable, label_array, score_array, undefined_reason
from semclip_bench.metrics.classification import classification_metrics
from semclip_bench.metrics.pixel import (
    PixelTruth,
    pixel_data,
    pixel_metric_values,
    pixel_reason,
)
from semclip_bench.metrics.ranking import (
    ap_from_counts,
    auroc_from_counts,
    f1max_from_counts,
    per_type_auroc,
    ranked_counts,
)

__all__ = ["CLASSIFICATION_KEYS", "IMAGE_KEYS", "PIXEL_KEYS", "evaluate"]

IMAGE_KEYS = ("iAUROC", "iAP", "iF1max")
PIXEL_KEYS = ("pAUROC", "pF1max", "AUPRO")
CLASSIFICATION_KEYS = ("cls_accuracy", "cls_precision", "cls_recall", "cls_f1")


def evaluate(
    image_scores: Any,
    image_labels: Any,
    maps: Any = None,
    masks: Any = None,
    types: Sequence[str] | np.ndarray | None = None,
    class_pred: Any = None,
    class_target: Any = None,
    num_classes: int | None = None,
    fpr_limit: float = 0.3,
    normal: str = NORMAL_LABEL,
    device: Any = None,
    pixel_truth: PixelTruth | None = None,
    masks_reason: str | None = None,
) -> dict[str, float]:
    """Every metric of ``PROTOCOL.md`` for one query set, exact, on the concatenated raw scores.

    Keys: iAUROC, iAP, iF1max, pAUROC, pF1max, AUPRO, cls_accuracy, cls_precision, cls_recall,
    cls_f1 are always present, so every row of a table has the same columns: a metric that cannot
    be computed is a ``NotAvailable`` with the reason ("no pixel maps", "no ground-truth masks",
    "no class predictions", "no defect pixels", ...). With ``types`` (each image's defect type,
    ``normal`` for normal images) also ``iAUROC/<type>`` for each defect type present (that type's
    images vs the normal images). ``num_classes`` defaults to the score columns of a 2-D
    ``class_pred``, else to the largest class id + 1. The pixel metrics share one sort, done where
    ``device`` says (see ``semclip_bench.metrics.pixel``: CUDA-tensor maps stay on their GPU).
    ``pixel_truth``: the masks' side already built by ``pixel_truth(masks, map_shapes)`` (with
    regions); ``masks`` is then not read. Methods scored on one query set can share it.
    ``masks_reason`` says why ``masks`` is None (e.g. "no masks", "masks missing for bridge": a
    dataset with image-level labels only); it becomes the pixel metrics' n/a reason.
    """
    scores = score_array(image_scores)
    labels = label_array(image_labels, "image_labels")
    if scores.shape[0] != labels.shape[0]:
        raise ValueError(
            f"image_scores and image_labels differ in length: {scores.shape[0]} vs "
            f"{labels.shape[0]}"
        )
    result: dict[str, float] = {}
    reason = undefined_reason(scores, labels, unit="images")
    if reason:
        result.update({k: NotAvailable(reason) for k in IMAGE_KEYS})
    else:
        counts = ranked_counts(scores, labels)
        result["iAUROC"] = auroc_from_counts(counts)
        result["iAP"] = ap_from_counts(counts)
        result["iF1max"] = f1max_from_counts(counts)

    result.update(_pixel_metrics(maps, masks, fpr_limit, device, pixel_truth, masks_reason))
    result.update(_classification(class_pred, class_target, num_classes))

    if types is not None:
        for name, value in per_type_auroc(scores, labels, types, normal=normal).items():
            result[f"iAUROC/{name}"] = value
    return result


def _pixel_metrics(
    maps: Any,
    masks: Any,
    fpr_limit: float,
    device: Any,
    truth: PixelTruth | None = None,
    masks_reason: str | None = None,
) -> dict[str, float]:
    if maps is None:
        return {k: NotAvailable("no pixel maps") for k in PIXEL_KEYS}
    if masks is None and truth is None:
        return {k: NotAvailable(masks_reason or "no ground-truth masks") for k in PIXEL_KEYS}
    if not 0.0 < fpr_limit <= 1.0:
        raise ValueError(f"fpr_limit must be in (0, 1], got {fpr_limit}")
    data = pixel_data(maps, masks, with_regions=True, device=device, truth=truth)
    reason = pixel_reason(data)
    if reason:
        return {k: NotAvailable(reason) for k in PIXEL_KEYS}
    pauroc, pf1max, aupro = pixel_metric_values(data, fpr_limit)
    return {"pAUROC": pauroc, "pF1max": pf1max, "AUPRO": aupro}


def _classification(pred: Any, target: Any, num_classes: int | None) -> dict[str, float]:
    if pred is None:
        return {k: NotAvailable("no class predictions") for k in CLASSIFICATION_KEYS}
    if target is None:
        raise ValueError("class_pred is given but class_target is not")
    if num_classes is None:
        p = np.asarray(pred.detach().cpu() if hasattr(pred, "detach") else pred)
        t = np.asarray(target.detach().cpu() if hasattr(target, "detach") else target)
        if p.ndim == 2:
            num_classes = p.shape[1]
        else:
            num_classes = int(max(p.max(initial=0), t.max(initial=0))) + 1
    values = classification_metrics(pred, target, num_classes)
    return {f"cls_{k}": v for k, v in values.items()}
