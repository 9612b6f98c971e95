"""fit_method: seeded Lightning training of a method's head, with an epoch count and a step cap."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from semclip_bench.models.base import Features, FewShotMethod, MethodOutput, SupportSet
from semclip_bench.models.lightning import TrainingConfig, fit_method


class _Counting(FewShotMethod):
    name = "counting"
    supervision = "normal+defects"
    trainable = True

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(3))
        self.steps = 0

    def feature_key(self) -> str:
        return "counting"

    def extract(self, images: Tensor) -> Features:
        return {"x": images.flatten(1)[:, :3]}

    def predict(self, features: Features) -> MethodOutput:
        score = features["x"] @ self.weight
        return MethodOutput(score, score[:, None, None].expand(-1, 2, 2))

    def training_loss(self, features: Features, labels: Tensor, masks: Tensor) -> dict[str, Tensor]:
        self.steps += 1
        loss = ((features["x"] @ self.weight - labels.float()) ** 2).mean()
        return {"loss": loss}


def _support(n: int) -> SupportSet:
    g = torch.Generator().manual_seed(0)
    return SupportSet(
        features={"x": torch.randn(n, 3, generator=g)},
        labels=torch.arange(n) % 2,
        masks=torch.zeros(n, 2, 2),
        class_names=("good", "bridge"),
        category="c",
    )


def test_epochs_without_cap_run_every_batch() -> None:
    method = _Counting()
    fit_method(method, _support(8), TrainingConfig(epochs=3, batch_size=4), seed=0)
    assert method.steps == 6  # 3 epochs x 2 batches


def test_max_steps_caps_training() -> None:
    method = _Counting()
    fit_method(method, _support(8), TrainingConfig(epochs=50, max_steps=5, batch_size=4), seed=0)
    assert method.steps == 5


def test_training_is_seeded() -> None:
    weights = []
    for _ in range(2):
        method = _Counting()
        fit_method(method, _support(8), TrainingConfig(epochs=4, batch_size=4, lr=0.1), seed=3)
        weights.append(method.weight.detach().clone())
    assert torch.equal(weights[0], weights[1])
    assert not torch.equal(weights[0], torch.zeros(3))
