"""Classification metrics against scikit-learn's macro averages."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, precision_recall_fscore_support

from semclip_bench.metrics import NotAvailable, classification_metrics


def _sklearn(pred: np.ndarray, target: np.ndarray) -> dict[str, float]:
    p, r, f, _ = precision_recall_fscore_support(target, pred, average="macro", zero_division=0)
    return {"accuracy": accuracy_score(target, pred), "precision": p, "recall": r, "f1": f}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_sklearn_macro(seed: int) -> None:
    rng = np.random.default_rng(seed)
    target = rng.integers(0, 7, size=120)
    pred = np.where(rng.random(120) < 0.6, target, rng.integers(0, 7, size=120))
    ours = classification_metrics(pred, target, num_classes=7)
    for key, value in _sklearn(pred, target).items():
        assert ours[key] == pytest.approx(value, abs=1e-12)


def test_never_predicted_and_absent_classes() -> None:
    target = np.array([0, 0, 1, 1, 2, 2])
    pred = np.array([0, 0, 1, 0, 0, 4])  # class 2 never predicted, 4 predicted but absent, 3 unused
    ours = classification_metrics(pred, target, num_classes=6)
    for key, value in _sklearn(pred, target).items():
        assert ours[key] == pytest.approx(value, abs=1e-12)
    # Class 3 (neither true nor predicted) is left out: 4 classes in the average, not 6.
    assert ours["recall"] == pytest.approx((1.0 + 0.5 + 0.0 + 0.0) / 4)


def test_scores_input_takes_argmax_and_torch_works() -> None:
    logits = torch.tensor([[2.0, 0.1, 0.3], [0.0, 5.0, 1.0], [0.2, 0.1, 0.9], [3.0, 0.0, 0.0]])
    target = torch.tensor([0, 1, 1, 0])
    ours = classification_metrics(logits, target, num_classes=3)
    assert ours == classification_metrics(np.array([0, 1, 2, 0]), target.numpy(), 3)
    assert ours["accuracy"] == 0.75


def test_empty_and_invalid() -> None:
    empty = classification_metrics(np.array([], dtype=int), np.array([], dtype=int), 3)
    assert all(isinstance(v, NotAvailable) and v.reason == "empty input" for v in empty.values())
    with pytest.raises(ValueError, match="outside"):
        classification_metrics([0, 3], [0, 1], num_classes=3)
    with pytest.raises(ValueError, match="differ in length"):
        classification_metrics([0, 1], [0], num_classes=3)


def test_torchmetrics_type_scores_match_the_exact_functions() -> None:
    import numpy as np

    from semclip_bench.metrics.bootstrap import classification_replicates
    from semclip_bench.metrics.classification import classification_metrics, type_scores

    rng = np.random.default_rng(7)
    for n_classes in (1, 2, 4, 6):
        target = rng.integers(0, n_classes, 50)
        pred = np.where(rng.random(50) < 0.4, target, rng.integers(0, n_classes, 50))
        if n_classes > 1:
            pred[pred == n_classes - 1] = 0  # a class never predicted
        scores = type_scores(pred, target, n_classes)
        exact = classification_metrics(pred, target, n_classes)
        assert abs(scores["accuracy"] - exact["accuracy"]) < 1e-6
        assert abs(scores["f1"] - exact["f1"]) < 1e-6
        confusion = np.zeros((n_classes, n_classes), dtype=np.int64)
        np.add.at(confusion, (target, pred), 1)
        assert (scores["confusion"] == confusion).all()
        unit = classification_replicates(target, pred, n_classes, np.ones((1, 50)))
        assert abs(unit["type_f1"][0] - exact["f1"]) < 1e-12
