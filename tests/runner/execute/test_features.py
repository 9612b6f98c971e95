"""runner/execute/features.py: the precision helpers (the cache itself: test_feature_store.py and
test_batch_invariance.py)."""

from __future__ import annotations

import pytest
import torch

from semclip_bench.runner.execute.features import prediction_math


@pytest.mark.parametrize(
    ("precision", "device", "tf32"),
    [
        ("bf16", "cuda", True),
        ("fp32", "cuda", False),
        ("auto", "cuda", False),
        ("bf16", "cpu", False),
    ],
)
def test_prediction_math_allows_tf32_only_for_bf16_on_cuda(precision, device, tf32) -> None:
    before = torch.backends.cuda.matmul.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = False
        with prediction_math(precision, device):  # only flips a flag: no GPU needed
            assert torch.backends.cuda.matmul.allow_tf32 is tf32
        assert torch.backends.cuda.matmul.allow_tf32 is False  # restored
        with pytest.raises(RuntimeError), prediction_math(precision, device):
            raise RuntimeError("a failing prediction")
        assert torch.backends.cuda.matmul.allow_tf32 is False  # restored on errors too
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before


def test_cache_stats_split_the_miss_time(tiny_data, tmp_path) -> None:
    """Misses served by the disk store are timed apart from the file digests and extraction."""
    from semclip_bench.backbones import BackboneSpec, build_backbone
    from semclip_bench.data import load_dataset
    from semclip_bench.models import method_class
    from semclip_bench.runner.execute.feature_store import FeatureStore
    from semclip_bench.runner.execute.features import FeatureCache

    samples = [s for s in load_dataset(str(tiny_data)).samples if s.split == "test"][:3]
    backbone = build_backbone(BackboneSpec(name="semclip-tiny"))
    method = method_class("patchcore")(backbone, ["good", "particle"]).eval()
    size, mean, std = backbone.image_size, backbone.mean, backbone.std
    store = FeatureStore(tmp_path)
    first = FeatureCache(torch.device("cpu"), batch_size=4, store=store)
    first.features(method, samples, size, mean, std)
    store.close()  # writes are queued
    assert first.stats.loaded == 0 and first.stats.load_seconds >= 0
    second = FeatureCache(torch.device("cpu"), batch_size=4, store=FeatureStore(tmp_path))
    second.features(method, samples, size, mean, std)
    stats = second.stats
    assert (stats.misses, stats.loaded) == (3, 3)
    assert 0 < stats.load_seconds <= stats.seconds
    assert stats.digest_seconds + stats.load_seconds <= stats.seconds
    line = stats.summary(disk=True)
    assert "3 loaded from disk, 0 extracted" in line
    assert "file digests" in line and "disk loads" in line
    assert "disk loads" not in stats.summary(disk=False)


def test_place_moves_a_chunk_as_one_copy_per_name(monkeypatch) -> None:
    """The non-CPU branch of _place (run here on the meta device, pinning made a no-op)."""
    from semclip_bench.runner.execute import features as features_module

    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda self: self)
    per_image = [{"cls": torch.randn(4), "patch": torch.randn(3, 4)} for _ in range(5)]
    placed = features_module._place(per_image, torch.device("meta"))
    assert len(placed) == 5
    for f in placed:
        assert f["cls"].device.type == "meta" and f["cls"].shape == (4,)
        assert f["patch"].shape == (3, 4)
    # one stacked tensor per name: every image's entry is a view of the same storage
    assert placed[0]["patch"]._base is placed[4]["patch"]._base is not None
    # shapes that differ between images: each tensor moves as it is
    ragged = [{"patch": torch.randn(3, 4)}, {"patch": torch.randn(2, 4)}]
    moved = features_module._place(ragged, torch.device("meta"))
    assert [tuple(f["patch"].shape) for f in moved] == [(3, 4), (2, 4)]
    # the CPU keeps the loaded tensors themselves
    cpu = features_module._place(per_image, torch.device("cpu"))
    assert all(a["cls"] is b["cls"] for a, b in zip(cpu, per_image, strict=True))
