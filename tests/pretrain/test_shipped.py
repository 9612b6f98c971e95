"""The shipped default backbone: file present, digest, size, offline loading, default spec."""

from __future__ import annotations

import socket

import open_clip
import torch

import semclip_bench.backbones as bb
from semclip_bench.pretrain.export import MAX_SHIPPED_BYTES, read_sha256_file, sha256_file


def test_default_architecture_fits_the_shipping_limit() -> None:
    model = open_clip.create_model(bb.DEFAULT_MODEL, pretrained=None)
    n = sum(v.numel() for v in model.state_dict().values())
    assert 2 * n < MAX_SHIPPED_BYTES - 200_000  # fp16 bytes plus pickle overhead
    assert len(model.visual.transformer.resblocks) == 12  # taps 3, 6, 9, 12


def test_shipped_default_weights_match_digest_and_load_offline(monkeypatch) -> None:
    path = bb.DEFAULT_WEIGHTS
    assert path.is_file(), f"default weights {path} are not shipped"
    assert path.stat().st_size <= MAX_SHIPPED_BYTES
    digest_file = path.with_name(path.name + ".sha256")
    assert read_sha256_file(digest_file) == sha256_file(path)
    assert path.with_name("MODEL_CARD.md").is_file()

    def no_network(*args, **kwargs):
        raise OSError("network disabled in this test")

    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    spec = bb.default_backbone_spec()
    assert spec == bb.BackboneSpec(bb.DEFAULT_MODEL, str(path))
    backbone = bb.build_backbone(spec)
    state = torch.load(path, map_location="cpu", weights_only=True)
    own = backbone.model.state_dict()
    assert set(state) == set(own)
    for key, value in state.items():
        assert torch.equal(own[key], value.to(own[key].dtype)), key
    x = torch.zeros(1, 3, backbone.image_size, backbone.image_size)
    assert torch.isfinite(backbone.encode_image(x)).all()


def test_pretrain_command_defaults_to_the_default_architecture() -> None:
    from semclip_bench.pretrain.commands import DEFAULT_ARCH
    from semclip_bench.pretrain.module import PretrainConfig
    from semclip_bench.pretrain.train import PretrainOptions

    assert DEFAULT_ARCH == bb.DEFAULT_MODEL == PretrainConfig().arch == PretrainOptions().arch
