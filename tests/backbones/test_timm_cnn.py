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
    """A random resnet18 state dict (with its classifier) written to a file, as a user would."""
    torch.manual_seed(11)
    state = timm.create_model("resnet18", pretrained=False).state_dict()
    path = tmp_path_factory.mktemp("weights") / "resnet18.pth"
    torch.save(state, path)
    return path, state


def test_loads_weights_from_local_file(checkpoint) -> None:
    path, state = checkpoint
    ext = TimmFeatureExtractor("resnet18", weights=path, layers=("layer2", "layer3"), image_size=64)
    loaded = ext.model.state_dict()
    for name in ("conv1.weight", "layer2.0.conv1.weight", "layer3.1.bn2.running_mean"):
        assert torch.equal(loaded[name], state[name])
    assert not any(p.requires_grad for p in ext.parameters())
    ext.train()
    assert not ext.model.training  # frozen batch-norm statistics


def test_layer_maps_shapes_order_and_attributes(checkpoint) -> None:
    path, _ = checkpoint
    ext = TimmFeatureExtractor("resnet18", weights=path, layers=("layer2", "layer3"), image_size=64)
    images = torch.randn(2, 3, 64, 64)
    l2, l3 = ext(images)
    assert l2.shape == (2, 128, 8, 8) and l3.shape == (2, 256, 4, 4)
    assert ext.channels == (128, 256) and ext.reductions == (8, 16)
    assert ext.mean == (0.485, 0.456, 0.406) and ext.std == (0.229, 0.224, 0.225)
    assert ext.image_size == 64
    swapped = TimmFeatureExtractor("resnet18", weights=path, layers=("layer3", 2), image_size=64)
    s3, s2 = swapped(images)
    torch.testing.assert_close(s3, l3)
    torch.testing.assert_close(s2, l2)
    assert swapped.channels == (256, 128)


def test_key_depends_on_weights_content_layers_and_size(checkpoint, tmp_path) -> None:
    path, state = checkpoint
    key = TimmFeatureExtractor("resnet18", weights=path, image_size=64).key()
    assert "resnet18" in key and "layer2,layer3" in key and "size=64" in key
    copy = tmp_path / "copy.pth"
    copy.write_bytes(path.read_bytes())
    assert TimmFeatureExtractor("resnet18", weights=copy, image_size=64).key() == key
    other = tmp_path / "other.pth"
    torch.save({k: v + 1 if v.is_floating_point() else v for k, v in state.items()}, other)
    assert TimmFeatureExtractor("resnet18", weights=other, image_size=64).key() != key
    assert TimmFeatureExtractor("resnet18", weights=path, image_size=96).key() != key
    assert TimmFeatureExtractor("resnet18", weights=None, image_size=64).key() != key


def test_offline_errors_name_the_culprit(tmp_path) -> None:
    with pytest.raises(UserError, match="imagenet1k_v1"):
        TimmFeatureExtractor("resnet18", weights="imagenet1k_v1")
    with pytest.raises(UserError, match=r"missing\.pth"):
        TimmFeatureExtractor("resnet18", weights=tmp_path / "missing.pth")
    with pytest.raises(UserError, match="layer9"):
        TimmFeatureExtractor("resnet18", layers=("layer9",))
    with pytest.raises(UserError, match="no_such_net"):
        TimmFeatureExtractor("no_such_net")
    bad = tmp_path / "bad.pth"
    torch.save({"conv1.weight": torch.zeros(1)}, bad)
    with pytest.raises(UserError, match=r"bad\.pth"):
        TimmFeatureExtractor("resnet18", weights=bad)
