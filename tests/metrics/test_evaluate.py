"""evaluate(): one dict with every metric, equal to the individual functions."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from semclip_bench.metrics import (
    NotAvailable,
    aupro,
    classification_metrics,
    evaluate,
    f1_max,
    image_ap,
    image_auroc,
    per_type_auroc,
    pixel_auroc,
    pixel_f1_max,
)

BASE_KEYS = {
    "iAUROC", "iAP", "iF1max", "pAUROC", "pF1max", "AUPRO",
    "cls_accuracy", "cls_precision", "cls_recall", "cls_f1",
}  # fmt: skip


def _query_set(seed: int = 0):
    rng = np.random.default_rng(seed)
    types = np.array(["good"] * 6 + ["hole"] * 3 + ["scratch"] * 3)
    labels = (types != "good").astype(np.int64)
    masks = np.zeros((12, 16, 16), dtype=np.float32)
    for i in range(6, 12):
        r, c = rng.integers(0, 12, size=2)
        masks[i, r : r + rng.integers(1, 5), c : c + rng.integers(1, 5)] = 1.0
    maps = rng.normal(size=masks.shape).astype(np.float32) + masks
    scores = maps.reshape(12, -1).max(axis=1) + rng.normal(size=12)
    target = np.array([0] * 6 + [1] * 3 + [2] * 3)
    pred = np.where(rng.random(12) < 0.7, target, rng.integers(0, 3, size=12))
    return scores, labels, maps, masks, types, pred, target


def test_evaluate_equals_individual_functions() -> None:
    scores, labels, maps, masks, types, pred, target = _query_set()
    result = evaluate(
        torch.from_numpy(scores), labels, maps=torch.from_numpy(maps), masks=masks,
        types=list(types), class_pred=pred, class_target=target, num_classes=3,
    )  # fmt: skip
    assert set(result) == BASE_KEYS | {"iAUROC/hole", "iAUROC/scratch"}
    assert result["iAUROC"] == image_auroc(scores, labels)
    assert result["iAP"] == image_ap(scores, labels)
    assert result["iF1max"] == f1_max(scores, labels)
    assert result["pAUROC"] == pixel_auroc(maps, masks)
    assert result["pF1max"] == pixel_f1_max(maps, masks)
    assert result["AUPRO"] == aupro(maps, masks)
    for name, value in per_type_auroc(scores, labels, types).items():
        assert result[f"iAUROC/{name}"] == value
    for name, value in classification_metrics(pred, target, 3).items():
        assert result[f"cls_{name}"] == value
    assert all(0.0 <= v <= 1.0 for v in result.values())


def test_missing_parts_are_not_available_with_reason() -> None:
    scores, labels, maps, _masks, *_ = _query_set(1)
    result = evaluate(scores, labels)
    assert set(result) == BASE_KEYS
    assert str(result["pAUROC"]) == "n/a (no pixel maps)"
    assert str(result["cls_f1"]) == "n/a (no class predictions)"
    assert str(evaluate(scores, labels, maps=maps)["AUPRO"]) == "n/a (no ground-truth masks)"
    assert result["iAUROC"] == image_auroc(scores, labels)


def test_one_class_query_set_never_raises() -> None:
    scores, labels, maps, masks, types, *_ = _query_set(2)
    normal = labels == 0
    result = evaluate(
        scores[normal], labels[normal], maps=maps[normal], masks=masks[normal],
        types=types[normal],
    )  # fmt: skip
    assert set(result) == BASE_KEYS  # no defect type present
    for key in ("iAUROC", "iAP", "iF1max"):
        assert isinstance(result[key], NotAvailable)
        assert result[key].reason == "no defect images"
    assert result["pAUROC"].reason == "no defect pixels"


def test_num_classes_inferred() -> None:
    scores, labels, *_, pred, target = _query_set(3)
    inferred = evaluate(scores, labels, class_pred=pred, class_target=target)
    explicit = evaluate(scores, labels, class_pred=pred, class_target=target, num_classes=3)
    assert inferred == pytest.approx(explicit, nan_ok=True)
    with pytest.raises(ValueError, match="class_target"):
        evaluate(scores, labels, class_pred=pred)
