"""Run a pretraining job end to end: data, Lightning Trainer, export, evaluation, model card."""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import os
import platform
import shlex
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader

from semclip_bench.backbones import DEFAULT_MODEL
from semclip_bench.errors import UserError
from semclip_bench.pretrain.data import (
    DEFAULT_PRETRAIN_SEED,
    NORMAL_FRACTION,
    RETRIEVAL_SEED,
    CaptionCsvDataset,
    SynthCaptionStream,
    check_pretrain_seed,
)
from semclip_bench.pretrain.export import (
    MAX_SHIPPED_BYTES,
    export_checkpoint,
    sha256_file,
    write_loss_curve,
)
from semclip_bench.pretrain.module import (
    ClipPretrainModule,
    FormulaPretrainModule,
    MixedPretrainModule,
    PretrainConfig,
    model_image_size,
)
from semclip_bench.pretrain.stages import (
    FORMULA_DATA,
    curve_digest,
    load_init,
    previous_stage,
    stage_record,
)

log = logging.getLogger(__name__)

#: Defaults of the formula options (None in :class:`PretrainOptions` = not given).
DEFAULT_FORMULA_CLASSES = 1000
DEFAULT_FORMULA_SEED = 0
DEFAULT_LABEL_SMOOTHING = 0.1


@dataclass
class PretrainOptions:
    """Everything the ``pretrain`` command takes (see its ``--help``)."""

    data: str = "sem-synth"
    arch: str = DEFAULT_MODEL
    out: str = "pretrain_out"
    steps: int | None = None
    max_minutes: float | None = None
    batch_size: int = 256
    lr: float = 5e-4
    weight_decay: float = 0.1
    warmup: int = 200
    workers: int = 4
    devices: int = 1
    precision: str | None = None
    accelerator: str = "auto"
    seed: int = 0
    synth_seed: int = DEFAULT_PRETRAIN_SEED
    render_size: int = 256
    reuse: int = 1
    buffer_size: int | None = None
    augment: bool = True
    evaluate: bool = True
    eval_workers: int | None = None
    retrieval_images: int = 1000
    log_every: int = 50
    init: str | None = None
    formula_classes: int | None = None
    formula_seed: int | None = None
    formula_weight: float = 0.0
    label_smoothing: float | None = None
    command: list[str] = field(default_factory=list)

    @property
    def uses_formula(self) -> bool:
        """Whether this run draws formula images (formula stage or mixed objective)."""
        return self.data == FORMULA_DATA or self.formula_weight > 0

    def formula_config(self) -> Any:
        """The :class:`~semclip_bench.pretrain.formula.FormulaConfig` of this run's formula data."""
        from semclip_bench.pretrain.formula import FormulaConfig

        return FormulaConfig(
            seed=DEFAULT_FORMULA_SEED if self.formula_seed is None else self.formula_seed,
            classes=self.formula_classes or DEFAULT_FORMULA_CLASSES,
            render_size=self.render_size,
        )

    def smoothing(self) -> float:
        return DEFAULT_LABEL_SMOOTHING if self.label_smoothing is None else self.label_smoothing

    def validate(self) -> None:
        if self.steps is None and self.max_minutes is None:
            raise UserError("pretrain needs --steps or --max-minutes (or both)")
        if self.steps is not None and self.steps <= 0:
            raise UserError(f"option --steps must be positive, got {self.steps}")
        if self.max_minutes is not None and self.max_minutes <= 0:
            raise UserError(f"option --max-minutes must be positive, got {self.max_minutes}")
        if self.batch_size < 2:
            raise UserError(f"option --batch-size must be at least 2, got {self.batch_size}")
        if self.lr <= 0:
            raise UserError(f"option --lr must be positive, got {self.lr}")
        if self.workers < 0:
            raise UserError(f"option --workers must be >= 0, got {self.workers}")
        if self.devices < 1:
            raise UserError(f"option --devices must be >= 1, got {self.devices}")
        if self.reuse < 1 or (self.buffer_size is not None and self.buffer_size < 1):
            raise UserError("options --reuse and --buffer-size must be >= 1")
        if not 32 <= self.render_size <= 4096:
            raise UserError(f"option --render-size must be 32..4096, got {self.render_size}")
        if self.data == "sem-synth":
            check_pretrain_seed(self.synth_seed)
            if self.synth_seed == RETRIEVAL_SEED:
                raise UserError(
                    f"option --synth-seed {RETRIEVAL_SEED} is the held-out retrieval seed"
                )
        self._validate_formula()
        if self.data == FORMULA_DATA and (self.reuse != 1 or self.buffer_size is not None):
            raise UserError("options --reuse and --buffer-size apply to --data sem-synth only")
        if self.init is not None and not Path(self.init).is_file():
            raise UserError(f"option --init: checkpoint file {self.init} does not exist")

    def _validate_formula(self) -> None:
        w = self.formula_weight
        if not isinstance(w, (int, float)) or not math.isfinite(w) or w < 0:
            raise UserError(f"option --formula-weight must be a finite number >= 0, got {w}")
        if w > 0 and self.data != "sem-synth":
            raise UserError(
                "option --formula-weight (the mixed objective) needs --data sem-synth, "
                f"got --data {self.data}"
            )
        for option, value in (
            ("--formula-classes", self.formula_classes),
            ("--formula-seed", self.formula_seed),
            ("--label-smoothing", self.label_smoothing),
        ):
            if value is not None and not self.uses_formula:
                raise UserError(
                    f"option {option} applies only to --data {FORMULA_DATA} or --formula-weight > 0"
                )
        if self.formula_classes is not None and not 2 <= self.formula_classes <= 1_000_000:
            raise UserError(
                f"option --formula-classes must be 2..1000000, got {self.formula_classes}"
            )
        if self.formula_seed is not None and self.formula_seed < 0:
            raise UserError(f"option --formula-seed must be >= 0, got {self.formula_seed}")
        if self.label_smoothing is not None and not 0 <= self.label_smoothing < 1:
            raise UserError(
                f"option --label-smoothing must be in [0, 1), got {self.label_smoothing}"
            )


class _DataModule:
    """Builds the train DataLoader once the trainer knows its rank and world size."""

    def __init__(self, opts: PretrainOptions, image_size: int) -> None:
        self.opts = opts
        self.image_size = image_size
        self.csv = None
        if opts.data not in ("sem-synth", FORMULA_DATA):
            self.csv = CaptionCsvDataset(opts.data, opts.arch, image_size, augment=opts.augment)

    def loader(self, rank: int, world_size: int) -> DataLoader:
        o = self.opts
        common: dict[str, Any] = {
            "batch_size": o.batch_size,
            "num_workers": o.workers,
            "pin_memory": torch.cuda.is_available(),
            "drop_last": True,
            "collate_fn": _collate,
            "worker_init_fn": _worker_init,
        }
        if o.workers > 0:
            common.update(persistent_workers=True, prefetch_factor=2)
        if self.csv is not None:
            if len(self.csv) < o.batch_size * world_size:
                raise UserError(
                    f"captions CSV {o.data} has {len(self.csv)} rows, fewer than one batch "
                    f"({o.batch_size} x {world_size} devices); lower --batch-size"
                )
            return DataLoader(self.csv, shuffle=True, **common)
        length = None
        if o.steps is not None and o.max_minutes is None:
            length = o.steps * o.batch_size * world_size
        if o.uses_formula:
            from semclip_bench.pretrain.formula import FormulaStream

            formula = FormulaStream(
                o.formula_config(),
                self.image_size,
                augment=o.augment,
                length=length if o.data == FORMULA_DATA else None,
                rank=rank,
                world_size=world_size,
            )
            if o.data == FORMULA_DATA:
                return DataLoader(formula, **common)
        stream: Any = SynthCaptionStream(
            o.arch,
            self.image_size,
            seed=o.synth_seed,
            render_size=o.render_size,
            augment=o.augment,
            length=length,
            rank=rank,
            world_size=world_size,
            reuse=o.reuse,
            buffer_size=o.buffer_size or o.batch_size,
        )
        if o.formula_weight > 0:
            from semclip_bench.pretrain.formula import MixedStream

            stream = MixedStream(stream, formula)
        return DataLoader(stream, **common)


def _worker_init(worker_id: int) -> None:
    """One OpenCV thread per DataLoader worker (the workers already run in parallel)."""
    import cv2

    cv2.setNumThreads(1)


def _collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack tensors, make int columns (index, label) tensors, keep strings as lists."""
    out: dict[str, Any] = {}
    for key, first in items[0].items():
        column = [it[key] for it in items]
        if isinstance(first, torch.Tensor):
            out[key] = torch.stack(column)
        elif isinstance(first, int):
            out[key] = torch.tensor(column)
        else:
            out[key] = column
    return out


class _ProgressBar(L.Callback):
    """A tqdm bar (rank 0, stderr) over the training budget: steps done, rate and an ETA.

    With a step budget only, tqdm's own remaining time is the ETA; with a time budget
    (``--max-minutes``) the ETA shown is the sooner of the two ends.
    """

    def __init__(self, steps: int | None, max_seconds: float | None) -> None:
        self.steps = steps
        self.max_seconds = max_seconds
        self.bar: Any = None
        self.t0 = 0.0

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero:
            from tqdm.auto import tqdm

            budget = [f"{self.steps} steps"] if self.steps else []
            budget += [f"{self.max_seconds / 60:g} min"] if self.max_seconds else []
            self.bar = tqdm(total=self.steps, desc=f"pretrain ({' / '.join(budget)})", unit="step")
            self.t0 = time.perf_counter()

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if self.bar is None:
            return
        step = int(trainer.global_step)
        self.bar.update(step - self.bar.n)
        if self.max_seconds:
            elapsed = time.perf_counter() - self.t0
            left = [self.max_seconds - elapsed]
            if self.steps and step:
                left.append((self.steps - step) * elapsed / step)
            self.bar.set_postfix_str(f"ETA {dt.timedelta(seconds=round(max(0.0, min(left))))}")

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class _WithData:
    """Gives a pretraining module its DataLoader (built after DDP setup)."""

    pretrain_data: _DataModule
    trainer: L.Trainer

    def train_dataloader(self) -> DataLoader:
        return self.pretrain_data.loader(self.trainer.global_rank, self.trainer.world_size)


class _Module(_WithData, ClipPretrainModule):
    """Contrastive stage (sem-synth or a captions CSV)."""


class _FormulaModule(_WithData, FormulaPretrainModule):
    """Formula-driven supervised stage."""


class _MixedModule(_WithData, MixedPretrainModule):
    """Contrastive stage plus the weighted formula classification loss."""


def build_module(opts: PretrainOptions, cfg: PretrainConfig) -> ClipPretrainModule:
    """The Lightning module of ``opts``' objective (seeded init, then ``--init`` if given)."""
    module: ClipPretrainModule
    if opts.data == FORMULA_DATA:
        module = _FormulaModule(cfg, opts.formula_config().classes, opts.smoothing())
    elif opts.formula_weight > 0:
        module = _MixedModule(
            cfg, opts.formula_config().classes, opts.formula_weight, opts.smoothing()
        )
    else:
        module = _Module(cfg)
    if opts.init is not None:
        load_init(module.model, opts.init, opts.arch)
    return module


def default_precision() -> str:
    """bf16-mixed on a CUDA GPU that supports it, else full fp32."""
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16-mixed"
    return "32-true"


def profile_data(opts: PretrainOptions, seconds: float) -> float:
    """Iterate the training DataLoader alone for ``seconds`` (after the first batch); prints and
    returns images per second, to choose ``--workers`` / ``--reuse`` before a GPU run."""
    import open_clip

    import semclip_bench.backbones  # noqa: F401 - registers the project's model configs

    cfg = open_clip.get_model_config(opts.arch)
    if cfg is None:
        raise UserError(f"option --arch: {opts.arch!r} is not an open_clip model config")
    size = cfg["vision_cfg"]["image_size"]
    size = int(size[0] if isinstance(size, (list, tuple)) else size)
    endless = replace(opts, steps=None, max_minutes=seconds / 60 + 1)
    loader = _DataModule(endless, size).loader(0, 1)
    it = iter(loader)
    t0 = time.perf_counter()
    next(it)
    t1 = time.perf_counter()
    n = 0
    while time.perf_counter() - t1 < seconds:
        n += len(next(it)["image"])
    rate = n / (time.perf_counter() - t1)
    print(
        f"data: first batch after {t1 - t0:.1f} s, then {rate:.0f} img/s "
        f"({opts.workers} workers, reuse {opts.reuse}, batch {opts.batch_size}, "
        f"render {opts.render_size} px -> {size} px)",
        flush=True,
    )
    return rate


def run_pretrain(opts: PretrainOptions) -> dict[str, Any] | None:
    """Train, export and (optionally) evaluate; returns the summary on rank 0, None elsewhere."""
    opts.validate()
    out = Path(opts.out)
    precision = opts.precision or default_precision()
    cfg = PretrainConfig(
        arch=opts.arch,
        lr=opts.lr,
        weight_decay=opts.weight_decay,
        warmup_steps=opts.warmup,
        max_steps=opts.steps,
        max_seconds=opts.max_minutes * 60 if opts.max_minutes else None,
        seed=opts.seed,
        log_every=opts.log_every,
    )
    L.seed_everything(opts.seed, workers=True, verbose=False)
    module = build_module(opts, cfg)
    stage = stage_record(opts)  # before training: a bad --init fails here, not after the run
    module.pretrain_data = _DataModule(opts, model_image_size(module.model))
    strategy = "ddp" if opts.devices > 1 else "auto"
    trainer = L.Trainer(
        accelerator=opts.accelerator,
        devices=opts.devices,
        strategy=strategy,
        precision=precision,
        max_steps=opts.steps if opts.steps is not None else -1,
        max_epochs=-1,
        max_time=dt.timedelta(minutes=opts.max_minutes) if opts.max_minutes else None,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        gradient_clip_val=1.0,
        num_sanity_val_steps=0,
        callbacks=[_ProgressBar(opts.steps, opts.max_minutes * 60 if opts.max_minutes else None)],
    )
    t0 = time.perf_counter()
    trainer.fit(module)
    wall = time.perf_counter() - t0
    if not trainer.is_global_zero:
        return None
    model = module.model.float().cpu().eval()
    out.mkdir(parents=True, exist_ok=True)
    ckpt = export_checkpoint(model, out, opts.arch)
    curves = write_loss_curve(
        module.history,
        out,
        ylabel="formula classification loss (cross-entropy)" if opts.data == FORMULA_DATA else None,
    )
    size = ckpt.stat().st_size
    history = module.history
    tail = [v for _, v in history[-max(1, min(50, len(history) // 10 or 1)) :]]
    device = (
        f"{opts.devices} x {torch.cuda.get_device_name(0)}"
        if torch.cuda.is_available() and opts.accelerator in ("auto", "gpu", "cuda")
        else f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"
    )
    summary: dict[str, Any] = {
        "arch": opts.arch,
        "checkpoint": ckpt.name,
        "sha256": sha256_file(ckpt),
        "file_bytes": size,
        "fits_shipping_limit": size <= MAX_SHIPPED_BYTES,
        "parameters": sum(p.numel() for p in model.parameters()),
        "steps": int(trainer.global_step),
        "images_seen": int(module.images_seen * trainer.world_size),
        "batch_size": opts.batch_size,
        "global_batch_size": opts.batch_size * trainer.world_size,
        "wall_seconds": round(wall, 1),
        "warmup_steps": min(cfg.warmup_steps, max(cfg.max_steps // 10, 1))
        if cfg.max_steps
        else cfg.warmup_steps,
        "device": device,
        "precision": precision,
        "final_loss": float(sum(tail) / len(tail)) if tail else float("nan"),
        "first_loss": float(history[0][1]) if history else float("nan"),
        "options": {k: v for k, v in asdict(opts).items() if k != "command"},
        "command": opts.command,
        "files": [p.name for p in curves],
        "stage": stage,
        "loss_curve": curve_digest(history),
    }
    if opts.init is not None:
        summary["previous_stage"] = previous_stage(opts.init, stage["init"]["sha256"])
    if opts.evaluate:
        summary["evaluation"] = evaluate_trained(ckpt, opts)
    (out / "pretrain_summary.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    from semclip_bench.pretrain.card import write_model_card

    write_model_card(out / "MODEL_CARD.md", summary)
    print(f"wrote {ckpt} ({size / 1e6:.2f} MB), MODEL_CARD.md and loss curve in {out}")
    return summary


def evaluate_trained(ckpt: Path, opts: PretrainOptions) -> dict[str, Any]:
    """Evaluate the exported checkpoint and the randomly initialised model of the same arch on
    the validation split with every prompt bank (see :mod:`semclip_bench.pretrain.evaluate`)."""
    from semclip_bench.pretrain.evaluate import evaluate_models, validation_config

    device = "cuda" if torch.cuda.is_available() and opts.accelerator != "cpu" else "cpu"
    return evaluate_models(
        opts.arch,
        str(ckpt),
        validation_config(),
        device=device,
        workers=opts.eval_workers or min(8, os.cpu_count() or 1),
        retrieval_images=opts.retrieval_images,
        render_size=opts.render_size,
    )


def command_line() -> list[str]:
    """The current command as argv (for the model card)."""
    return [Path(sys.executable).name, "-m", "semclip_bench", *sys.argv[1:]]


def shell_command(argv: list[str]) -> str:
    return " ".join(shlex.quote(a) for a in argv)


__all__ = [
    "FORMULA_DATA",
    "NORMAL_FRACTION",
    "PretrainOptions",
    "build_module",
    "command_line",
    "default_precision",
    "evaluate_trained",
    "run_pretrain",
    "shell_command",
]
