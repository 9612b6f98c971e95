"""Exact evaluation metrics of the benchmark (definitions: ``docs/PROTOCOL.md``).

Plain functions on numpy arrays or torch tensors (or lists of batches, concatenated first):
always computed on the concatenated raw scores, no sigmoid, no clipping, ties as scikit-learn
handles them. Undefined values are ``NotAvailable`` (a NaN float with a ``.reason``) and print as
``n/a (reason)``; they never raise inside a sweep.
"""

from semclip_bench.metrics.base import NotAvailable, format_metric, is_available
from semclip_bench.metrics.classification import classification_metrics
from semclip_bench.metrics.evaluate import (
    CLASSIFICATION_KEYS,
    IMAGE_KEYS,
    PIXEL_KEYS,
    evaluate,
)
from semclip_bench.metrics.pixel import (
    PixelTruth,
    aupro,
    pixel_auroc,
    pixel_f1_max,
    pixel_truth,
    resize_mask_nearest,
)
from semclip_bench.metrics.ranking import f1_max, image_ap, image_auroc, per_type_auroc

__all__ = [
    "CLASSIFICATION_KEYS",
    "IMAGE_KEYS",
    "PIXEL_KEYS",
    "NotAvailable",
    "PixelTruth",
    "aupro",
    "classification_metrics",
    "evaluate",
    "f1_max",
    "format_metric",
    "image_ap",
    "image_auroc",
    "is_available",
    "per_type_auroc",
    "pixel_auroc",
    "pixel_f1_max",
    "pixel_truth",
    "resize_mask_nearest",
]
