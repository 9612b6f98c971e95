"""Fixtures of the backbone tests: the tiny random backbone, a batch of images for it, and a
digest of a module's weights."""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import pytest
import torch

from semclip_bench.backbones import BackboneSpec, ClipBackbone, build_backbone


@pytest.fixture(scope="module")
def bb() -> ClipBackbone:
    return build_backbone(BackboneSpec("semclip-tiny", None))


@pytest.fixture
def images(bb: ClipBackbone) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.randn(3, 3, bb.image_size, bb.image_size, generator=g)


def _state_hash(module: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for k, v in sorted(module.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


@pytest.fixture
def state_hash() -> Callable[[torch.nn.Module], str]:
    """sha256 over a module's state dict (keys and bytes): equal iff the weights are equal."""
    return _state_hash
