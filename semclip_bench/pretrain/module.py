"""Lightning module for contrastive image-text pretraining of an open_clip model from scratch.

The model is ``open_clip.create_model(arch)`` with random init (seeded), the loss is open_clip's
:class:`~open_clip.loss.ClipLoss` (symmetric InfoNCE; features gathered across DDP ranks). AdamW
with linear warmup and a cosine decay driven by the training progress, which is the larger of
``step / max_steps`` and ``elapsed / max_seconds``, so that a wall-clock budget still ends with a
decayed learning rate.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import lightning as L
import open_clip
import torch
from open_clip.loss import ClipLoss
from torch import Tensor, nn

from semclip_bench.backbones import DEFAULT_MODEL  # also registers the project's model configs
from semclip_bench.errors import UserError
from semclip_bench.pretrain.data import normalise_batch


@dataclass(frozen=True)
class PretrainConfig:
    """Optimisation settings of one pretraining run."""

    arch: str = DEFAULT_MODEL
    lr: float = 5e-4
    weight_decay: float = 0.1
    warmup_steps: int = 200
    max_steps: int | None = None
    max_seconds: float | None = None
    min_lr_ratio: float = 0.02
    seed: int = 0
    log_every: int = 50


def create_clip(arch: str, seed: int = 0) -> nn.Module:
    """Randomly initialised open_clip model ``arch`` (seeded, caller's RNG untouched)."""
    if arch not in open_clip.list_models():
        raise UserError(
            f"option --arch: {arch!r} is not an open_clip model config "
            f"(e.g. {DEFAULT_MODEL}, semclip-tiny)"
        )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return open_clip.create_model(arch, pretrained=None)


def model_image_size(model: nn.Module) -> int:
    """Square input size of the model's vision tower."""
    size = model.visual.image_size
    return int(size[0] if isinstance(size, (tuple, list)) else size)


def lr_factor(step: int, elapsed: float, cfg: PretrainConfig) -> float:
    """Learning-rate multiplier: linear warmup, then cosine to ``min_lr_ratio`` over progress."""
    warmup = max(cfg.warmup_steps, 0)
    if cfg.max_steps:
        warmup = min(warmup, max(cfg.max_steps // 10, 1))
    if step < warmup:
        return (step + 1) / warmup
    fractions = []
    if cfg.max_steps:
        fractions.append((step - warmup) / max(cfg.max_steps - warmup, 1))
    if cfg.max_seconds:
        fractions.append(elapsed / cfg.max_seconds)
    p = min(max(fractions, default=0.0), 1.0)
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * p))


class ClipPretrainModule(L.LightningModule):
    """Trains an open_clip CLIP with :class:`ClipLoss`; records the loss of every step.

    ``history`` holds (step, loss) pairs (filled on every rank; rank 0 writes them out).
    """

    def __init__(self, cfg: PretrainConfig, model: nn.Module | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.model = model if model is not None else create_clip(cfg.arch, cfg.seed)
        self.loss_fn = ClipLoss()
        self.history: list[tuple[int, float]] = []
        self._pending: list[tuple[int, Tensor]] = []
        self._t0 = 0.0
        self._t_log = 0.0
        self.images_seen = 0
        self._images_logged = 0

    # ---------------------------------------------------------------------------- lifecycle
    def setup(self, stage: str) -> None:
        world = self.trainer.world_size if self._trainer is not None else 1
        rank = self.trainer.global_rank if self._trainer is not None else 0
        self.loss_fn = ClipLoss(
            local_loss=world > 1,
            gather_with_grad=world > 1,
            cache_labels=True,
            rank=rank,
            world_size=world,
        )

    def on_train_start(self) -> None:
        self._t0 = self._t_log = time.perf_counter()

    def elapsed(self) -> float:
        """Seconds since training started."""
        return time.perf_counter() - self._t0 if self._t0 else 0.0

    # ------------------------------------------------------------------------------ training
    def contrastive_loss(self, images: Tensor, texts: Tensor) -> Tensor:
        """ClipLoss of one batch (normalised features, learnable temperature)."""
        img = self.model.encode_image(images, normalize=True)
        txt = self.model.encode_text(texts, normalize=True)
        return self.loss_fn(img, txt, self.model.logit_scale.exp())

    def batch_loss(self, batch: dict) -> Tensor:
        """Training loss of one batch (here: the contrastive loss of its images and texts)."""
        return self.contrastive_loss(normalise_batch(batch["image"]), batch["text"])

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        self._set_lr()
        loss = self.batch_loss(batch)
        self._pending.append((self.global_step, loss.detach()))
        self.images_seen += int(batch["image"].shape[0])
        if len(self._pending) >= self.cfg.log_every:
            self._flush_losses(log=True)
        return loss

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        with torch.no_grad():  # CLIP caps the temperature at 100
            self.model.logit_scale.clamp_(0, math.log(100))

    def on_train_end(self) -> None:
        self._flush_losses(log=False)

    def _set_lr(self) -> None:
        factor = lr_factor(self.global_step, self.elapsed(), self.cfg)
        opt = self.optimizers(use_pl_optimizer=False)
        for group in opt.param_groups:
            group["lr"] = self.cfg.lr * factor

    def _flush_losses(self, log: bool) -> None:
        if not self._pending:
            return
        values = torch.stack([v for _, v in self._pending]).float().cpu().tolist()
        steps = [s for s, _ in self._pending]
        self.history.extend(zip(steps, values, strict=True))
        self._pending.clear()
        if log and self.trainer.is_global_zero:
            now = time.perf_counter()
            images = (self.images_seen - self._images_logged) * self.trainer.world_size
            self._images_logged = self.images_seen
            rate = images / max(now - self._t_log, 1e-9)
            self._t_log = now
            lr = self.optimizers(use_pl_optimizer=False).param_groups[0]["lr"]
            mean = sum(values) / len(values)
            print(
                f"step {steps[-1] + 1}  loss {mean:.4f}  lr {lr:.2e}  {rate:.0f} img/s  "
                f"elapsed {self.elapsed():.0f}s",
                flush=True,
            )

    def configure_optimizers(self) -> torch.optim.Optimizer:
        decay, no_decay = [], []
        for name, p in self.named_parameters():  # the model and any head of a subclass
            if not p.requires_grad:
                continue
            exclude = p.ndim < 2 or "logit_scale" in name or name.endswith(".bias")
            (no_decay if exclude else decay).append(p)
        return torch.optim.AdamW(
            [
                {"params": decay, "weight_decay": self.cfg.weight_decay},
                {"params": no_decay, "weight_decay": 0.0},
            ],
            lr=self.cfg.lr,
            betas=(0.9, 0.98),
            eps=1e-6,
        )


class FormulaPretrainModule(ClipPretrainModule):
    """Formula-driven supervised stage: the vision tower with a linear head on the image
    embedding, cross-entropy (optional label smoothing) on formula class labels.

    Batches hold "image" and "label". Only the vision tower and the head train; the text tower
    and the temperature keep their seeded random init (frozen, so DDP sees no unused
    parameters). The head is not part of ``self.model``, so it is not exported.
    """

    def __init__(
        self,
        cfg: PretrainConfig,
        classes: int,
        label_smoothing: float = 0.0,
        model: nn.Module | None = None,
    ) -> None:
        super().__init__(cfg, model)
        self.head = self._new_head(classes)
        self.label_smoothing = label_smoothing
        for name, p in self.model.named_parameters():
            p.requires_grad_(name.startswith("visual."))

    def _new_head(self, classes: int) -> nn.Linear:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.cfg.seed + 1)
            return nn.Linear(int(self.model.visual.output_dim), classes)

    def classification_loss(self, images: Tensor, labels: Tensor) -> Tensor:
        """Cross-entropy of the head's logits on the (unnormalised) image embedding."""
        logits = self.head(self.model.encode_image(images))
        return nn.functional.cross_entropy(
            logits.float(), labels, label_smoothing=self.label_smoothing
        )

    def batch_loss(self, batch: dict) -> Tensor:
        return self.classification_loss(normalise_batch(batch["image"]), batch["label"])


class MixedPretrainModule(FormulaPretrainModule):
    """Contrastive loss plus ``formula_weight`` x the formula classification loss of a formula
    batch drawn with each step ("formula_image" / "formula_label"); every tower trains."""

    def __init__(
        self,
        cfg: PretrainConfig,
        classes: int,
        formula_weight: float,
        label_smoothing: float = 0.0,
        model: nn.Module | None = None,
    ) -> None:
        super().__init__(cfg, classes, label_smoothing, model)
        self.formula_weight = formula_weight
        for p in self.model.parameters():
            p.requires_grad_(True)

    def batch_loss(self, batch: dict) -> Tensor:
        contrastive = self.contrastive_loss(normalise_batch(batch["image"]), batch["text"])
        formula = self.classification_loss(
            normalise_batch(batch["formula_image"]), batch["formula_label"]
        )
        return contrastive + self.formula_weight * formula


__all__ = [
    "ClipPretrainModule",
    "FormulaPretrainModule",
    "MixedPretrainModule",
    "PretrainConfig",
    "create_clip",
    "lr_factor",
    "model_image_size",
]
