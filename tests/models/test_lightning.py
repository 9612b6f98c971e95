"""fit_method: seeded Lightning training of a method's head under the per-image budget rule."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from semclip_bench.errors import UserError
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


@pytest.mark.parametrize("n", [3, 20])
def test_full_batch_gives_one_step_per_epoch_whatever_k(n: int) -> None:
    """The budget rule: batch_size None = the whole support set, so E epochs = E steps and every
    support image is seen E times, for a small and a large support set alike."""
    method = _Counting()
    seen: list[int] = []
    original = method.training_loss

    def counting_loss(features, labels, masks):
        seen.append(len(labels))
        return original(features, labels, masks)

    method.training_loss = counting_loss  # type: ignore[method-assign]
    config = TrainingConfig(epochs=5)
    assert config.batch_size is None and config.steps_per_epoch(n) == 1
    fit_method(method, _support(n), config, seed=0)
    assert method.steps == 5 and seen == [n] * 5


def test_fixed_batch_size_steps_grow_with_the_support_set() -> None:
    config = TrainingConfig(epochs=2, batch_size=4)
    assert [config.steps_per_epoch(n) for n in (0, 3, 4, 9)] == [0, 1, 1, 3]
    method = _Counting()
    fit_method(method, _support(9), config, seed=0)
    assert method.steps == 6  # 2 epochs x 3 batches (4, 4, 1)


def test_step_floor_adds_epochs_only_where_the_support_set_is_small() -> None:
    """min_steps lifts a small support set to the fewest whole epochs that reach the floor and
    leaves one whose E epochs already make that many steps alone."""
    config = TrainingConfig(epochs=3, batch_size=4, min_steps=10)
    # 3 images: 1 step per epoch -> 10 epochs; 9 images: 3 steps -> 4 epochs (12 steps);
    # 16 images: 4 steps -> the 3 epochs already make 12 >= 10.
    assert [config.epochs_for(n) for n in (0, 3, 9, 16)] == [3, 10, 4, 3]
    assert TrainingConfig(epochs=0, min_steps=10).epochs_for(5) == 0  # no training stays none
    small, large = _Counting(), _Counting()
    module = fit_method(small, _support(3), config, seed=0)
    fit_method(large, _support(16), config, seed=0)
    assert (small.steps, large.steps, len(module.loss_history)) == (10, 12, 10)


def test_no_floor_keeps_the_epoch_rule() -> None:
    config = TrainingConfig(epochs=3, batch_size=4)
    assert config.min_steps == 0 and [config.epochs_for(n) for n in (1, 9, 40)] == [3, 3, 3]


def test_loss_history_has_one_mean_per_epoch() -> None:
    method = _Counting()
    module = fit_method(method, _support(8), TrainingConfig(epochs=4, batch_size=4, lr=0.1))
    assert len(module.loss_history) == 4 and module.history["loss"] is module.loss_history
    assert module.loss_history[-1] < module.loss_history[0]
    assert fit_method(_Counting(), _support(8), TrainingConfig(epochs=0)).loss_history == []


def test_epoch_loss_is_the_mean_over_images_not_over_batches() -> None:
    # With a negligible lr the weights stay ~0, so each image's loss is label^2: the epoch mean
    # over 7 images (labels 0,1,0,1,0,1,0) is 3/7 whatever the uneven batches (3, 3, 1) hold.
    module = fit_method(_Counting(), _support(7), TrainingConfig(epochs=2, batch_size=3, lr=1e-12))
    assert module.loss_history == pytest.approx([3 / 7, 3 / 7], abs=1e-6)


@pytest.mark.parametrize(
    "bad",
    [
        {"epochs": -1},
        {"epochs": 2.5},
        {"batch_size": 0},
        {"lr": 0},
        {"lr": "fast"},
        {"betas": [1]},
        {"min_steps": -3},
    ],
)
def test_bad_training_values_are_user_errors(bad: dict) -> None:
    with pytest.raises(UserError, match="training option"):
        TrainingConfig(**bad)


def test_yaml_strings_and_lists_are_normalised() -> None:
    config = TrainingConfig(lr="1e-3", betas=[0.5, 0.999])  # PyYAML reads 1e-3 as a string
    assert config.lr == 1e-3 and config.betas == (0.5, 0.999)


def test_training_is_seeded() -> None:
    weights = []
    for _ in range(2):
        method = _Counting()
        fit_method(method, _support(8), TrainingConfig(epochs=4, batch_size=4, lr=0.1), seed=3)
        weights.append(method.weight.detach().clone())
    assert torch.equal(weights[0], weights[1])
    assert not torch.equal(weights[0], torch.zeros(3))


def test_steps_log_only_where_something_reads_the_logs(monkeypatch) -> None:
    # Without logger, progress bar or callback the steps skip self.log (issue 23: its cost on
    # the CPU); the history and the trained weights are the same either way.
    import lightning as L

    from semclip_bench.models.lightning import FewShotModule

    calls: list[str] = []
    original = FewShotModule.log

    def counting_log(self, name, *args, **kwargs):
        calls.append(name)
        return original(self, name, *args, **kwargs)

    monkeypatch.setattr(FewShotModule, "log", counting_log)
    config = TrainingConfig(epochs=3, batch_size=4, lr=0.1)
    quiet, watched = _Counting(), _Counting()
    a = fit_method(quiet, _support(8), config, seed=1)
    assert calls == []
    b = fit_method(watched, _support(8), config, seed=1, callbacks=[L.Callback()])
    assert calls and set(calls) == {"train/loss"}
    assert a.history == b.history
    assert torch.equal(quiet.weight, watched.weight)


def test_cuda_fits_train_attention_in_its_math_form(monkeypatch) -> None:
    """On CUDA the fused attention kernels' backward is not deterministic under the warn-only
    mode; fits there use the math form. The CPU keeps its (deterministic) fused kernel."""
    from semclip_bench.models import lightning as module

    flags = (torch.backends.cuda.flash_sdp_enabled, torch.backends.cuda.mem_efficient_sdp_enabled)
    with module.deterministic_attention(torch.device("cuda")):
        assert not any(f() for f in flags) and torch.backends.cuda.math_sdp_enabled()
    assert all(f() for f in flags)  # restored
    with module.deterministic_attention(torch.device("cpu")):
        assert all(f() for f in flags)

    seen = []
    real = module.deterministic_attention

    def recording(device):
        seen.append(device)
        return real(device)

    monkeypatch.setattr(module, "deterministic_attention", recording)
    fit_method(_Counting(), _support(4), TrainingConfig(epochs=1), seed=0)
    assert seen == [torch.device("cpu")]  # the fit asks for the device its method is on
