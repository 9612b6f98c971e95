"""``pretrain`` command: contrastive pretraining of a compact SEM CLIP, and its evaluation.

``python -m semclip_bench pretrain --data sem-synth --arch semclip-vit-m16 --out DIR --max-minutes
8`` trains; ``python -m semclip_bench pretrain evaluate --checkpoint FILE`` evaluates a file on the
validation split (and with ``--update-card DIR`` writes the result into that run's summary and
model card). Heavy imports (torch, lightning, open_clip) happen only when a command runs.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from semclip_bench.errors import UserError

#: Default ``--arch`` (``semclip_bench.backbones.DEFAULT_MODEL``, repeated here so that building
#: the parser imports no torch; a test checks they agree).
DEFAULT_ARCH = "semclip-vit-m16"


def add_parser(subparsers: argparse._SubParsersAction, formatter_class: type) -> None:
    """Register the ``pretrain`` command (training) and its ``evaluate`` action."""
    p = subparsers.add_parser(
        "pretrain",
        help="pretrain a compact SEM-domain CLIP on captioned SEM images",
        description=(
            "Contrastive image-text pretraining (open_clip model, ClipLoss, Lightning) from\n"
            "random init on sem-synth renders (data seed >= 100000; scratch and infilm held\n"
            "out) or on a captions CSV (image_path,caption). Writes <arch>.pt (fp16), .sha256,\n"
            "loss curve and MODEL_CARD.md into --out.\n"
            "'--data formula': formula-driven supervised stage (FractalDB-style IFS classes,\n"
            "vision tower + linear head, cross-entropy); '--init FILE' starts a stage from an\n"
            "earlier stage's <arch>.pt; '--formula-weight W' adds W x the formula loss to the\n"
            "contrastive loss of --data sem-synth.\n"
            "'pretrain evaluate --checkpoint FILE' evaluates a checkpoint file."
        ),
        formatter_class=formatter_class,
    )
    p.add_argument(
        "--data",
        default="sem-synth",
        help="'sem-synth', 'formula' (formula-driven supervised stage) or a captions CSV path",
    )
    p.add_argument("--arch", default=DEFAULT_ARCH, help="open_clip model config name")
    p.add_argument("--out", default=None, help="output folder (required for training)")
    p.add_argument(
        "--steps",
        type=int,
        default=None,
        help="number of optimiser steps (training needs --steps, --max-minutes or both)",
    )
    p.add_argument(
        "--max-minutes",
        type=float,
        default=None,
        help="stop training after this wall time (training needs --steps, --max-minutes or both)",
    )
    p.add_argument("--batch-size", type=int, default=256, help="batch size per device")
    p.add_argument("--lr", type=float, default=5e-4, help="peak AdamW learning rate")
    p.add_argument("--weight-decay", type=float, default=0.1, help="AdamW weight decay")
    p.add_argument("--warmup", type=int, default=200, help="linear warmup steps")
    p.add_argument("--workers", type=int, default=4, help="DataLoader workers (renderers)")
    p.add_argument("--devices", type=int, default=1, help="devices (DDP when > 1)")
    p.add_argument(
        "--precision",
        default=None,
        help="Lightning precision (default: bf16-mixed on a bf16 GPU, else 32-true)",
    )
    p.add_argument("--accelerator", default="auto", help="Lightning accelerator (auto/cpu/gpu)")
    p.add_argument("--seed", type=int, default=0, help="model init / shuffling seed")
    p.add_argument(
        "--synth-seed", type=int, default=100_000, help="sem-synth data seed (>= 100000)"
    )
    p.add_argument(
        "--reuse",
        type=int,
        default=1,
        help="sem-synth: average uses of each render (buffered, fresh augmentation and caption "
        "each time); >1 when the renderers cannot keep up with the GPU",
    )
    p.add_argument(
        "--buffer-size",
        type=int,
        default=None,
        help="sem-synth with --reuse > 1: renders kept per worker (default: --batch-size)",
    )
    p.add_argument("--render-size", type=int, default=256, help="sem-synth render size (px)")
    p.add_argument("--no-augment", action="store_true", help="no flips / 90-degree rotations")
    p.add_argument("--no-eval", action="store_true", help="skip the evaluation at the end")
    p.add_argument(
        "--eval-workers",
        type=int,
        default=None,
        help="processes for eval rendering (default: the CPU count, at most 8)",
    )
    p.add_argument(
        "--retrieval-images", type=int, default=1000, help="held-out pairs for retrieval eval"
    )
    p.add_argument(
        "--profile-data",
        type=float,
        default=None,
        metavar="SECONDS",
        help="only measure the DataLoader's images/s for SECONDS (no training, no output files)",
    )
    p.add_argument("--log-every", type=int, default=50, help="print the loss every N steps")
    p.add_argument(
        "--init",
        default=None,
        metavar="FILE",
        help="start from this checkpoint of an earlier stage (<arch>.pt; strict load) instead "
        "of the seeded random init",
    )
    p.add_argument(
        "--formula-classes",
        type=int,
        default=None,
        help="formula data: number of IFS classes (default 1000)",
    )
    p.add_argument(
        "--formula-seed",
        type=int,
        default=None,
        help="formula data: seed of the classes (default 0)",
    )
    p.add_argument(
        "--formula-weight",
        type=float,
        default=0.0,
        help="with --data sem-synth: add W x the formula classification loss of a formula batch "
        "drawn with each step (default 0: contrastive only)",
    )
    p.add_argument(
        "--label-smoothing",
        type=float,
        default=None,
        help="formula classification: label smoothing of the cross-entropy (default 0.1)",
    )
    p.set_defaults(func=_run_train)

    actions = p.add_subparsers(dest="pretrain_command", metavar="ACTION")
    ev = actions.add_parser(
        "evaluate",
        help="zero-shot iAUROC per prompt bank (seen/unseen types) and retrieval of a checkpoint",
        description=(
            "Evaluate a checkpoint file (and the random-init model) like the model card:\n"
            "sem-synth validation split (SynthConfig(seed=1)), zero-shot iAUROC with the\n"
            "expert, generic and WinCLIP prompt banks, caption retrieval on held-out pairs."
        ),
        formatter_class=formatter_class,
    )
    ev.add_argument("--checkpoint", required=True, help="checkpoint file (state dict)")
    ev.add_argument("--arch", default=DEFAULT_ARCH, help="open_clip model config name")
    ev.add_argument("--device", default=None, help="torch device (default: cuda if available)")
    ev.add_argument(
        "--workers", type=int, default=None, help="processes for rendering (default: 1)"
    )
    ev.add_argument("--retrieval-images", type=int, default=1000, help="held-out pairs")
    ev.add_argument(
        "--n-test-good",
        type=int,
        default=None,
        help="normal test images per category (default: SynthConfig's)",
    )
    ev.add_argument(
        "--n-per-defect",
        type=int,
        default=None,
        help="test images per defect type and category (default: SynthConfig's)",
    )
    ev.add_argument(
        "--render-size", type=int, default=256, help="sem-synth image size (benchmark: 256)"
    )
    ev.add_argument(
        "--banks",
        default="expert,generic,winclip",
        help="comma-separated prompt banks for the zero-shot evaluation",
    )
    ev.add_argument("--no-baseline", action="store_true", help="skip the random-init model")
    ev.add_argument("--json", default=None, help="also write the results to this JSON file")
    ev.add_argument(
        "--update-card",
        default=None,
        metavar="DIR",
        help="put the results into DIR/pretrain_summary.json (the training run of this "
        "checkpoint; its sha256 must match) and rewrite DIR/MODEL_CARD.md",
    )
    ev.add_argument(
        "--note",
        action="append",
        default=[],
        help="with --update-card: a line for the card's 'How this file was produced' (repeatable)",
    )
    ev.set_defaults(func=_run_evaluate)


def _run_train(args: argparse.Namespace) -> int:
    from semclip_bench.pretrain.train import (
        PretrainOptions,
        command_line,
        profile_data,
        run_pretrain,
    )

    if not args.out:
        raise UserError("pretrain needs --out DIR (where the checkpoint and model card go)")
    if args.data not in ("sem-synth", "formula") and not Path(args.data).is_file():
        raise UserError(
            f"option --data: {args.data} is neither 'sem-synth', 'formula' nor a captions CSV"
        )
    opts = PretrainOptions(
        data=args.data,
        arch=args.arch,
        out=args.out,
        steps=args.steps,
        max_minutes=args.max_minutes,
        batch_size=args.batch_size,
        lr=args.lr,
        weight_decay=args.weight_decay,
        warmup=args.warmup,
        workers=args.workers,
        devices=args.devices,
        precision=args.precision,
        accelerator=args.accelerator,
        seed=args.seed,
        synth_seed=args.synth_seed,
        render_size=args.render_size,
        reuse=args.reuse,
        buffer_size=args.buffer_size,
        augment=not args.no_augment,
        evaluate=not args.no_eval,
        eval_workers=args.eval_workers,
        retrieval_images=args.retrieval_images,
        log_every=args.log_every,
        init=args.init,
        formula_classes=args.formula_classes,
        formula_seed=args.formula_seed,
        formula_weight=args.formula_weight,
        label_smoothing=args.label_smoothing,
        command=command_line(),
    )
    if args.profile_data is not None:
        opts.validate()
        profile_data(opts, args.profile_data)
        return 0
    run_pretrain(opts)
    return 0


def _run_evaluate(args: argparse.Namespace) -> int:
    import torch

    from semclip_bench.pretrain.evaluate import ZERO_SHOT_BANKS, evaluate_models, validation_config

    if not Path(args.checkpoint).is_file():
        raise UserError(f"option --checkpoint: {args.checkpoint} does not exist")
    banks = [b.strip() for b in args.banks.split(",") if b.strip()]
    unknown = [b for b in banks if b not in ZERO_SHOT_BANKS]
    if not banks or unknown:
        raise UserError(
            f"option --banks: {', '.join(unknown) or 'empty'} (choose from "
            f"{', '.join(ZERO_SHOT_BANKS)})"
        )
    if args.note and not args.update_card:
        raise UserError("option --note needs --update-card DIR")
    summary_path = None
    if args.update_card:
        summary_path = Path(args.update_card) / "pretrain_summary.json"
        _check_summary(summary_path, Path(args.checkpoint))
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    overrides = {
        k: v
        for k, v in (
            ("n_test_good", args.n_test_good),
            ("n_per_defect", args.n_per_defect),
            ("image_size", args.render_size),
        )
        if v is not None
    }
    results = evaluate_models(
        args.arch,
        args.checkpoint,
        validation_config(**overrides),
        device=device,
        workers=args.workers or 1,
        retrieval_images=args.retrieval_images,
        render_size=args.render_size,
        baseline=not args.no_baseline,
        banks=banks,
    )
    results["protocol"]["checkpoint"] = Path(args.checkpoint).name
    text = json.dumps(results, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text, encoding="utf-8")
    if summary_path is not None:
        _update_card(summary_path, results, args.note)
    return 0


def _check_summary(summary_path: Path, checkpoint: Path) -> dict[str, Any]:
    """The training summary of ``checkpoint``; UserError when missing or for another file."""
    from semclip_bench.pretrain.export import sha256_file

    if not summary_path.is_file():
        raise UserError(f"option --update-card: {summary_path} does not exist")
    try:
        summary = json.loads(summary_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UserError(f"option --update-card: {summary_path} is not readable JSON") from exc
    if summary.get("sha256") != sha256_file(checkpoint):
        raise UserError(
            f"option --update-card: {checkpoint} (sha256 {sha256_file(checkpoint)[:12]}...) is "
            f"not the checkpoint of {summary_path} (sha256 {str(summary.get('sha256'))[:12]}...)"
        )
    return summary


def _update_card(summary_path: Path, results: dict[str, Any], notes: list[str]) -> None:
    """Write ``results`` (and ``notes``) into the summary and rewrite the model card."""
    from semclip_bench.pretrain.card import write_model_card

    summary = json.loads(summary_path.read_text(encoding="utf-8"))
    summary["evaluation"] = results
    summary["sha256_verified"] = True  # _check_summary compared the file with the summary
    if notes:
        summary["notes"] = list(notes)
    summary_path.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    card = write_model_card(summary_path.with_name("MODEL_CARD.md"), summary)
    print(f"updated {summary_path} and {card}")


__all__ = ["add_parser"]
