"""Tests of creating the backbone's open_clip model and filling it with weights
(``semclip_bench/backbones/loading.py``): seeded random init, local checkpoint files in their
wrapped forms, resized position embeddings, bad files and unreachable tags."""

from __future__ import annotations

import huggingface_hub
import open_clip
import pytest
import torch
import torch.nn.functional as F

from semclip_bench.backbones import BackboneSpec, ClipBackbone, build_backbone
from semclip_bench.backbones import loading as loading_module
from semclip_bench.errors import UserError

TINY = BackboneSpec("semclip-tiny", None)


def test_random_init_deterministic_and_rng_untouched(state_hash) -> None:
    torch.manual_seed(123)
    state = torch.get_rng_state()
    a = build_backbone(TINY)
    assert torch.equal(torch.get_rng_state(), state)
    b = build_backbone(TINY)
    assert state_hash(a) == state_hash(b)


@pytest.mark.parametrize("wrap", ["plain", "state_dict", "module", "lightning"])
def test_checkpoint_roundtrip(
    bb: ClipBackbone, images: torch.Tensor, tmp_path, wrap, state_hash
) -> None:
    # perturb a copy so the loaded weights differ from the random init
    src = build_backbone(TINY)
    with torch.no_grad():
        for p in src.model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    sd = src.model.state_dict()
    if wrap == "state_dict":
        obj = {"state_dict": sd, "epoch": 3}
    elif wrap == "module":
        obj = {f"module.{k}": v for k, v in sd.items()}
    elif wrap == "lightning":
        obj = {"state_dict": {f"method.backbone.model.{k}": v for k, v in sd.items()}}
        obj["state_dict"]["method.head.weight"] = torch.zeros(2, 2)
    else:
        obj = sd
    path = tmp_path / "ckpt.pt"
    torch.save(obj, path)
    loaded = build_backbone(BackboneSpec("semclip-tiny", str(path)))
    assert state_hash(loaded.model) == state_hash(src.model)
    torch.testing.assert_close(loaded.encode_image(images), src.encode_image(images))
    assert not torch.allclose(loaded.encode_image(images), bb.encode_image(images))
    key = BackboneSpec("semclip-tiny", str(path)).key()
    assert key != TINY.key() and "semclip-tiny" in key


def test_checkpoint_with_other_grid_is_interpolated(images: torch.Tensor, tmp_path) -> None:
    src = build_backbone(TINY)
    path = tmp_path / "w.pt"
    torch.save(src.model.state_dict(), path)
    big = build_backbone(BackboneSpec("semclip-tiny", str(path), image_size=96))
    assert big.grid_size == (6, 6) and big.image_size == 96
    x = F.interpolate(images, size=96, mode="bilinear")
    out = big.forward_features(x)
    assert out.patches[0].shape == (3, 36, 64)
    torch.testing.assert_close(out.cls, big.model.encode_image(x), atol=1e-5, rtol=0)
    torch.testing.assert_close(
        big.model.visual.conv1.weight, src.model.visual.conv1.weight, atol=0, rtol=0
    )


def test_bad_checkpoints(tmp_path) -> None:
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a checkpoint at all")
    with pytest.raises(UserError, match=r"corrupt\.pt"):
        build_backbone(BackboneSpec("semclip-tiny", str(corrupt)))
    other = tmp_path / "other.pt"
    torch.save(build_backbone(BackboneSpec("semclip-vit-s16")).model.state_dict(), other)
    with pytest.raises(UserError, match=r"other\.pt"):
        build_backbone(BackboneSpec("semclip-tiny", str(other)))
    partial = tmp_path / "partial.pt"
    sd = build_backbone(TINY).model.state_dict()
    sd.pop("visual.proj")
    torch.save(sd, partial)
    with pytest.raises(UserError, match=r"partial\.pt.*missing"):
        build_backbone(BackboneSpec("semclip-tiny", str(partial)))


def test_unknown_name_and_tags(monkeypatch) -> None:
    with pytest.raises(UserError, match="no-such-model"):
        build_backbone(BackboneSpec("no-such-model", None))
    with pytest.raises(UserError, match="not-a-tag"):
        build_backbone(BackboneSpec("semclip-tiny", "not-a-tag"))

    seen: list[bool] = []

    def offline(*args, **kwargs):
        seen.append(huggingface_hub.constants.is_offline_mode())
        raise OSError("network is unreachable")

    monkeypatch.setattr(open_clip.factory, "download_pretrained", offline)
    monkeypatch.setattr(loading_module, "_hub_reachable", lambda *a, **k: False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    with pytest.raises(UserError, match=r"laion400m_e32.*local checkpoint file"):
        build_backbone(BackboneSpec("ViT-B-16-plus-240", "laion400m_e32"))
    # the hub was put offline during the attempt (no retries), and restored afterwards
    assert seen == [True] and not huggingface_hub.constants.HF_HUB_OFFLINE
