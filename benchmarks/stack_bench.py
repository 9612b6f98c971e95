"""Fitting S episodes' heads alone (one after another) vs stacked (``models/stacked.py``).

Run: ``python -m benchmarks.stack_bench [--method semclip,anomalyclip] [--shots 5,20] [--members 9]
[--epochs 30] [--backbone semclip-vit-m16] [--device auto]``. For each method and K, builds S
episodes with random support features of the real backbone's shapes (K normal + K per each of 2
defect types, masks on the defect images), fits them with ``fit_method`` one by one and with
``fit_methods_stacked`` twice, and prints the seconds of each, the largest parameter difference
between alone and stacked, and between the two stacked fits (run-to-run repeatability: 0 where
every kernel is deterministic), one row per method and K. Any warning a fit raises about a kernel
without a deterministic implementation is listed under the table. On CUDA it also prints the peak
memory each fit adds to what was allocated before it (the largest single fit when alone) and the
size of one episode's support features: what ``runner/plan/schedule.py``'s stack-size rule is
calibrated on. With ``--out`` the figures are written as a keyed section of that Markdown file
(``results/performance.md``). This is the measurement behind the runner's ``--fit-mode auto``
(stacked on CUDA, alone on the CPU).
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path

import torch

if __package__ in (None, ""):  # run as a script: make ``benchmarks`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._sections import write_section

CLASSES = ("good", "bridge", "particle")


def _members(backbone, method_cls, options: dict, shots: int, count: int, device):
    """``count`` freshly initialised methods, each with its own random support set."""
    from semclip_bench.models.base import SupportSet

    size = backbone.image_size
    n = shots * len(CLASSES)
    out = []
    for seed in range(count):
        torch.manual_seed(seed)
        method = method_cls(backbone, CLASSES, **options).to(device).eval()
        g = torch.Generator().manual_seed(1000 + seed)
        images = torch.randn(n, 3, size, size, generator=g)
        labels = torch.arange(n) % len(CLASSES)
        masks = torch.zeros(n, size, size)
        masks[labels > 0, size // 4 : size // 2, size // 4 : size // 2] = 1
        with torch.no_grad():
            features = {}
            for i in range(0, n, 32):  # extraction in batches: the support may be large
                part = method.extract(images[i : i + 32].to(device))
                for k, v in part.items():
                    features.setdefault(k, []).append(v)
            features = {k: torch.cat(v) for k, v in features.items()}
        support = SupportSet(features, labels.to(device), masks.to(device), CLASSES, "bench")
        out.append((method, support))
    return out


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reset_peak(device) -> int:
    """Start a peak-memory window on CUDA; returns the bytes allocated at its start."""
    if device.type != "cuda":
        return 0
    torch.cuda.reset_peak_memory_stats(device)
    return torch.cuda.memory_allocated(device)


def _peak_gib(device, base: int) -> float | None:
    if device.type != "cuda":
        return None
    return (torch.cuda.max_memory_allocated(device) - base) / 2**30


def _fmt(gib: float | None) -> str:
    return "n/a" if gib is None else f"{gib:.2f}"


def _largest_difference(first: list, second: list) -> float:
    """Largest absolute difference between the trained parameters of two lists of members."""
    return max(
        float((a - b).abs().max())
        for (ma, _), (mb, _) in zip(first, second, strict=True)
        for a, b in zip(ma.trainable_parameters(), mb.trainable_parameters(), strict=True)
    )


def main(argv: list[str] | None = None) -> int:
    from semclip_bench.backbones import BackboneSpec, build_backbone
    from semclip_bench.errors import UserError
    from semclip_bench.models import method_class
    from semclip_bench.models.lightning import TrainingConfig, fit_method
    from semclip_bench.models.stacked import fit_methods_stacked
    from semclip_bench.runner.execute.episode import head_trainer_settings
    from semclip_bench.runner.plan.config import load_variant, parse_int_list
    from semclip_bench.runner.record.provenance import git_commit

    parser = argparse.ArgumentParser(prog="python -m benchmarks.stack_bench")
    parser.add_argument("--method", default="semclip", help="one or more, comma-separated")
    parser.add_argument("--shots", default="5", help="one or more, comma-separated")
    parser.add_argument("--members", type=int, default=9)
    parser.add_argument(
        "--epochs",
        type=int,
        default=None,
        help="default: the method's config; a given count turns the step floor off",
    )
    parser.add_argument("--backbone", default="semclip-vit-m16")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    try:
        shot_counts = parse_int_list(args.shots)
    except ValueError as exc:
        parser.error(f"--shots: comma-separated integers >= 0, got {args.shots!r} ({exc})")
    try:
        variants = [load_variant(name) for name in args.method.split(",")]
    except UserError as exc:  # unknown method or variant: one line
        parser.error(str(exc))

    device = torch.device(
        ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    )
    backbone = build_backbone(BackboneSpec(args.backbone), device=device)
    trainer = head_trainer_settings(device)
    where = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"CPU ({platform.machine()}, {torch.get_num_threads()} threads)"
    )
    commit = git_commit()  # $SEMCLIP_BENCH_GIT_COMMIT overrides (device copies)
    rows = []
    nondeterministic: dict[str, set[str]] = {}
    for name, variant in zip(args.method.split(","), variants, strict=True):
        training = dict(variant.training or {})
        if args.epochs is not None:  # a fixed epoch count: no step floor
            training["epochs"] = args.epochs
            training["min_steps"] = 0
        config = TrainingConfig(**training)
        method_cls = method_class(variant.method)
        options = dict(variant.options or {})
        for shots in shot_counts:
            timings, peaks = [], []
            members = {}
            for mode in ("alone", "stacked", "stacked again"):
                members[mode] = _members(backbone, method_cls, options, shots, args.members, device)
                methods = [m for m, _ in members[mode]]
                supports = [s for _, s in members[mode]]
                seeds = list(range(args.members))
                _sync(device)
                base = _reset_peak(device)
                t0 = time.perf_counter()
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    if mode == "alone":
                        for method, support, seed in zip(methods, supports, seeds, strict=True):
                            fit_method(method, support, config, seed=seed, **trainer)
                    else:
                        fit_methods_stacked(methods, supports, config, seeds=seeds, **trainer)
                _sync(device)
                timings.append(time.perf_counter() - t0)
                peaks.append(_peak_gib(device, base))
                for w in caught:
                    text = str(w.message)
                    if "deterministic" in text:
                        nondeterministic.setdefault(text.split(". ")[0], set()).add(mode)
            feature_mib = (
                sum(v.numel() * v.element_size() for v in members["alone"][0][1].features.values())
                / 2**20
            )
            diff = _largest_difference(members["alone"], members["stacked"])
            repeat = _largest_difference(members["stacked"], members["stacked again"])
            support = shots * len(CLASSES)
            steps = config.epochs_for(support) * config.steps_per_epoch(support)
            rows.append(
                f"| {name} | {shots} | {steps} | {timings[0]:.2f} | {timings[1]:.2f} | "
                f"{timings[1] / timings[0]:.2f} | {diff:.1e} | {repeat:.1e} | {feature_mib:.0f} | "
                f"{_fmt(peaks[0])} | {_fmt(peaks[1])} |"
            )
            print(rows[-1], flush=True)
    body = (
        f"- date: {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}\n"
        f"- device: {where}; commit: {commit}; torch {torch.__version__}\n"
        "- command: python -m benchmarks.stack_bench " + " ".join(argv or sys.argv[1:]) + "\n"
        f"- {args.members} episodes per row on {args.backbone} (random weights: timing only), "
        f"{len(CLASSES)} classes, K support images per class; heads train in IEEE float32 "
        "(as in the runner, in every --precision)\n"
        "- support MiB: one episode's support features; peak GiB: the most memory a fit added "
        "to what was allocated before it (alone: the largest of the S fits; stacked: the one "
        "fit of all S); n/a on the CPU\n\n"
        "| method | K | steps per episode | alone s | stacked s | stacked / alone | "
        "largest parameter difference | stacked run-to-run difference | support MiB | "
        "peak GiB alone | peak GiB stacked |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|\n" + "\n".join(rows) + "\n"
    )
    body += "\nKernels without a deterministic implementation that the fits ran: " + (
        "none reported.\n"
        if not nondeterministic
        else "\n\n"
        + "\n".join(
            f"- {text} ({', '.join(sorted(modes))})" for text, modes in nondeterministic.items()
        )
        + "\n"
    )
    print(body)
    if args.out is not None:
        key = f"stack_bench | {where} | {args.backbone} | S={args.members}"
        write_section(args.out, key, body)
        print(f"written: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
