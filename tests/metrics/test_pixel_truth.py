"""A prepared PixelTruth (the masks' side, shared by methods on one query) changes no value."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from semclip_bench.metrics import evaluate, pixel_truth
from semclip_bench.metrics.pixel import _last_needed
from semclip_bench.metrics.ranking import RankedCounts


def _case(seed: int, n: int = 12, size: int = 32) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    masks = np.zeros((n, 2 * size, 2 * size), dtype=np.float32)  # masks at twice the map size
    for i in range(1, n, 2):
        y, x = rng.integers(0, 2 * size - 10, size=2)
        masks[i, y : y + 9, x : x + 7] = 1
    maps = rng.standard_normal((n, size, size)).astype(np.float32)
    maps[:, ::2] = np.round(maps[:, ::2], 1)  # ties
    labels = (masks.reshape(n, -1).max(axis=1) > 0).astype(int)
    return maps, masks, labels


@pytest.mark.parametrize("device", [None, "cpu"])  # numpy path, torch path
def test_shared_truth_gives_identical_metrics(device) -> None:
    maps_a, masks, labels = _case(0)
    maps_b = _case(1)[0]
    truth = pixel_truth(masks, [m.shape for m in maps_a])
    for maps in (maps_a, maps_b):  # two "methods" on one query set
        scores = maps.reshape(len(maps), -1).max(axis=1)
        plain = evaluate(scores, labels, maps=maps, masks=masks, device=device)
        shared = evaluate(scores, labels, maps=maps, masks=None, device=device, pixel_truth=truth)
        assert {k: repr(v) for k, v in plain.items()} == {k: repr(v) for k, v in shared.items()}
        assert np.isfinite(shared["AUPRO"])
    if device == "cpu":
        assert ("regions", "cpu") in truth._on_device  # the payload is copied once, then reused


def test_truth_must_match_the_maps() -> None:
    maps, masks, labels = _case(0)
    truth = pixel_truth(masks[:-1], [m.shape for m in maps[:-1]])
    with pytest.raises(ValueError, match="other map shapes"):
        evaluate(maps.max(axis=(1, 2)), labels, maps=maps, pixel_truth=truth)
    flat = pixel_truth(masks, [m.shape for m in maps], with_regions=False)
    with pytest.raises(ValueError, match="without regions"):
        evaluate(maps.max(axis=(1, 2)), labels, maps=maps, pixel_truth=flat)


def test_last_needed_matches_the_float_search() -> None:
    rng = np.random.default_rng(3)
    for _ in range(200):
        fps = np.cumsum(rng.integers(0, 3, size=rng.integers(1, 50)))
        fps[-1] = max(int(fps[-1]), 1)
        counts = RankedCounts(tps=np.zeros_like(fps), fps=fps.astype(np.int64))
        limit = float(rng.choice([0.3, 0.5, 1.0, rng.uniform(0.01, 1.0)]))
        expected = min(
            int(np.searchsorted(fps.astype(np.float64), limit * int(fps[-1]), side="right")),
            fps.size - 1,
        )
        assert _last_needed(counts, limit) == expected


def test_truth_on_device_tensors_are_cached() -> None:
    _, masks, _ = _case(2)
    truth = pixel_truth(masks, [(32, 32)] * len(masks))
    first = truth.on_device("weights", torch.device("cpu"))
    assert truth.on_device("weights", torch.device("cpu")) is first
    assert torch.equal(first, torch.from_numpy(truth.region_weights()))


def test_device_reduction_equals_numpy_path() -> None:
    """The torch path reduces on the device; pAUROC and pF1-max equal numpy's bit for bit."""
    for seed in range(3):
        maps, masks, labels = _case(seed)
        scores = maps.reshape(len(maps), -1).max(axis=1)
        numpy_path = evaluate(scores, labels, maps=maps, masks=masks)
        torch_path = evaluate(
            scores, labels, maps=torch.from_numpy(maps), masks=masks, device="cpu"
        )
        assert torch_path["pAUROC"] == numpy_path["pAUROC"]
        assert torch_path["pF1max"] == numpy_path["pF1max"]
        assert torch_path["AUPRO"] == pytest.approx(numpy_path["AUPRO"], rel=1e-12)
        assert 0.0 < numpy_path["AUPRO"] <= 1.0


def _packed_curves(data, fpr_limit):
    """The packed (key, payload) sort of all pixels: the earlier float32 path, step by step."""
    from semclip_bench.metrics import pixel
    from semclip_bench.metrics.ranking import counts_from_sorted, sort_descending, tie_group_ends

    payload = data.defect if data.regions is None else data.regions
    keys, payload_sorted = sort_descending(data.scores, payload)
    ends = tie_group_ends(keys)
    counts = counts_from_sorted(payload_sorted != 0, ends)
    if data.regions is None or fpr_limit is None:
        return pixel.PixelCurves(counts=counts)
    last = pixel._last_needed(counts, fpr_limit)
    ends = ends[: last + 1]
    pro_cum = pixel._region_weights(data)[payload_sorted[: ends[-1] + 1]]
    np.cumsum(pro_cum, out=pro_cum)
    return pixel._with_pro(counts, last, pro_cum[ends])


@pytest.mark.parametrize("seed", range(6))
def test_split_sort_path_equals_packed_sort_path(seed: int) -> None:
    """float32 scores take the split sort; its counts and PRO curve equal the packed sort's."""
    from semclip_bench.metrics.pixel import pixel_curves, pixel_data

    rng = np.random.default_rng(seed)
    maps, masks, _ = _case(seed, n=8, size=24)
    if seed % 2:  # heavy ties, signed zeros and defect pixels tied with normal ones
        maps = np.round(maps * 2) / 2
        maps[rng.random(maps.shape) < 0.1] = -0.0
        maps[rng.random(maps.shape) < 0.1] = 0.0
    data = pixel_data(maps, masks, with_regions=True)
    for limit in (0.3, 1.0, None, 0.01):
        fast, packed = pixel_curves(data, limit), _packed_curves(data, limit)
        np.testing.assert_array_equal(fast.counts.tps, packed.counts.tps)
        np.testing.assert_array_equal(fast.counts.fps, packed.counts.fps)
        assert fast.counts.tps.dtype == packed.counts.tps.dtype == np.int64
        if limit is None:
            assert fast.pro is None and packed.pro is None
            continue
        assert np.array_equal(fast.pro_fpr, packed.pro_fpr)
        assert np.array_equal(fast.pro, packed.pro)  # bit for bit, not approximately
    flat = pixel_data(maps, masks, with_regions=False)
    np.testing.assert_array_equal(
        pixel_curves(flat, None).counts.tps, _packed_curves(flat, None).counts.tps
    )
