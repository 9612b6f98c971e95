"""An image's extracted features do not depend on which images shared its extraction batch.

The feature cache pads every batch to its fixed size (``runner/execute/features.py``): this is what
lets the disk store, resumed runs and several processes reproduce a fresh run bit for bit.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from semclip_bench.backbones import BackboneSpec, build_backbone
from semclip_bench.data import load_dataset
from semclip_bench.models import method_class
from semclip_bench.runner.execute.features import FeatureCache

METHODS = ("semclip", "winclip", "anomalyclip", "patchcore", "linear_probe")


@pytest.fixture(scope="module")
def setup(tiny_data: Path):
    dataset = load_dataset(str(tiny_data))
    samples = [s for s in dataset.samples if s.split == "test"][:7]
    backbone = build_backbone(BackboneSpec(name="semclip-tiny"), device=torch.device("cpu"))
    return samples, backbone


def _extract(method, backbone, samples, fixed_batch: bool = True) -> dict[str, torch.Tensor]:
    cache = FeatureCache(torch.device("cpu"), batch_size=4, fixed_batch=fixed_batch)
    geometry = method.input_geometry(backbone)
    return cache.features(method, samples, geometry.size, geometry.mean, geometry.std)


@pytest.mark.parametrize("name", METHODS)
def test_features_do_not_depend_on_batch_neighbours(setup, name: str) -> None:
    samples, backbone = setup
    torch.manual_seed(0)
    method = method_class(name)(backbone, ["good", "particle", "scratch"]).eval()
    # one image alone (a batch of 1 + 3 padding rows), in a full batch, and at another position
    # with other neighbours in a short last batch
    alone = _extract(method, backbone, [samples[5]])
    full = _extract(method, backbone, samples[2:6])
    mixed = _extract(method, backbone, [samples[0], samples[6], samples[1], samples[4], samples[5]])
    assert alone, f"{name} extracted nothing"
    for key, value in alone.items():
        assert torch.equal(value[0], full[key][3]), f"{name}/{key}: alone vs full batch"
        assert torch.equal(value[0], mixed[key][4]), f"{name}/{key}: alone vs other neighbours"
