"""Thin Lightning wrapper around any :class:`FewShotMethod`, and the episode fitting routine."""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

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
    """Support-set optimisation settings of a trainable method (from its YAML config)."""

    epochs: int = 20
    #: Cap on optimiser steps (None = no cap): keeps large-K episodes at a fixed compute budget.
    max_steps: int | None = None
    lr: float = 1e-3
    weight_decay: float = 1e-4
    batch_size: int = 16
    betas: tuple[float, float] = (0.9, 0.999)


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
    """Optimises a method's trainable head on the support set; predicts on query features."""

    def __init__(self, method: FewShotMethod, config: TrainingConfig | None = None) -> None:
        super().__init__()
        self.method = method
        self.config = config or TrainingConfig()

    def training_step(self, batch: tuple[Features, Tensor, Tensor], batch_idx: int) -> Tensor:
        features, labels, masks = batch
        terms = self.method.training_loss(features, labels, masks)
        for name, value in terms.items():
            self.log(
                f"train/{name}", value.detach(), prog_bar=name == "loss", batch_size=len(labels)
            )
        return terms["loss"]

    def cpu(self) -> FewShotModule:
        """Stay put: Lightning's teardown calls ``cpu()`` after every fit, which would copy the
        shared frozen backbone (hundreds of MB for the paper's ViT) to the host and back once
        per episode. ``module.to("cpu")`` still moves it."""
        return self

    def predict_step(self, batch: Features, batch_idx: int) -> MethodOutput:
        return self.method.predict(batch)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(
            self.method.trainable_parameters(),
            lr=self.config.lr,
            weight_decay=self.config.weight_decay,
            betas=self.config.betas,
        )


def fit_method(
    method: FewShotMethod,
    support: SupportSet,
    config: TrainingConfig | None = None,
    seed: int = 0,
    **trainer_kwargs: object,
) -> FewShotModule:
    """Prepare ``method`` from ``support``; if it is trainable, train it with a Lightning Trainer.

    Seeded (``L.seed_everything``) and deterministic on CPU. Extra keyword arguments go to
    :class:`lightning.Trainer` (for example ``accelerator``, ``logger``, ``precision``).
    """
    config = config or TrainingConfig()
    L.seed_everything(seed, workers=True, verbose=False)
    method.setup_support(support)
    module = FewShotModule(method, config)
    if not method.trainable or config.epochs <= 0 or len(support.labels) == 0:
        return module
    device = next(iter(method.parameters()), torch.empty(0)).device
    generator = torch.Generator().manual_seed(seed)
    loader = DataLoader(
        _SupportFeatures(support),
        batch_size=min(config.batch_size, len(support.labels)),
        shuffle=True,
        generator=generator,
        collate_fn=_batched,
    )
    defaults: dict[str, object] = dict(
        max_epochs=config.epochs,
        max_steps=-1 if config.max_steps is None else int(config.max_steps),
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        deterministic=True,
        accelerator="cpu",
        devices=1,
    )
    defaults.update(trainer_kwargs)
    with warnings.catch_warnings():
        # Expected here, not actionable: the frozen backbone stays in eval mode by design, and
        # a tiny support set needs no DataLoader workers.
        for message in _EXPECTED_WARNINGS:
            warnings.filterwarnings("ignore", message=message)
        trainer = L.Trainer(**defaults)
        trainer.fit(module, train_dataloaders=loader)
    # Lightning's teardown moves the trained module (and with it the shared frozen backbone) to
    # the CPU unless FewShotModule.cpu keeps it; make sure it is where the caller had it, or
    # every later extraction runs on the CPU (a no-op when nothing moved).
    method.to(device)
    method.eval()
    return module
