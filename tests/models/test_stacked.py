"""Stacked training (models/stacked.py): several episodes' heads in one vmapped fit.

Each member must train as it would alone (same initialisation, batches, optimiser), the members
must not mix, and a method that cannot be stacked must be refused.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from semclip_bench.backbones import BackboneSpec, build_backbone
from semclip_bench.errors import UserError
from semclip_bench.models import method_class
from semclip_bench.models.base import Features, FewShotMethod, MethodOutput, SupportSet
from semclip_bench.models.lightning import TrainingConfig, fit_method
from semclip_bench.models.stacked import can_fit_stacked, fit_methods_stacked

CLASSES = ("good", "bridge", "particle")
CONFIG = TrainingConfig(epochs=3, lr=1e-2, batch_size=4)
#: A step floor above what 2 epochs of 9 images in batches of 4 make (6): trained for 4 epochs.
FLOORED = TrainingConfig(epochs=2, lr=1e-2, batch_size=4, min_steps=10)


@pytest.fixture(scope="module")
def backbone():
    return build_backbone(BackboneSpec("semclip-tiny"))


def _member(backbone, name: str, seed: int, n: int = 9, **options):
    """A freshly initialised method (seeded as the runner does) and its own support set."""
    size = backbone.image_size
    g = torch.Generator().manual_seed(100 + seed)
    images = torch.randn(n, 3, size, size, generator=g)
    labels = torch.arange(n) % len(CLASSES)
    masks = torch.zeros(n, size, size)
    masks[labels > 0, 8 : 8 + 4 * (seed + 1), 10:30] = 1
    torch.manual_seed(seed)
    method = method_class(name)(backbone, CLASSES, **options)
    return method, SupportSet(method.extract(images), labels, masks, CLASSES, "line_space")


def _state(method: FewShotMethod) -> list[Tensor]:
    return [p.detach().clone() for p in method.trainable_parameters()]


@pytest.mark.parametrize(
    ("name", "tolerance", "config"),
    [
        ("semclip", 1e-6, CONFIG),
        ("semclip", 1e-6, FLOORED),
        ("anomalyclip", 1e-5, CONFIG),  # anomalyclip: math vs fused attention
    ],
)
def test_each_member_trains_as_it_would_alone(
    backbone, name: str, tolerance: float, config: TrainingConfig
) -> None:
    seeds = [0, 1, 2]
    alone = []
    for seed in seeds:
        method, support = _member(backbone, name, seed)
        module = fit_method(method, support, config, seed=seed)
        alone.append((_state(method), module.history["loss"]))
    members = [_member(backbone, name, seed) for seed in seeds]
    modules = fit_methods_stacked(
        [m for m, _ in members], [s for _, s in members], config, seeds=seeds
    )
    for (state, losses), (method, _), module in zip(alone, members, modules, strict=True):
        for a, b in zip(state, _state(method), strict=True):
            assert torch.allclose(a, b, atol=tolerance, rtol=0), (a - b).abs().max()
        assert module.history["loss"] == pytest.approx(losses, rel=1e-5)
        assert len(module.history["loss"]) == config.epochs_for(9)
    # the members did not mix: they trained to different heads
    assert not torch.equal(_state(members[0][0])[0], _state(members[1][0])[0])


def test_stacked_training_is_deterministic(backbone) -> None:
    def run() -> list[list[Tensor]]:
        members = [_member(backbone, "semclip", seed) for seed in (0, 1)]
        fit_methods_stacked([m for m, _ in members], [s for _, s in members], CONFIG, seeds=[0, 1])
        return [_state(m) for m, _ in members]

    first, second = run(), run()
    for a, b in zip(first, second, strict=True):
        assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def test_members_of_other_categories_keep_their_own_statistics(backbone) -> None:
    """Buffers that differ between members (support statistics) are stacked, not shared."""
    a, sa = _member(backbone, "semclip", 0)
    b, sb = _member(backbone, "semclip", 1)
    sb.features = {k: v * 3.0 for k, v in sb.features.items()}  # other statistics
    alone, salone = _member(backbone, "semclip", 1)
    salone.features = {k: v * 3.0 for k, v in salone.features.items()}
    fit_method(alone, salone, CONFIG, seed=1)
    fit_methods_stacked([a, b], [sa, sb], CONFIG, seeds=[0, 1])
    assert torch.allclose(b.token_std, alone.token_std)
    assert not torch.allclose(a.token_std, b.token_std)
    for x, y in zip(_state(alone), _state(b), strict=True):
        assert torch.allclose(x, y, atol=1e-6, rtol=0)


class _NotStackable(FewShotMethod):
    name = "not_stackable"
    supervision = "normal+defects"
    trainable = True

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(3))

    def feature_key(self) -> str:
        return "x"

    def extract(self, images: Tensor) -> Features:
        return {"x": images.flatten(1)[:, :3]}

    def predict(self, features: Features) -> MethodOutput:
        score = features["x"] @ self.weight
        return MethodOutput(score, score[:, None, None].expand(-1, 2, 2))


def test_what_cannot_be_stacked_is_refused(backbone) -> None:
    one, s1 = _member(backbone, "semclip", 0)
    two, s2 = _member(backbone, "semclip", 1)
    assert can_fit_stacked([one, two], [s1, s2])
    assert not can_fit_stacked([one], [s1])  # nothing to stack
    small, s_small = _member(backbone, "semclip", 1, n=6)
    assert not can_fit_stacked([one, small], [s1, s_small])  # other support size
    head, s_head = _member(backbone, "semclip", 1, head_hidden=8)
    assert not can_fit_stacked([one, head], [s1, s_head])  # other parameter shapes
    other, s_other = _member(backbone, "anomalyclip", 1)
    assert not can_fit_stacked([one, other], [s1, s_other])  # other method
    plain = [_NotStackable(), _NotStackable()]
    assert not can_fit_stacked(plain, [s1, s2])  # did not opt in
    with pytest.raises(ValueError, match="cannot be trained as one stack"):
        fit_methods_stacked(plain, [s1, s2], CONFIG, seeds=[0, 1])


class _DataDependent(_NotStackable):
    """Declares trains_stacked but branches on a tensor value: vmap refuses it."""

    trains_stacked = True

    def training_loss(self, features: Features, labels: Tensor, masks: Tensor) -> dict[str, Tensor]:
        x = features["x"] @ self.weight
        if bool((labels > 0).any()):
            x = x * 2
        return {"loss": ((x - labels.float()) ** 2).mean()}


def test_a_method_that_cannot_run_under_vmap_is_one_clear_error() -> None:
    supports = [
        SupportSet({"x": torch.randn(4, 3)}, torch.tensor([0, 1, 0, 1]), torch.zeros(4, 2, 2),
                   ("good", "bridge"), "c")
        for _ in range(2)
    ]  # fmt: skip
    with pytest.raises(UserError, match=r"cannot run under vmap.*--fit-mode alone"):
        fit_methods_stacked([_DataDependent(), _DataDependent()], supports, CONFIG, seeds=[0, 1])


def test_the_stacked_methods_declare_it_under_its_one_name() -> None:
    """SEM-CLIP and AnomalyCLIP-style declare ``trains_stacked`` (the runner reads nothing else:
    a class declaring the concept under another name would silently fit alone)."""
    from semclip_bench.models import METHODS

    classes = {name: method_class(name) for name in METHODS}
    assert {n for n, c in classes.items() if getattr(c, "trains_stacked", False)} == {
        "semclip",
        "anomalyclip",
    }
    assert not [n for n, c in classes.items() if any("together" in a for a in dir(c))]
