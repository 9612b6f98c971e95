"""``data`` commands: generate the synthetic dataset, check a dataset before benchmarking it."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from semclip_bench.errors import UserError


def _synth_defaults() -> dict[str, Any]:
    """Default values of the generator's configuration (shown in ``--help``)."""
    from semclip_bench.data.synth import SynthConfig

    defaults = SynthConfig()
    values = {name: getattr(defaults, name) for name in _SYNTH_OPTIONS}
    for name in ("categories", "defect_types"):
        values[name] = ",".join(values[name])
    return values


_SYNTH_OPTIONS: tuple[str, ...] = (
    "seed",
    "image_size",
    "bit_depth",
    "n_train_good",
    "n_test_good",
    "n_per_defect",
    "categories",
    "defect_types",
)


def _csv_list(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def add_parser(subparsers: argparse._SubParsersAction, formatter_class: type) -> None:
    """Register the ``data`` command group (``data synth``, ``data check``)."""
    group = subparsers.add_parser(
        "data",
        help="generate the synthetic dataset or check a dataset",
        description="Dataset tools: generate sem-synth, check a dataset folder or CSV manifest.",
        formatter_class=formatter_class,
    )
    actions = group.add_subparsers(dest="data_command", metavar="ACTION")
    group.set_defaults(func=lambda args: _print_help(group))

    defaults = _synth_defaults()
    synth = actions.add_parser(
        "synth",
        help="generate the synthetic SEM defect dataset (MVTec AD layout)",
        description=(
            "Generate the procedural SEM defect dataset into an MVTec AD layout folder.\n"
            "The same options and seed always give the same images. The folder appears only when\n"
            "generation is complete."
        ),
        formatter_class=formatter_class,
    )
    synth.add_argument(
        "--out",
        required=True,
        type=Path,
        metavar="DIR",
        default=argparse.SUPPRESS,
        help="folder to create (must not exist or be empty)",
    )
    synth.add_argument("--seed", type=int, default=defaults["seed"], help="generator seed")
    synth.add_argument(
        "--image-size", type=int, default=defaults["image_size"], help="image side in pixels"
    )
    synth.add_argument(
        "--bit-depth",
        type=int,
        choices=(8, 16),
        default=defaults["bit_depth"],
        help="bits per pixel (8: PNG, 16: TIFF)",
    )
    synth.add_argument(
        "--n-train-good",
        type=int,
        default=defaults["n_train_good"],
        help="normal training images per category",
    )
    synth.add_argument(
        "--n-test-good",
        type=int,
        default=defaults["n_test_good"],
        help="normal test images per category",
    )
    synth.add_argument(
        "--n-per-defect",
        type=int,
        default=defaults["n_per_defect"],
        help="test images per defect type and category",
    )
    synth.add_argument(
        "--categories",
        default=defaults["categories"],
        help="comma-separated pattern families to generate (one category each)",
    )
    synth.add_argument(
        "--defect-types",
        default=defaults["defect_types"],
        help="comma-separated defect types to generate",
    )
    synth.add_argument(
        "--workers",
        type=int,
        default=max(1, min(8, os.cpu_count() or 1)),
        help="parallel worker processes",
    )
    synth.add_argument(
        "--preview",
        type=Path,
        metavar="FILE",
        default=None,
        help="also write a contact sheet of example images (PNG) to FILE",
    )
    synth.set_defaults(func=run_synth)

    check = actions.add_parser(
        "check",
        help="verify a dataset: counts, bit depths, sizes and every problem found",
        description=(
            "Read every image and mask of a dataset and report counts per category, split and\n"
            "label, bit depths and sizes, and every problem (unreadable files, missing or extra\n"
            "masks, mask sizes differing from their images). Exit status 1 if any problem."
        ),
        formatter_class=formatter_class,
    )
    check.add_argument(
        "path", metavar="PATH", help="MVTec AD layout folder, CSV manifest, or 'sem-synth'"
    )
    check.add_argument("--workers", type=int, default=4, help="threads reading images in parallel")
    check.set_defaults(func=run_check)


def _print_help(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def run_synth(args: argparse.Namespace) -> int:
    """``data synth``: generate a dataset into ``--out`` and optionally a preview sheet."""
    from semclip_bench.data.synth import SynthConfig, write_preview
    from semclip_bench.data.synth_cache import ProgressLog, generate_into

    if args.workers < 1:
        raise UserError(f"--workers must be at least 1, got {args.workers}")
    options = {name: getattr(args, name) for name in _SYNTH_OPTIONS}
    for name in ("categories", "defect_types"):
        if options[name] is not None:
            options[name] = _csv_list(options[name])
    config = SynthConfig(**{k: v for k, v in options.items() if v is not None})
    out = Path(args.out).expanduser()
    report = generate_into(out, config, workers=args.workers, progress=ProgressLog(config.n_images))
    print(
        f"wrote {report.n_images} images to {out} in {report.seconds:.1f} s "
        f"({report.images_per_second:.1f} images/s, {args.workers} worker(s))"
    )
    print(f"content digest {report.content_digest} (recorded in {out / 'synth.json'})")
    if args.preview is not None:
        preview = write_preview(Path(args.preview).expanduser(), config)
        print(f"wrote preview sheet to {preview}")
    return 0


def run_check(args: argparse.Namespace) -> int:
    """``data check``: print the dataset's report; exit 1 if any problem was found."""
    from tqdm.auto import tqdm

    from semclip_bench.data.check import check_dataset

    if args.workers < 1:
        raise UserError(f"--workers must be at least 1, got {args.workers}")
    bar = tqdm(desc=f"data check: reading {args.path}", unit="image", leave=False)

    def progress(done: int, total: int) -> None:  # a bar with rate and ETA, on stderr
        bar.total = total
        bar.update(done - bar.n)

    try:
        report = check_dataset(args.path, workers=args.workers, progress=progress)
    finally:
        bar.close()
    print(report.format())
    sys.stdout.flush()
    return 0 if report.ok else 1
