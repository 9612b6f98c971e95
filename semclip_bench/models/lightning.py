"""Thin Lightning wrapper around any :class:`FewShotMethod`, and the episode fitting routine."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

import lightning as L
import torch
from torch import Tensor
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.data import DataLoader, Dataset

from semclip_bench.errors import UserError
from semclip_bench.models.base import Features, FewShotMethod, MethodOutput, SupportSet

# Lightning's start-up tips ("💡 Tip: ...") on every fit would bury the per-episode summaries.
logging.getLogger("lightning.pytorch.utilities.rank_zero").setLevel(logging.WARNING)


_EXPECTED_WARNINGS = (
    r".*module\(s\) in eval mode at the start of training.*",
    r".*does not have many workers.*",
    r".*isinstance\(treespec, LeafSpec\)` is deprecated.*",
)


@dataclass
class TrainingConfig:
    """Support-set optimisation settings of a trainable method (the ``training:`` of its YAML).

    Budget rule (protocol v2, the same for every trainable method): the budget is set per support
    image. ``epochs`` = E passes over the support set, so every support image is seen E times
    whatever K is (K = 20 gets as many epochs as K = 1). ``batch_size=None`` trains full-batch
    (one optimiser step per epoch: E steps for every K, so K changes what is learnt from, not how
    long it is optimised); an integer fixes the batch size instead (then steps grow with K). There
    is deliberately no step cap: a cap would give large K fewer epochs than small K.

    ``min_steps`` is an optional step floor: a support set whose E epochs make fewer optimiser
    steps gets more epochs, the fewest that reach the floor (0: no floor). It lifts only the small
    support sets, which one pass in batches of ``batch_size`` leaves with few steps.
    """

    epochs: int = 20
    lr: float = 1e-3
    weight_decay: float = 1e-4
    #: Support images per optimiser step; None = the whole support set (full batch).
    batch_size: int | None = None
    betas: tuple[float, float] = (0.9, 0.999)
    #: Step floor: at least this many optimiser steps, reached by adding epochs (0 = none).
    min_steps: int = 0

    def __post_init__(self) -> None:
        """Check and normalise the values (YAML gives lists and strings); UserError on bad ones."""
        if not _is_int(self.epochs) or self.epochs < 0:
            raise UserError(f"training option epochs must be an integer >= 0, got {self.epochs!r}")
        if not _is_int(self.min_steps) or self.min_steps < 0:
            raise UserError(
                f"training option min_steps must be an integer >= 0, got {self.min_steps!r}"
            )
        batch = self.batch_size
        if batch is not None and (not _is_int(batch) or batch < 1):
            raise UserError(
                f"training option batch_size must be null (full batch) or an integer >= 1, "
                f"got {batch!r}"
            )
        try:
            lr, decay = float(self.lr), float(self.weight_decay)
            betas = tuple(float(b) for b in self.betas)
        except (TypeError, ValueError):
            raise UserError(
                f"training options lr, weight_decay, betas must be numbers: "
                f"{self.lr!r}, {self.weight_decay!r}, {self.betas!r}"
            ) from None
        if not lr > 0 or not decay >= 0:
            raise UserError(f"training options need lr > 0 and weight_decay >= 0: {lr}, {decay}")
        if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
            raise UserError(f"training option betas must be two numbers in [0, 1): {self.betas}")
        self.lr, self.weight_decay, self.betas = lr, decay, (betas[0], betas[1])

    def batch_for(self, n_support: int) -> int:
        """The batch size used with ``n_support`` support images (the whole set when None)."""
        n = max(1, int(n_support))
        return n if self.batch_size is None else min(self.batch_size, n)

    def steps_per_epoch(self, n_support: int) -> int:
        """Optimiser steps of one pass over ``n_support`` images (the last batch may be short)."""
        return -(-n_support // self.batch_for(n_support)) if n_support > 0 else 0

    def epochs_for(self, n_support: int) -> int:
        """Epochs trained on ``n_support`` images: ``epochs``, or more to reach ``min_steps``."""
        per_epoch = self.steps_per_epoch(n_support)
        if self.epochs == 0 or per_epoch == 0:
            return self.epochs
        return max(self.epochs, -(-self.min_steps // per_epoch))


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class _SupportFeatures(Dataset):
    """Rows of a :class:`SupportSet` as (features, label, mask) items."""

    def __init__(self, support: SupportSet) -> None:
        self.support = support

    def __len__(self) -> int:
        return int(self.support.labels.shape[0])

    def __getitem__(self, i: int) -> tuple[Features, Tensor, Tensor]:
        feats = {k: v[i] for k, v in self.support.features.items()}
        return feats, self.support.labels[i], self.support.masks[i]

    def __getitems__(self, indices: list[int]) -> tuple[Features, Tensor, Tensor]:
        """A whole batch with one gather per tensor (the DataLoader's fetcher prefers this over
        per-item indexing + collate: same rows, same order, a few kernels instead of many)."""
        index = torch.as_tensor(indices, dtype=torch.long)
        placed: dict[torch.device, Tensor] = {}

        def on(device: torch.device) -> Tensor:
            # One copy per device; on CUDA from pinned memory without blocking the host (a
            # pageable copy would wait for the queued kernels at every step).
            if device not in placed:
                placed[device] = (
                    index
                    if device.type == "cpu"
                    else index.pin_memory().to(device, non_blocking=True)
                )
            return placed[device]

        feats = {k: v[on(v.device)] for k, v in self.support.features.items()}
        labels, masks = self.support.labels, self.support.masks
        return feats, labels[on(labels.device)], masks[on(masks.device)]


def _batched(batch: tuple[Features, Tensor, Tensor]) -> tuple[Features, Tensor, Tensor]:
    """Collate of :meth:`_SupportFeatures.__getitems__`: already a batch."""
    return batch


class FewShotModule(L.LightningModule):
    """Optimises a method's trainable head on the support set; predicts on query features.

    ``history`` records the training curve: for each loss term the method returns (``"loss"`` is
    the total), its mean over the support images of each epoch, one value per epoch, in order.
    These are the losses of the batches as they were seen (before each step's update).
    """

    def __init__(self, method: FewShotMethod, config: TrainingConfig | None = None) -> None:
        super().__init__()
        self.method = method
        self.config = config or TrainingConfig()
        self.history: dict[str, list[float]] = {}
        self._epoch_sums: dict[str, Tensor] = {}
        self._epoch_count = 0
        #: Whether steps call ``self.log`` (set at fit start; see :meth:`on_fit_start`).
        self._log_steps = True

    @property
    def loss_history(self) -> list[float]:
        """Mean total training loss of each epoch (empty when nothing was trained)."""
        return self.history.get("loss", [])

    def on_fit_start(self) -> None:
        """Log the per-step loss terms only where something can read them: a logger (W&B), a
        progress bar or a callback (``trainer.callback_metrics``). The runner's CPU fits have
        none of them, and there ``self.log`` (four terms, each through Lightning's result
        collection, plus their epoch reductions) cost about 3.5 ms of a 77 ms SEM-CLIP step
        (``docs/performance.md``, issue 23). ``history`` is kept either way; the loss and the
        parameters do not depend on it."""
        trainer = self.trainer
        self._log_steps = bool(
            trainer.loggers or trainer.callbacks or trainer.progress_bar_callback is not None
        )

    def training_step(self, batch: tuple[Features, Tensor, Tensor], batch_idx: int) -> Tensor:
        features, labels, masks = batch
        terms = self.method.training_loss(features, labels, masks)
        n = len(labels)
        for name, value in terms.items():
            value = value.detach()
            if self._log_steps:
                self.log(f"train/{name}", value, prog_bar=name == "loss", batch_size=n)
            total = value.float() * n
            self._epoch_sums[name] = self._epoch_sums.get(name, 0) + total
        self._epoch_count += n
        return terms["loss"]

    def cpu(self) -> FewShotModule:
        """Stay put: Lightning's teardown calls ``cpu()`` after every fit, which would copy the
        shared frozen backbone (hundreds of MB for the paper's ViT) to the host and back once
        per episode. ``module.to("cpu")`` still moves it."""
        return self

    def on_train_epoch_end(self) -> None:
        """Append this epoch's mean of every loss term to ``history`` (one host sync per epoch)."""
        if self._epoch_count:
            for name, total in self._epoch_sums.items():
                self.history.setdefault(name, []).append(float(total) / self._epoch_count)
        self._epoch_sums, self._epoch_count = {}, 0

    def predict_step(self, batch: Features, batch_idx: int) -> MethodOutput:
        return self.method.predict(batch)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(
            self.method.trainable_parameters(),
            lr=self.config.lr,
            weight_decay=self.config.weight_decay,
            betas=self.config.betas,
        )


def support_loader(support: SupportSet, config: TrainingConfig, seed: int) -> DataLoader:
    """The episode's shuffled support batches, seeded by the episode alone."""
    return DataLoader(
        _SupportFeatures(support),
        batch_size=config.batch_for(len(support.labels)),
        shuffle=True,
        generator=torch.Generator().manual_seed(seed),
        collate_fn=_batched,
    )


def support_trainer(config: TrainingConfig, n_support: int, **trainer_kwargs: object) -> L.Trainer:
    """A quiet Trainer for ``config.epochs_for(n_support)`` epochs (CPU, deterministic unless
    overridden)."""
    defaults: dict[str, object] = dict(
        max_epochs=config.epochs_for(n_support),
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        deterministic=True,
        accelerator="cpu",
        devices=1,
    )
    defaults.update(trainer_kwargs)
    with expected_fit_warnings():
        return L.Trainer(**defaults)


@contextlib.contextmanager
def expected_fit_warnings() -> Iterator[None]:
    """Silence warnings that are expected here and not actionable: the frozen backbone stays in
    eval mode by design, and a tiny support set needs no DataLoader workers."""
    with warnings.catch_warnings():
        for message in _EXPECTED_WARNINGS:
            warnings.filterwarnings("ignore", message=message)
        yield


@contextlib.contextmanager
def deterministic_attention(device: torch.device) -> Iterator[None]:
    """Training attention in its math form on CUDA, where the fused kernels' backward
    (memory-efficient attention: AnomalyCLIP-style's text tower) adds with atomics in no fixed
    order under the warn-only deterministic mode CUDA runs need (``runner/execute/episode.py``); the
    math form is plain matrix products, as in stacked fits (``models/stacked.py``). On the CPU
    nothing changes: its fused kernel is deterministic, and the committed CPU rows use it."""
    if device.type != "cuda":
        yield
        return
    with sdpa_kernel(SDPBackend.MATH):
        yield


def fit_method(
    method: FewShotMethod,
    support: SupportSet,
    config: TrainingConfig | None = None,
    seed: int = 0,
    **trainer_kwargs: object,
) -> FewShotModule:
    """Prepare ``method`` from ``support``; if it is trainable, train it with a Lightning Trainer.

    ``config.epochs`` passes over the support set in batches of ``config.batch_size`` (None: all
    of it), more where ``config.min_steps`` asks for them, no step cap (the budget rule of
    :class:`TrainingConfig`). Seeded
    (``L.seed_everything``) and deterministic on CPU. Extra keyword arguments go to
    :class:`lightning.Trainer` (for example ``accelerator``, ``logger``, ``precision``,
    ``callbacks``). The returned module's ``history`` holds the per-epoch training losses.
    """
    config = config or TrainingConfig()
    L.seed_everything(seed, workers=True, verbose=False)
    method.setup_support(support)
    module = FewShotModule(method, config)
    if not method.trainable or config.epochs <= 0 or len(support.labels) == 0:
        return module
    device = next(iter(method.parameters()), torch.empty(0)).device
    # The method's per-fit features (frozen per-image work done once, not every step); the
    # batches, their order and the loss are those of the support's own features.
    batches = dataclasses.replace(support, features=method.training_features(support))
    loader = support_loader(batches, config, seed)
    with expected_fit_warnings(), deterministic_attention(device):
        trainer = support_trainer(config, len(support.labels), **trainer_kwargs)
        trainer.fit(module, train_dataloaders=loader)
    # Lightning's teardown moves the trained module (and with it the shared frozen backbone) to
    # the CPU unless FewShotModule.cpu keeps it; make sure it is where the caller had it, or
    # every later extraction runs on the CPU (a no-op when nothing moved).
    method.to(device)
    method.eval()
    return module
