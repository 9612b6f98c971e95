"""Image-level ranking metrics against scikit-learn, on awkward inputs."""

from __future__ import annotations

import itertools
import math
import pickle

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score

from semclip_bench.metrics import (
    NotAvailable,
    f1_max,
    format_metric,
    image_ap,
    image_auroc,
    is_available,
    per_type_auroc,
)
from semclip_bench.metrics.ranking import float32_sort_key


def sk_f1_max(labels: np.ndarray, scores: np.ndarray) -> float:
    precision, recall, _ = precision_recall_curve(labels, scores)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(denom), where=denom > 0)
    return float(f1.max())


def assert_matches_sklearn(scores: np.ndarray, labels: np.ndarray) -> None:
    assert image_auroc(scores, labels) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert image_ap(scores, labels) == pytest.approx(
        average_precision_score(labels, scores), abs=1e-12
    )
    assert f1_max(scores, labels) == pytest.approx(sk_f1_max(labels, scores), abs=1e-12)


def _data(seed: int, n: int = 500, prevalence: float = 0.3):
    rng = np.random.default_rng(seed)
    labels = rng.random(n) < prevalence
    labels[:2] = [True, False]
    scores = rng.normal(size=n) + 0.8 * labels
    return scores, labels


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_random_scores_match_sklearn(seed: int, dtype: type) -> None:
    scores, labels = _data(seed)
    assert_matches_sklearn(scores.astype(dtype), labels)


@pytest.mark.parametrize("decimals", [0, 1])
def test_heavy_ties_match_sklearn(decimals: int) -> None:
    scores, labels = _data(3, n=800)
    tied = np.round(scores, decimals)  # decimals=0: ~7 distinct values for 800 samples
    assert np.unique(tied).size < 80  # >= 10 samples per distinct value
    assert_matches_sklearn(tied, labels.astype(np.int64))


def test_all_equal_scores() -> None:
    labels = np.array([0, 1, 1, 0, 0, 1, 0, 0])
    scores = np.full(8, 3.25)
    assert image_auroc(scores, labels) == 0.5
    assert image_ap(scores, labels) == pytest.approx(3 / 8)
    # One threshold: everything positive -> F1 = 2*3 / (2*3 + 5).
    assert f1_max(scores, labels) == pytest.approx(6 / 11)
    assert_matches_sklearn(scores, labels)


def test_perfect_and_inverted_ranking() -> None:
    labels = np.array([0, 0, 0, 1, 1])
    scores = np.arange(5.0)
    assert image_auroc(scores, labels) == 1.0
    assert image_auroc(-scores, labels) == 0.0
    assert image_ap(scores, labels) == 1.0
    assert f1_max(scores, labels) == 1.0


@pytest.mark.parametrize(("scale", "shift"), [(1.0, 20.0), (4.0, -3.0), (0.001, 1e3), (250.0, 0)])
def test_positive_affine_transform_gives_identical_values(scale: float, shift: float) -> None:
    rng = np.random.default_rng(4)
    labels = rng.random(300) < 0.4
    # Multiples of 1/64 with a few ties: every transform below is exact in float64.
    scores = rng.integers(-200, 200, size=300) / 64.0
    transformed = scores * scale + shift
    for metric in (image_auroc, image_ap, f1_max):
        assert metric(transformed, labels) == metric(scores, labels)


def test_sigmoid_pitfall_is_avoided() -> None:
    """Raw distances around 20 rank as well as the same distances minus 20 (no squashing)."""
    rng = np.random.default_rng(5)
    labels = rng.random(400) < 0.5
    scores = (20.0 + rng.normal(scale=0.5, size=400) + 0.5 * labels).astype(np.float32)
    expected = roc_auc_score(labels, scores)
    assert expected > 0.7
    assert image_auroc(scores, labels) == pytest.approx(expected, abs=1e-12)
    assert image_auroc(scores - np.float32(20.0), labels) == image_auroc(scores, labels)
    # What a sigmoid would have done: float32 sigmoid(~20) saturates, the ranking is lost.
    squashed = torch.sigmoid(torch.from_numpy(scores))
    assert torch.unique(squashed).numel() < 10
    assert image_auroc(squashed, labels) < expected - 0.1


def test_torch_and_numpy_inputs_agree() -> None:
    scores, labels = _data(6)
    t_scores = torch.from_numpy(scores.astype(np.float32))
    t_labels = torch.from_numpy(labels.astype(np.int64))
    for metric in (image_auroc, image_ap, f1_max):
        assert metric(t_scores, t_labels) == metric(scores.astype(np.float32), labels)
    half = t_scores.to(torch.bfloat16)
    assert image_auroc(half, t_labels) == pytest.approx(
        roc_auc_score(labels, half.float().numpy()), abs=1e-12
    )


def test_chunked_batches_equal_whole() -> None:
    scores, labels = _data(7, n=301)
    cuts = [0, 17, 18, 150, 301]
    score_batches = [torch.from_numpy(scores[a:b]) for a, b in itertools.pairwise(cuts)]
    label_batches = [labels[a:b] for a, b in itertools.pairwise(cuts)]
    for metric in (image_auroc, image_ap, f1_max):
        whole = metric(scores, labels)
        assert metric(score_batches, label_batches) == whole
        assert metric(np.concatenate([b.numpy() for b in score_batches]), labels) == whole


def test_column_vector_scores_accepted() -> None:
    scores, labels = _data(8, n=50)
    assert image_auroc(scores[:, None], labels) == image_auroc(scores, labels)


@pytest.mark.parametrize(
    ("scores", "labels", "reason"),
    [
        ([0.1, 0.5, 0.3], [0, 0, 0], "no defect samples"),
        ([0.1, 0.5, 0.3], [1, 1, 1], "no normal samples"),
        ([], [], "empty input"),
        ([0.1, float("nan"), 0.3], [0, 1, 1], "NaN in scores"),
    ],
)
def test_undefined_cases_give_not_available(scores: list, labels: list, reason: str) -> None:
    for metric in (image_auroc, image_ap, f1_max):
        value = metric(np.asarray(scores, dtype=np.float64), np.asarray(labels))
        assert isinstance(value, NotAvailable)
        assert math.isnan(value)
        assert value.reason == reason
        assert str(value) == f"n/a ({reason})"


def test_bad_inputs_raise() -> None:
    with pytest.raises(ValueError, match="differ in length"):
        image_auroc([0.1, 0.2], [0, 1, 1])
    with pytest.raises(ValueError, match="must be 0 or 1"):
        image_auroc([0.1, 0.2, 0.3], [0, 1, 2])
    with pytest.raises(ValueError, match="1-D"):
        image_auroc(np.zeros((3, 2)), [0, 1, 1])


def test_not_available_behaves_as_nan_with_reason() -> None:
    value = NotAvailable("only one class")
    assert isinstance(value, float)
    assert math.isnan(value) and value != value
    assert str(value) == "n/a (only one class)"
    assert f"{value:.3f}" == "n/a (only one class)"
    assert repr(value) == "NotAvailable('only one class')"
    copy = pickle.loads(pickle.dumps(value))
    assert isinstance(copy, NotAvailable) and copy.reason == "only one class"
    assert math.isnan(np.mean([0.9, value]))  # a mean over seeds stays undefined
    assert format_metric(value) == "n/a (only one class)"
    assert format_metric(float("nan")) == "n/a"
    assert format_metric(None) == "n/a"
    assert format_metric(0.93149) == "93.1"
    assert format_metric(0.93149, digits=3, percent=False) == "0.931"
    assert not is_available(value) and is_available(0.5)


def test_per_type_auroc_against_sklearn() -> None:
    rng = np.random.default_rng(9)
    types = np.array(["good"] * 40 + ["bridge"] * 15 + ["particle"] * 25)
    labels = types != "good"
    scores = rng.normal(size=80) + np.where(types == "bridge", 2.0, 0.0) + 0.3 * labels
    result = per_type_auroc(scores, labels, list(types))
    assert list(result) == ["bridge", "particle"]
    for name, value in result.items():
        keep = (types == "good") | (types == name)
        assert value == pytest.approx(roc_auc_score(labels[keep], scores[keep]), abs=1e-12)
    assert result["bridge"] > result["particle"]


def test_per_type_auroc_without_normals_is_not_available() -> None:
    result = per_type_auroc([0.1, 0.4], [1, 1], ["hole", "scratch"])
    assert set(result) == {"hole", "scratch"}
    assert all(isinstance(v, NotAvailable) for v in result.values())


def test_per_type_auroc_rejects_inconsistent_types() -> None:
    with pytest.raises(ValueError, match="labelled normal"):
        per_type_auroc([0.1, 0.4, 0.3], [0, 1, 0], ["good", "hole", "hole"])


def test_float32_sort_key_orders_like_the_floats() -> None:
    values = np.array(
        [-np.inf, -1e30, -2.5, -1e-40, -0.0, 0.0, 1e-45, 1e-40, 1.0, 1e30, np.inf], dtype=np.float32
    )
    keys = float32_sort_key(values).astype(np.int64)
    assert keys[4] == keys[5]  # -0.0 ties with +0.0
    assert np.all(np.diff(np.delete(keys, 4)) > 0)
    # The packed float32 path and the argsort path (float64) agree, signed zeros included.
    rng = np.random.default_rng(10)
    scores = rng.choice(values, size=400)
    labels = rng.random(400) < 0.5
    for metric in (image_auroc, image_ap, f1_max):
        assert metric(scores, labels) == metric(scores.astype(np.float64), labels)
    finite = np.isfinite(scores)
    assert image_auroc(scores[finite], labels[finite]) == pytest.approx(
        roc_auc_score(labels[finite], scores[finite]), abs=1e-12
    )
