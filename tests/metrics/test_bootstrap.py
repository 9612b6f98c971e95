"""Bootstrap replicates against the exact metrics, binning error, pairing and DeLong."""

from __future__ import annotations

import numpy as np
import pytest

from semclip_bench.metrics import (
    aupro,
    classification_metrics,
    f1_max,
    image_ap,
    image_auroc,
    pixel_auroc,
    pixel_f1_max,
    pixel_truth,
)
from semclip_bench.metrics.bootstrap import (
    EpisodeScores,
    auroc_binning_bound,
    chance_classification,
    classification_replicates,
    delong_test,
    image_replicates,
    image_weights,
    percentile_interval,
    pixel_replicates,
    pixel_statistics,
    seed_weights,
)

#: Stated bounds of the binned pixel metrics against the exact values (128 bins: quantiles of
#: the pooled and of the defect pixels' scores; on the synthetic maps below; PROTOCOL.md).
PAUROC_BOUND = 0.002
PF1_BOUND = 0.01
AUPRO_BOUND = 0.01


def _query(n_normal: int = 12, n_defect: int = 12, size: int = 32, seed: int = 0):
    rng = np.random.default_rng(seed)
    n = n_normal + n_defect
    masks = np.zeros((n, size, size), dtype=np.uint8)
    for i in range(n_normal, n):
        for _ in range(rng.integers(1, 3)):
            y, x = rng.integers(0, size - 8, 2)
            h, w = rng.integers(2, 8, 2)
            masks[i, y : y + h, x : x + w] = 1
    maps = rng.normal(size=(n, size, size)).astype(np.float32) + 1.5 * masks
    labels = np.r_[np.zeros(n_normal), np.ones(n_defect)].astype(np.int8)
    scores = maps.reshape(n, -1).max(1) + rng.normal(scale=0.5, size=n)
    return maps, masks, labels, scores


def _stats(maps, masks, labels, scores):
    truth = pixel_truth(masks, [m.shape for m in maps])
    edges, normal, regions, region_image = pixel_statistics(maps, truth)
    return EpisodeScores(
        scores,
        labels,
        np.where(labels == 1, "bridge", "good"),
        ["good", "bridge"],
        None,
        edges,
        normal,
        regions,
        region_image,
    )


def test_image_replicates_with_unit_weights_are_exact() -> None:
    _, _, labels, scores = _query()
    scores = np.round(scores, 1)  # ties
    values = image_replicates(scores, labels, np.ones((1, labels.size)))
    assert values["iAUROC"][0] == pytest.approx(image_auroc(scores, labels), abs=1e-12)
    assert values["iAP"][0] == pytest.approx(image_ap(scores, labels), abs=1e-12)
    assert values["iF1max"][0] == pytest.approx(f1_max(scores, labels), abs=1e-12)


def test_weights_equal_repeating_images() -> None:
    _, _, labels, scores = _query()
    weights = image_weights(labels, 3, "line_space")
    for row in weights:
        index = np.repeat(np.arange(labels.size), row.astype(int))
        got = image_replicates(scores, labels, row[None])
        assert got["iAUROC"][0] == pytest.approx(image_auroc(scores[index], labels[index]))
        assert got["iAP"][0] == pytest.approx(image_ap(scores[index], labels[index]))


def test_resamples_are_stratified_paired_and_seeded_by_category() -> None:
    labels = np.r_[np.zeros(30), np.ones(20)]
    a = image_weights(labels, 50, "line_space")
    assert (a[:, labels == 0].sum(1) == 30).all() and (a[:, labels == 1].sum(1) == 20).all()
    assert np.array_equal(a, image_weights(labels, 50, "line_space"))  # any method: the same
    assert not np.array_equal(a, image_weights(labels, 50, "metal_cmp"))
    assert seed_weights(3, 10).sum(1).tolist() == [3] * 10


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_binning_error_is_below_the_stated_bound(seed: int) -> None:
    maps, masks, labels, scores = _query(seed=seed)
    stats = _stats(maps, masks, labels, scores)
    binned = pixel_replicates(stats, np.ones((1, labels.size)))
    exact_auroc = pixel_auroc(maps, masks)
    assert abs(binned["pAUROC"][0] - exact_auroc) <= PAUROC_BOUND
    pos = stats.region_hist.sum(0).astype(float)
    neg = stats.normal_hist.sum(0).astype(float)
    assert abs(binned["pAUROC"][0] - exact_auroc) <= auroc_binning_bound(pos, neg) + 1e-12
    assert abs(binned["pF1max"][0] - pixel_f1_max(maps, masks)) <= PF1_BOUND
    assert abs(binned["AUPRO"][0] - aupro(maps, masks)) <= AUPRO_BOUND


def test_one_bin_gives_the_constant_map_metrics() -> None:
    maps, masks, labels, scores = _query()
    stats = _stats(maps, masks, labels, scores)
    chance = pixel_replicates(stats, np.ones((1, labels.size)), one_bin=True)
    constant = np.zeros_like(maps)
    q = masks.sum() / masks.size
    assert chance["pAUROC"][0] == pytest.approx(0.5)
    assert chance["pF1max"][0] == pytest.approx(2 * q / (1 + q))
    assert chance["pF1max"][0] == pytest.approx(pixel_f1_max(constant, masks))
    assert chance["AUPRO"][0] == pytest.approx(aupro(constant, masks))


def test_delong_agrees_with_the_paired_bootstrap() -> None:
    rng = np.random.default_rng(3)
    labels = np.r_[np.zeros(120), np.ones(120)].astype(np.int8)
    shared = rng.normal(size=240)
    a = shared + 1.4 * labels + rng.normal(scale=0.7, size=240)
    b = shared + 1.1 * labels + rng.normal(scale=0.7, size=240)
    test = delong_test(a, b, labels)
    assert test["auroc_a"] == pytest.approx(image_auroc(a, labels))
    weights = image_weights(labels, 2000, "synthetic")
    diff = (
        image_replicates(a, labels, weights)["iAUROC"]
        - image_replicates(b, labels, weights)["iAUROC"]
    )
    assert diff.std() == pytest.approx(test["se"], rel=0.15)
    single = image_replicates(a, labels, weights)["iAUROC"].std()
    assert single == pytest.approx(test["se_a"], rel=0.15)
    low, high = percentile_interval(diff)
    assert low < test["difference"] < high


def test_classification_replicates_match_the_exact_functions() -> None:
    rng = np.random.default_rng(5)
    target = rng.integers(0, 4, 60)
    pred = np.where(rng.random(60) < 0.5, target, rng.integers(0, 4, 60))
    got = classification_replicates(target, pred, 4, np.ones((1, 60)))
    exact = classification_metrics(pred, target, 4)
    assert got["type_accuracy"][0] == pytest.approx(exact["accuracy"])
    assert got["type_f1"][0] == pytest.approx(exact["f1"])
    chance = chance_classification(np.repeat(np.arange(4), 5), 4, np.ones((1, 20)))
    assert chance["uniform"]["type_accuracy"][0] == pytest.approx(0.25)
    assert chance["majority"]["type_accuracy"][0] == pytest.approx(0.25)


def test_pixel_statistics_of_a_tensor_equal_those_of_an_array() -> None:
    import torch

    maps, masks, _, _ = _query(seed=4)
    truth = pixel_truth(masks, [m.shape for m in maps])
    from_array = pixel_statistics(maps, truth)
    from_tensor = pixel_statistics(torch.from_numpy(maps), truth)
    assert all(np.array_equal(a, b) for a, b in zip(from_array, from_tensor, strict=True))
    assert from_array[1].sum() + from_array[2].sum() == maps.size  # every pixel counted once


def test_scores_round_trip(tmp_path) -> None:
    maps, masks, labels, scores = _query()
    stats = _stats(maps, masks, labels, scores)
    stats.save(tmp_path / "s.npz")
    back = EpisodeScores.load(tmp_path / "s.npz")
    assert np.array_equal(back.image_score, stats.image_score)
    assert np.array_equal(back.region_hist, stats.region_hist)
    assert back.class_names == stats.class_names and back.class_logits is None
