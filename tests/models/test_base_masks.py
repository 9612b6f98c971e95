"""Masks-optional contract: pixel losses skip defect rows without a mask, the tables say so."""

from __future__ import annotations

import pytest
import torch

from semclip_bench.backbones import BackboneSpec, build_backbone
from semclip_bench.models.anomalyclip import AnomalyClip
from semclip_bench.models.base import SupportSet, pixel_supervision, supervision_text


@pytest.fixture(scope="module")
def backbone():
    return build_backbone(BackboneSpec(name="semclip-tiny"))


def test_pixel_supervision_weights() -> None:
    labels = torch.tensor([0, 1, 2, 1])
    masks = torch.zeros(4, 8, 8)
    masks[1, 2:4, 2:4] = 1  # defect with a mask
    # row 3: defect without a mask (all zero); row 0: normal (all zero, but supervised)
    assert pixel_supervision(labels, masks).tolist() == [1.0, 1.0, 0.0, 0.0]
    assert pixel_supervision(torch.zeros(0, dtype=torch.long), torch.zeros(0, 8, 8)).numel() == 0


def test_support_set_has_mask_defaults_to_all() -> None:
    support = SupportSet({}, torch.tensor([0, 1]), torch.zeros(2, 4, 4), ("good", "x"), "c")
    assert support.has_mask.tolist() == [True, True]


def test_supervision_text_says_what_was_used() -> None:
    assert supervision_text("normal") == "K normal images"
    full = "K normal + K per defect type, with masks"
    assert supervision_text("normal+defects") == full
    assert supervision_text("normal+defects", uses_masks=False) == "K normal + K per defect type"
    assert supervision_text("normal+defects", no_masks=True) == (
        "K normal + K per defect type, no masks (image-level losses only)"
    )
    assert supervision_text("normal+defects", missing_mask_types=["bridge", "hole"]) == (
        "K normal + K per defect type, no masks for bridge, hole (image-level losses there)"
    )


def test_anomalyclip_defect_without_mask_gets_image_loss_only(backbone) -> None:
    torch.manual_seed(0)
    method = AnomalyClip(backbone, ("good", "bridge"), n_ctx=2, deep_prompt_depth=2, seed=0)
    size = backbone.image_size
    images = torch.randn(3, 3, size, size)
    feats = method.extract(images)
    labels = torch.tensor([0, 1, 1])
    masks = torch.zeros(3, size, size)
    masks[1, 4:20, 4:20] = 1  # row 1 annotated; row 2 is a defect image without a mask
    with torch.no_grad():
        both = method.training_loss(feats, labels, masks)
        annotated = method.training_loss(
            {k: v[:2] for k, v in feats.items()}, labels[:2], masks[:2]
        )
    # The unannotated defect row adds nothing to the pixel losses ...
    assert torch.allclose(both["focal"], annotated["focal"], atol=1e-6)
    assert torch.allclose(both["dice"], annotated["dice"], atol=1e-6)
    # ... but counts in the image cross-entropy.
    assert not torch.allclose(both["image_ce"], annotated["image_ce"])
