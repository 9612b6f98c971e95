"""AnomalyCLIP-style baseline on the tiny random backbone: contract, formulas, training."""

from __future__ import annotations

import hashlib

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from semclip_bench.backbones import BackboneSpec, build_backbone
from semclip_bench.errors import UserError
from semclip_bench.models import METHODS, method_class
from semclip_bench.models.anomalyclip import AnomalyClip
from semclip_bench.models.base import SupportSet
from semclip_bench.models.lightning import TrainingConfig, fit_method

CLASS_NAMES = ("good", "bridge", "particle")
FAST = TrainingConfig(epochs=6, lr=1e-2, weight_decay=0.0, batch_size=4, betas=(0.5, 0.999))


@pytest.fixture(scope="module")
def backbone():
    return build_backbone(BackboneSpec(name="semclip-tiny"))


def _digest(module: nn.Module) -> str:
    """SHA-256 of every parameter and buffer of a module."""
    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _images_and_masks(size: int, n_normal: int = 4, per_defect: int = 2, seed: int = 0):
    """Random images; defect images get a bright square where their mask is 1."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.tensor([0] * n_normal + [1] * per_defect + [2] * per_defect)
    n = len(labels)
    images = torch.randn(n, 3, size, size, generator=g) * 0.5
    masks = torch.zeros(n, size, size)
    side = size // 4
    for i in range(n_normal, n):
        y, x = torch.randint(0, size - side, (2,), generator=g).tolist()
        masks[i, y : y + side, x : x + side] = 1.0
    images = images + 2.5 * masks.unsqueeze(1)
    return images, labels, masks


def _support(method: AnomalyClip, seed: int = 0) -> SupportSet:
    images, labels, masks = _images_and_masks(method.backbone.image_size, seed=seed)
    return SupportSet(method.extract(images), labels, masks, CLASS_NAMES, "line_space")


def _no_hooks(module: nn.Module) -> bool:
    return all(
        not m._forward_hooks and not m._forward_pre_hooks and not m._backward_hooks
        for m in module.modules()
    )


def test_registry_and_class_attributes(backbone) -> None:
    assert METHODS["anomalyclip"] == "semclip_bench.models.anomalyclip:AnomalyClip"
    assert method_class("anomalyclip") is AnomalyClip
    assert AnomalyClip.name == "anomalyclip"
    assert AnomalyClip.supervision == "normal+defects"
    assert AnomalyClip.classifies is False
    assert AnomalyClip.trainable is True


def test_output_contract(backbone) -> None:
    method = AnomalyClip(backbone, CLASS_NAMES, n_ctx=4).eval()
    size = backbone.image_size
    images = torch.randn(3, 3, size, size)
    feats = method.extract(images)
    n_taps = len(method.taps)
    length = backbone.grid_size[0] * backbone.grid_size[1]
    assert feats["cls"].shape == (3, backbone.embed_dim)
    assert feats["patches_vv"].shape == (3, n_taps, length, backbone.embed_dim)
    out = method.predict(feats)
    assert out.image_score.shape == (3,)
    assert out.anomaly_map.shape == (3, size, size)
    assert out.class_logits is None
    assert torch.isfinite(out.image_score).all() and torch.isfinite(out.anomaly_map).all()
    assert ((out.image_score >= 0) & (out.image_score <= 1)).all()
    # Each tap contributes a map in [0, 1]; blurring keeps the sum within [0, n_taps].
    assert out.anomaly_map.min() >= -1e-5 and out.anomaly_map.max() <= n_taps + 1e-5
    # forward == extract + predict.
    torch.testing.assert_close(method(images).anomaly_map, out.anomaly_map)


def test_feature_key_and_default_vv_blocks(backbone) -> None:
    method = AnomalyClip(backbone, CLASS_NAMES)
    taps = tuple(backbone.default_taps())
    assert method.taps == taps
    assert method.vv_blocks == backbone.num_blocks - taps[0] + 1
    key = method.feature_key()
    assert backbone.spec.key() in key and f"vv={method.vv_blocks}" in key
    other = AnomalyClip(backbone, CLASS_NAMES, taps=(2, backbone.num_blocks))
    assert other.vv_blocks == backbone.num_blocks - 1
    assert other.feature_key() != key
    assert AnomalyClip(backbone, CLASS_NAMES, vv_blocks=0).feature_key() != key


def test_prompt_tokens(backbone) -> None:
    method = AnomalyClip(backbone, CLASS_NAMES, n_ctx=5)
    ids = method.token_ids
    placeholder = backbone.tokenizer(["X"])[0, 1]
    assert (ids[:, 1:6] == placeholder).all()
    # EOT (argmax) comes after "object ." and "damaged object .".
    assert method.eot_indices.tolist() == [8, 9]
    assert (ids[torch.arange(2), method.eot_indices] == ids.max()).all()
    # The learnable vectors replace the placeholders: changing them changes the text features.
    before = method.text_features().detach()
    assert before.shape == (2, backbone.embed_dim)
    torch.testing.assert_close(before.norm(dim=-1), torch.ones(2))
    with torch.no_grad():
        method.ctx_abnormal.add_(1.0)
    after = method.text_features().detach()
    torch.testing.assert_close(after[0], before[0])
    assert not torch.allclose(after[1], before[1])


def test_scores_follow_the_published_formulas(backbone) -> None:
    method = AnomalyClip(backbone, CLASS_NAMES, n_ctx=3, sigma=0.0).eval()
    size = backbone.image_size
    feats = method.extract(torch.randn(2, 3, size, size))
    out = method.predict(feats)
    with torch.no_grad():
        text = method.text_features()
        expected_score = (F.normalize(feats["cls"], dim=-1) @ text.t() / 0.07).softmax(-1)[:, 1]
        gh, gw = backbone.grid_size
        expected_map = torch.zeros(2, size, size)
        for level in range(feats["patches_vv"].shape[1]):  # the published order: upsample per tap
            sim = F.normalize(feats["patches_vv"][:, level], dim=-1) @ text.t()
            prob = (sim / 0.07).softmax(-1).transpose(1, 2).reshape(2, 2, gh, gw)
            prob = F.interpolate(prob, size=(size, size), mode="bilinear")
            expected_map += (prob[:, 1] + 1 - prob[:, 0]) / 2
    torch.testing.assert_close(out.image_score, expected_score)
    torch.testing.assert_close(out.anomaly_map, expected_map, atol=1e-5, rtol=1e-5)


def test_blur_is_applied(backbone) -> None:
    size = backbone.image_size
    images = torch.randn(2, 3, size, size)
    sharp = AnomalyClip(backbone, CLASS_NAMES, sigma=0.0, seed=0).eval()
    blurred = AnomalyClip(backbone, CLASS_NAMES, sigma=4.0, seed=0).eval()
    a, b = sharp(images).anomaly_map, blurred(images).anomaly_map
    assert b.std() < a.std()
    torch.testing.assert_close(a.mean(), b.mean(), atol=0.05, rtol=0.05)


def test_training_lowers_the_loss_and_keeps_the_backbone_frozen(backbone) -> None:
    method = AnomalyClip(backbone, CLASS_NAMES, n_ctx=4)
    support = _support(method)
    backbone_before = _digest(method.backbone)
    ctx_before = method.ctx_abnormal.detach().clone()
    with torch.no_grad():
        loss_before = method.training_loss(support.features, support.labels, support.masks)["loss"]
    module = fit_method(method, support, FAST, seed=0)
    with torch.no_grad():
        loss_after = method.training_loss(support.features, support.labels, support.masks)["loss"]
    assert loss_after < loss_before
    assert _digest(method.backbone) == backbone_before
    assert not torch.equal(method.ctx_abnormal.detach(), ctx_before)
    # The optimiser holds exactly the prompt parameters.
    optimised = {id(p) for p in module.configure_optimizers().param_groups[0]["params"]}
    prompts = [method.ctx_normal, method.ctx_abnormal, *method.deep_prompts]
    assert optimised == {id(p) for p in prompts}
    assert not any(p.requires_grad for p in method.backbone.parameters())
    assert not method.backbone.training and not method.training
    assert _no_hooks(method)


def test_gradients_reach_context_and_deep_prompts(backbone) -> None:
    method = AnomalyClip(backbone, CLASS_NAMES, n_ctx=4, deep_prompt_depth=9, deep_prompt_length=2)
    # Clamped to the text depth: layers 2..depth get deep tokens.
    text_layers = len(backbone.model.transformer.resblocks)
    assert len(method.deep_prompts) == min(9, text_layers) - 1 >= 1
    support = _support(method)
    method.training_loss(support.features, support.labels, support.masks)["loss"].backward()
    for p in method.trainable_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0
    assert all(p.grad is None for p in method.backbone.parameters())


def test_same_seed_same_trained_outputs(backbone) -> None:
    size = backbone.image_size
    queries = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(5))

    def run() -> torch.Tensor:
        method = AnomalyClip(backbone, CLASS_NAMES, n_ctx=4, seed=0)
        fit_method(method, _support(method), FAST, seed=0)
        out = method.predict(method.extract(queries))
        return torch.cat([out.image_score, out.anomaly_map.flatten()])

    assert torch.equal(run(), run())
    # The seed option drives the initialisation of every learnable token.
    a, b = AnomalyClip(backbone, CLASS_NAMES, seed=0), AnomalyClip(backbone, CLASS_NAMES, seed=1)
    assert not torch.equal(a.ctx_normal, b.ctx_normal)
    assert not torch.equal(a.deep_prompts[0], b.deep_prompts[0])
    torch.testing.assert_close(
        torch.cat([a.ctx_normal, a.ctx_abnormal]).std().item(), 0.02, atol=5e-3, rtol=0
    )
    torch.manual_seed(3)
    c = AnomalyClip(backbone, CLASS_NAMES, seed=None)
    torch.manual_seed(3)
    assert torch.equal(c.ctx_abnormal, AnomalyClip(backbone, CLASS_NAMES).ctx_abnormal)


def test_without_deep_prompts(backbone) -> None:
    method = AnomalyClip(backbone, CLASS_NAMES, n_ctx=4, deep_prompt_depth=0, seed=0)
    assert len(method.deep_prompts) == 0 and len(method.trainable_parameters()) == 2
    assert AnomalyClip(backbone, CLASS_NAMES, n_ctx=2, deep_prompt_length=4).deep_prompt_length == 2
    support = _support(method)
    # A few plain optimiser steps (fit_method itself is exercised above).
    optimiser = torch.optim.Adam(method.trainable_parameters(), lr=1e-2, betas=(0.5, 0.999))
    losses = []
    for _ in range(6):
        loss = method.training_loss(support.features, support.labels, support.masks)["loss"]
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    out = method.predict(support.features)
    assert torch.isfinite(out.anomaly_map).all()


def test_without_dpam_uses_vanilla_tokens(backbone) -> None:
    size = backbone.image_size
    images = torch.randn(2, 3, size, size)
    vanilla = AnomalyClip(backbone, CLASS_NAMES, vv_blocks=0).extract(images)["patches_vv"]
    dpam = AnomalyClip(backbone, CLASS_NAMES).extract(images)["patches_vv"]
    assert vanilla.shape == dpam.shape
    assert not torch.allclose(vanilla, dpam)


def test_loss_terms(backbone) -> None:
    method = AnomalyClip(backbone, CLASS_NAMES, n_ctx=2, deep_prompt_depth=0)
    support = _support(method)
    with torch.no_grad():
        terms = method.training_loss(support.features, support.labels, support.masks)
    assert set(terms) == {"loss", "focal", "dice", "image_ce"}
    torch.testing.assert_close(
        terms["loss"], method.seg_loss_weight * (terms["focal"] + terms["dice"]) + terms["image_ce"]
    )
    # Two Dice terms per tap, each in [0, 1].
    assert 0 <= terms["dice"] <= 2 * len(method.taps)


@pytest.mark.parametrize(
    "options",
    [
        {"n_ctx": 0},
        {"taps": (0,)},
        {"taps": (3, 2)},
        {"vv_blocks": -1},
        {"temperature": 0.0},
        {"sigma": -1.0},
        {"deep_prompt_length": 0},
    ],
)
def test_invalid_options(backbone, options) -> None:
    with pytest.raises(UserError):
        AnomalyClip(backbone, CLASS_NAMES, **options)


def test_method_config_builds_the_method(backbone) -> None:
    from semclip_bench.runner.plan.config import method_config

    options, training = method_config("anomalyclip", None)
    method = AnomalyClip(backbone, CLASS_NAMES, **options)
    assert method.n_ctx == options["n_ctx"]
    config = TrainingConfig(**training)
    assert config.weight_decay == 0.0 and tuple(config.betas) == (0.5, 0.999)


def test_prediction_reuses_the_text_pass_until_a_prompt_changes(backbone, monkeypatch) -> None:
    method = AnomalyClip(backbone, CLASS_NAMES, n_ctx=4, seed=0).eval()
    feats = method.extract(torch.randn(2, 3, backbone.image_size, backbone.image_size))
    passes = []
    encode = backbone.encode_text_tokens

    def counting(*args, **kwargs):
        passes.append(torch.is_grad_enabled())
        return encode(*args, **kwargs)

    monkeypatch.setattr(backbone, "encode_text_tokens", counting)
    first = method.predict(feats)
    again = method.predict(feats)
    assert len(passes) == 1  # the second query batch reuses the text features
    assert torch.equal(first.image_score, again.image_score)
    assert torch.equal(first.anomaly_map, again.anomaly_map)

    fresh = AnomalyClip(backbone, CLASS_NAMES, n_ctx=4, seed=1).eval()
    with torch.no_grad():  # an in-place change (version counter) is seen...
        method.ctx_abnormal.copy_(fresh.ctx_abnormal)
    changed = method.predict(feats)
    assert len(passes) == 2
    assert not torch.equal(changed.image_score, first.image_score)
    method.load_state_dict(fresh.state_dict())  # ...and so are loaded prompts...
    loaded = method.predict(feats)
    assert len(passes) == 3
    torch.testing.assert_close(loaded.image_score, fresh.predict(feats).image_score)
    assert len(passes) == 4  # fresh's own pass
    method.train().eval()  # ...and a fit in between, whatever its optimiser does.
    method.predict(feats)
    assert len(passes) == 5
    # With gradients on (training), nothing is reused.
    method.text_features()
    method.text_features()
    assert passes[-2:] == [True, True]
