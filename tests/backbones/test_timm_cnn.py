"""Frozen timm CNN feature extractor: local weights only, layer selection, transform attributes."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch

from semclip_bench.backbones.timm_cnn import TimmFeatureExtractor
from semclip_bench.errors import UserError


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> tuple[Path, dict[str, torch.Tensor]]:
    """A tiny timm ResNet's state dict (classifier included) saved to a file, as a user would.

    Every float tensor is perturbed so that loaded weights differ from any fresh initialisation.
    """
    torch.manual_seed(11)
    state = timm.create_model("test_resnet", pretrained=False).state_dict()
    state = {
        k: v + 0.1 * torch.rand_like(v) if v.is_floating_point() else v for k, v in state.items()
    }
    path = tmp_path_factory.mktemp("weights") / "test_resnet.pth"
    torch.save(state, path)
    return path, state


def test_loads_weights_from_local_file(checkpoint) -> None:
    path, state = checkpoint
    ext = TimmFeatureExtractor(
        "test_resnet", weights=path, layers=("layer2", "layer3"), image_size=64
    )
    loaded = ext.model.state_dict()
    for name in ("conv1.0.weight", "layer2.0.conv1.weight", "layer3.0.bn1.running_mean"):
        assert torch.equal(loaded[name], state[name])
    fresh = TimmFeatureExtractor("test_resnet", weights=None, image_size=64).model.state_dict()
    assert not torch.equal(fresh["layer3.0.bn1.running_mean"], state["layer3.0.bn1.running_mean"])
    assert not any(p.requires_grad for p in ext.parameters())
    ext.train()
    assert not ext.model.training  # frozen batch-norm statistics


def test_layer_maps_shapes_order_and_attributes(checkpoint) -> None:
    path, _ = checkpoint
    ext = TimmFeatureExtractor(
        "test_resnet", weights=path, layers=("layer2", "layer3"), image_size=64
    )
    images = torch.randn(2, 3, 64, 64)
    l2, l3 = ext(images)
    assert l2.shape == (2, 48, 8, 8) and l3.shape == (2, 192, 4, 4)
    assert ext.channels == (48, 192) and ext.reductions == (8, 16)
    cfg = timm.create_model("test_resnet").pretrained_cfg  # the model's own normalisation
    assert ext.mean == tuple(cfg["mean"]) and ext.std == tuple(cfg["std"])
    assert ext.image_size == 64
    swapped = TimmFeatureExtractor("test_resnet", weights=path, layers=("layer3", 2), image_size=64)
    s3, s2 = swapped(images)
    torch.testing.assert_close(s3, l3)
    torch.testing.assert_close(s2, l2)
    assert swapped.channels == (192, 48)


def test_key_depends_on_weights_content_layers_and_size(checkpoint, tmp_path) -> None:
    path, state = checkpoint
    key = TimmFeatureExtractor("test_resnet", weights=path, image_size=64).key()
    assert "test_resnet" in key and "layer2,layer3" in key and "size=64" in key
    copy = tmp_path / "copy.pth"
    copy.write_bytes(path.read_bytes())
    assert TimmFeatureExtractor("test_resnet", weights=copy, image_size=64).key() == key
    other = tmp_path / "other.pth"
    torch.save({k: v + 1 if v.is_floating_point() else v for k, v in state.items()}, other)
    assert TimmFeatureExtractor("test_resnet", weights=other, image_size=64).key() != key
    assert TimmFeatureExtractor("test_resnet", weights=path, image_size=96).key() != key
    assert TimmFeatureExtractor("test_resnet", weights=None, image_size=64).key() != key


def test_offline_errors_name_the_culprit(tmp_path) -> None:
    with pytest.raises(UserError, match="imagenet1k_v1"):
        TimmFeatureExtractor("test_resnet", weights="imagenet1k_v1")
    with pytest.raises(UserError, match=r"missing\.pth"):
        TimmFeatureExtractor("test_resnet", weights=tmp_path / "missing.pth")
    with pytest.raises(UserError, match="layer9"):
        TimmFeatureExtractor("test_resnet", layers=("layer9",))
    with pytest.raises(UserError, match="no_such_net"):
        TimmFeatureExtractor("no_such_net")
    bad = tmp_path / "bad.pth"
    torch.save({"conv1.weight": torch.zeros(1)}, bad)
    with pytest.raises(UserError, match=r"bad\.pth"):
        TimmFeatureExtractor("test_resnet", weights=bad)


def test_wrapped_and_prefixed_checkpoints_load(checkpoint, tmp_path) -> None:
    _, state = checkpoint
    wrapped = tmp_path / "wrapped.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 3}, wrapped)
    ext = TimmFeatureExtractor("test_resnet", weights=wrapped, image_size=64)
    assert torch.equal(
        ext.model.state_dict()["layer2.0.conv1.weight"], state["layer2.0.conv1.weight"]
    )
    # A checkpoint holding only the layers up to layer 3 suffices for layers 2 and 3.
    partial = tmp_path / "partial.pth"
    torch.save({k: v for k, v in state.items() if not k.startswith(("layer4", "fc"))}, partial)
    TimmFeatureExtractor("test_resnet", weights=partial, layers=("layer2", "layer3"))
    with pytest.raises(UserError, match="lacks"):
        TimmFeatureExtractor("test_resnet", weights=partial, layers=("layer4",))


def test_checkpoint_of_another_architecture_is_refused(tmp_path) -> None:
    other = tmp_path / "resnet10t.pth"
    torch.save(timm.create_model("resnet10t").state_dict(), other)
    with pytest.raises(UserError, match=r"resnet10t\.pth"):
        TimmFeatureExtractor("test_resnet", weights=other)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match=r"garbage\.pth"):
        TimmFeatureExtractor("test_resnet", weights=garbage)
