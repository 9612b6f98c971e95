"""``pretrain`` command: contrastive pretraining of a compact SEM CLIP, and its evaluation.

``python -m semclip_bench pretrain --data sem-synth --arch semclip-vit-s16 --out DIR --max-minutes
11`` trains; ``python -m semclip_bench pretrain evaluate --checkpoint FILE`` evaluates a file.
Heavy imports (torch, lightning, open_clip) happen only when a command runs.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from semclip_bench.errors import UserError


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
            "'pretrain evaluate --checkpoint FILE' evaluates a checkpoint file."
        ),
        formatter_class=formatter_class,
    )
    p.add_argument("--data", default="sem-synth", help="'sem-synth' or a captions CSV path")
    p.add_argument("--arch", default="semclip-vit-s16", help="open_clip model config name")
    p.add_argument("--out", default=None, help="output folder (required for training)")
    p.add_argument("--steps", type=int, default=None, help="number of optimiser steps")
    p.add_argument(
        "--max-minutes", type=float, default=None, help="stop training after this wall time"
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
    p.add_argument("--eval-workers", type=int, default=None, help="processes for eval rendering")
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
    p.set_defaults(func=_run_train)

    actions = p.add_subparsers(dest="pretrain_command", metavar="ACTION")
    ev = actions.add_parser(
        "evaluate",
        help="zero-shot iAUROC (seen/unseen types) and retrieval of a checkpoint",
        description="Evaluate a checkpoint file (and the random-init model) like the model card.",
        formatter_class=formatter_class,
    )
    ev.add_argument("--checkpoint", required=True, help="checkpoint file (state dict)")
    ev.add_argument("--arch", default="semclip-vit-s16", help="open_clip model config name")
    ev.add_argument("--device", default=None, help="torch device (default: cuda if available)")
    ev.add_argument("--workers", type=int, default=None, help="processes for rendering")
    ev.add_argument("--retrieval-images", type=int, default=1000, help="held-out pairs")
    ev.add_argument(
        "--n-test-good",
        type=int,
        default=None,
        help="normal test images per category (default: the benchmark's SynthConfig)",
    )
    ev.add_argument(
        "--n-per-defect",
        type=int,
        default=None,
        help="test images per defect type and category (default: the benchmark's SynthConfig)",
    )
    ev.add_argument(
        "--render-size", type=int, default=256, help="sem-synth image size (benchmark: 256)"
    )
    ev.add_argument("--no-baseline", action="store_true", help="skip the random-init model")
    ev.add_argument("--json", default=None, help="also write the results to this JSON file")
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
    if args.data != "sem-synth" and not Path(args.data).is_file():
        raise UserError(f"option --data: {args.data} is neither 'sem-synth' nor a captions CSV")
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

    import semclip_bench.backbones as bb
    from semclip_bench.data.synth import SynthConfig
    from semclip_bench.pretrain.evaluate import evaluate_backbone, render_test_split

    if not Path(args.checkpoint).is_file():
        raise UserError(f"option --checkpoint: {args.checkpoint} does not exist")
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
    config = SynthConfig(**overrides)
    rendered = render_test_split(config, args.workers or 1)
    results: dict[str, Any] = {}
    runs = [("pretrained", args.checkpoint)]
    if not args.no_baseline:
        runs.append(("random_init", None))
    for name, weights in runs:
        backbone = bb.build_backbone(bb.BackboneSpec(args.arch, weights), device)
        results[name] = evaluate_backbone(
            backbone,
            zero_shot_config=config,
            rendered=rendered,
            retrieval_images=args.retrieval_images,
            workers=args.workers,
            render_size=args.render_size,
        )
    results["protocol"] = {"zero_shot_config": config.to_dict(), "checkpoint": args.checkpoint}
    text = json.dumps(results, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text, encoding="utf-8")
    return 0


__all__ = ["add_parser"]
