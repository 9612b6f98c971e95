"""``sweep``, ``ablate``, ``report`` and ``verify`` commands.

Precedence of settings: built-in defaults < the YAML file given with ``--config`` < flags given on
the command line. Flags left out do not override the file.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from semclip_bench.errors import UserError
from semclip_bench.runner.plan.config import (
    ABLATIONS,
    DEFAULT_OUT,
    FIT_MODES,
    RunConfig,
    ablation_variants,
    merge_config,
    read_yaml,
    sweep_variants,
)

log = logging.getLogger(__name__)

_RUN_FLAGS: list[tuple[str, dict[str, Any]]] = [
    ("--shots", dict(help="comma-separated shot counts K (0 = zero-shot where a method allows)")),
    ("--seeds", dict(help="comma-separated seeds; each draws its own support set")),
    (
        "--methods",
        dict(
            help="comma-separated methods or named variants (configs/methods/*.yaml), built in "
            "or from installed plugins (docs/adding_a_method.md)"
        ),
    ),
    (
        "--data",
        dict(
            help="'sem-synth' (built in), 'elpv' / 'elpv-soft' (real solar cells, the [elpv] "
            "extra; ':val' for validation), an MVTec-layout folder or a CSV manifest"
        ),
    ),
    ("--categories", dict(help="comma-separated categories (default: all in the data)")),
    ("--backbone", dict(help="open_clip model name (default: the packaged SEM backbone)")),
    (
        "--pretrained",
        dict(
            help="open_clip pretrained tag or a local checkpoint file; 'none': the backbone "
            "control, the architecture with its seeded random initialisation (no weights)"
        ),
    ),
    ("--image-size", dict(type=int, help="input size (default: the backbone's)")),
    ("--device", dict(choices=["auto", "cpu", "cuda"], help="where to run")),
    (
        "--out",
        dict(
            help="output folder for tables, plots and episode rows (runs/ is git-ignored; the "
            "committed tables were made with --out results or --out results/gpu)"
        ),
    ),
    (
        "--config-dir",
        dict(
            help="folder searched first for methods/<method>.yaml and prompts/<bank>.yaml "
            "(then $SEMCLIP_BENCH_CONFIGS, ./configs, the package's own)"
        ),
    ),
    (
        "--wandb",
        dict(
            choices=["auto", "online", "offline", "disabled"],
            help="W&B mode; auto = online if an API key is configured, else offline",
        ),
    ),
    ("--shard", dict(help="i/n: run only episodes with index %% n == i (job arrays, GPUs)")),
    ("--batch-size", dict(type=int, help="images per batch for feature extraction/inference")),
    (
        "--bootstrap",
        dict(
            type=int,
            metavar="N",
            help="bootstrap resamples of the tables' 95%% intervals (query images and seeds, "
            "paired across methods); 0 disables them",
        ),
    ),
    (
        "--precision",
        dict(
            choices=["auto", "fp32", "bf16"],
            help="frozen-backbone extraction precision (bf16 autocast; the heads train and "
            "predict in float32, with TF32 matmuls on CUDA); auto = fp32 (bf16 moved some "
            "metrics beyond the protocol's 0.5 points)",
        ),
    ),
    (
        "--devices",
        dict(
            type=int,
            help="processes to spread episodes over (Lightning DDP launcher); on CUDA process r "
            "uses GPU r %% GPU count, so N may exceed the GPUs (processes share them); "
            "composes with --shard",
        ),
    ),
    (
        "--procs-per-device",
        dict(
            type=int,
            help="processes per device (0 = auto: several per GPU, whose head training is "
            "launch-bound; 1 on the CPU); the run has devices x procs-per-device processes",
        ),
    ),
    (
        "--maps-shots",
        dict(
            type=int,
            help="K whose anomaly maps are kept and drawn in <out>/maps/<category>.png "
            "(default: the largest K of the run)",
        ),
    ),
    (
        "--no-feature-cache",
        dict(
            dest="feature_cache",
            action="store_false",
            help="do not read or write the on-disk feature cache ($SEMCLIP_BENCH_CACHE/features); "
            "features are then computed once per process (in memory)",
        ),
    ),
    (
        "--fit-mode",
        dict(
            choices=FIT_MODES,
            help="how trained heads are fitted: stacked = the episodes of one (variant, shots) as "
            "one module, alone = one at a time (same budget and batches; results differ in the "
            "last bits), auto = stacked on CUDA, alone on the CPU",
        ),
    ),
]


def _defaults_text(name: str, config: RunConfig) -> str:
    value = getattr(config, name.lstrip("-").replace("-", "_"), None)
    if isinstance(value, list):
        value = ",".join(map(str, value))
    if isinstance(value, tuple):
        value = "/".join(map(str, value))
    return "" if value is None else f" (default: {value})"


def _add_run_flags(parser: argparse.ArgumentParser, defaults: RunConfig, skip=()) -> None:
    parser.add_argument(
        "--config",
        type=Path,
        default=argparse.SUPPRESS,
        help="YAML file of options (keys as the flags, with underscores); flags override it",
    )
    for flag, kwargs in _RUN_FLAGS:
        if flag in skip:
            continue
        kwargs = dict(kwargs)
        kwargs["help"] = kwargs["help"] + _defaults_text(flag, defaults)
        parser.add_argument(flag, default=argparse.SUPPRESS, **kwargs)
    _add_allow_mixed(
        parser,
        "resume into an --out folder whose rows have another dataset digest, "
        "weights digest or protocol version (the tables then say they are mixed)",
    )


def _add_allow_mixed(parser: argparse.ArgumentParser, text: str) -> None:
    parser.add_argument("--allow-mixed", action="store_true", help=text)


def add_parser(subparsers, formatter_class) -> None:
    sweep = subparsers.add_parser(
        "sweep",
        help=f"run every method over shot counts and seeds; write {DEFAULT_OUT}/sweep.md",
        description="Few-shot sweep: methods x shots x seeds x categories, one CSV row per "
        "episode (resumable), tables in <out>/sweep.md, plots <out>/sweep_<metric>.png and "
        "pictures of the anomaly maps <out>/maps/<category>.png.",
        formatter_class=formatter_class,
    )
    _add_run_flags(sweep, RunConfig())
    sweep.set_defaults(func=_sweep)

    ablate_defaults = RunConfig(kind="ablation", shots=[10], methods=["semclip"])
    ablate = subparsers.add_parser(
        "ablate",
        help=f"SEM-CLIP and its ablations; write {DEFAULT_OUT}/ablation.md",
        description="SEM-CLIP full model against its ablations (no expert prompts, single path, "
        "no text guidance, and all three combined); tables in <out>/ablation.md.",
        formatter_class=formatter_class,
    )
    _add_run_flags(ablate, ablate_defaults, skip=("--methods",))
    ablate.add_argument(
        "--ablations",
        default=argparse.SUPPRESS,
        help=f"comma-separated ablations from {', '.join(ABLATIONS)} (default: all of them)",
    )
    ablate.set_defaults(func=_ablate)

    report = subparsers.add_parser(
        "report",
        help="rebuild tables from episode folders (merging shards)",
        description="Rebuild <out>/<kind>.md from the episode rows under one or more folders, "
        "e.g. shards run on different machines.",
        formatter_class=formatter_class,
    )
    report.add_argument(
        "--from",
        dest="sources",
        nargs="+",
        type=Path,
        required=True,
        help="folders holding episodes.csv files (searched recursively)",
    )
    report.add_argument(
        "--kind", choices=["sweep", "ablation"], default="sweep", help="which tables to build"
    )
    report.add_argument(
        "--out",
        type=Path,
        default=Path(DEFAULT_OUT),
        help=f"where to write <kind>.md and the plots (default: {DEFAULT_OUT}; committed tables "
        "are rebuilt with --out results or --out results/gpu)",
    )
    report.add_argument(
        "--maps-shots",
        type=int,
        default=None,
        help="K of the map pictures (<out>/maps/<category>.png; default: the largest K stored)",
    )
    report.add_argument(
        "--bootstrap",
        type=int,
        default=1000,
        metavar="N",
        help="bootstrap resamples of the 95%% intervals, recomputed from the stored per-image "
        "scores without rerunning (default: 1000; 0 disables them)",
    )
    _add_allow_mixed(
        report,
        "merge rows that differ in dataset digest, weights digest or protocol version (refused "
        "otherwise); the tables then start with a warning listing the distinct values",
    )
    report.set_defaults(func=_report)

    verify = subparsers.add_parser(
        "verify",
        help="rerun a few committed episodes from a clean cache; compare their rows exactly",
        description="Rerun a small deterministic subset of the episodes under --from with the "
        "settings in its provenance.json, from a fresh temporary SEMCLIP_BENCH_CACHE, in one "
        "process (rows computed on the CPU: on the CPU in fp32; rows computed on a GPU: on this "
        "machine's first GPU, in their precision), and compare every metric column with the "
        "committed rows bit for bit (as written in the CSV). GPU rows rerun on a GPU of another "
        "model too: the summary names both GPUs, and a failure names them as the likely cause. "
        "Exit 1 with a table of the differences on any mismatch; refuse (exit 2) when the "
        "committed rows' protocol, dataset digest or weights digest differ from the rerun's, "
        "when CPU rows were not computed in fp32, or when GPU rows meet a machine without a GPU.",
        formatter_class=formatter_class,
    )
    verify.add_argument(
        "--from",
        dest="source",
        type=Path,
        default=Path("results/sweep"),
        help="run folder holding episodes.csv and provenance.json",
    )
    verify.add_argument(
        "--subset",
        nargs="+",
        metavar="KEY=V[,V]",
        help="episodes to rerun: 'all', or any of categories=..., shots=..., seeds=..., "
        "methods=... (default: the run's first category, shots 1 and 5, seed 0, every "
        "training-free method present plus semclip)",
    )
    verify.add_argument(
        "--out",
        type=Path,
        default=None,
        help="keep the rerun rows in this folder (default: a temporary folder, removed)",
    )
    verify.set_defaults(func=_verify)


def _config_from_args(args: argparse.Namespace, base: RunConfig) -> RunConfig:
    config = base
    if hasattr(args, "config"):
        config = merge_config(config, read_yaml(args.config), f"--config {args.config}")
    flags = {
        name: getattr(args, name)
        for name in (*RunConfig.field_names(), "image_size", "batch_size")
        if hasattr(args, name)
    }
    return merge_config(config, flags, "command line")


def _startup_seconds() -> float | None:
    from semclip_bench.runner.execute.processes import seconds_since_process_start

    return seconds_since_process_start()


def _command_line() -> str:
    return "python -m semclip_bench " + " ".join(shlex.quote(a) for a in sys.argv[1:])


def variants_of(config: RunConfig) -> list:
    """The variants a run of ``config.kind`` compares: every method (sweep) or SEM-CLIP and its
    ablations (ablation), with their configs from the lookup order of semclip_bench.configs."""
    if config.kind == "ablation":
        return ablation_variants(config)
    return sweep_variants(config)


def execute(
    config: RunConfig,
    command: str,
    allow_mixed: bool = False,
    startup: Callable[[], float | None] | None = None,
) -> tuple[Any, Path | None]:
    """Run ``config`` (resuming finished episodes) and write its tables; the one routine behind
    ``sweep``/``ablate`` and :func:`semclip_bench.run_sweep`.

    ``allow_mixed``: merge rows of other dataset/weights digests or protocol versions (resume and
    tables say so) instead of refusing. ``startup``: gives the seconds since the process started,
    asked right before the run (after the runner's imports, which take seconds: Lightning) and
    recorded as its "startup" stage. Returns the engine's ``RunResult`` and the tables' path (None
    on ranks other than 0). Rank 0 ends by printing how the rows compare with the committed
    reference of the same command, where there is one (``runner/record/compare.py``).
    """
    from semclip_bench.configs import use_config_dir
    from semclip_bench.runner.execute.engine import run
    from semclip_bench.runner.record.compare import reference_report
    from semclip_bench.runner.record.report import write_report

    if config.maps_shots is not None and config.maps_shots not in config.shots:
        raise UserError(
            f"--maps-shots {config.maps_shots}: not a shot count of this run "
            f"({','.join(map(str, config.shots))})"
        )
    with use_config_dir(config.config_dir):
        result = run(
            config,
            variants_of(config),
            command,
            allow_mixed=allow_mixed,
            startup_seconds=startup() if startup is not None else None,
        )
    stages = ", ".join(f"{k} {v:.1f}s" for k, v in result.stage_seconds.items())
    where = "" if result.world_size == 1 else f" (this rank of {result.world_size})"
    print(
        f"{config.kind}: {result.written} episodes run{where}, {result.already_done} resumed, "
        f"{result.skipped} skipped in {result.wall_seconds:.1f}s ({stages}; "
        f"precision {result.precision})"
    )
    if result.join_seconds is not None:
        print(f"processes: every rank exited {result.join_seconds:.1f}s after rank 0 returned")
    if not result.is_main:  # rank 0 writes the tables once every rank has finished
        return result, None
    t0 = time.perf_counter()
    path, _ = write_report(
        [result.folder],
        config.kind,
        config.out,
        allow_mixed=allow_mixed,
        maps_shots=config.maps_shots,
        resamples=config.bootstrap,
    )
    print(f"tables: {path} ({time.perf_counter() - t0:.1f}s)")
    for line in reference_report(config.kind, result.folder):
        print(line)
    return result, path


def _sweep(args: argparse.Namespace) -> int:
    config = _config_from_args(args, RunConfig(kind="sweep"))
    execute(config, _command_line(), args.allow_mixed, _startup_seconds)
    return 0


def _ablate(args: argparse.Namespace) -> int:
    config = _config_from_args(args, RunConfig(kind="ablation", shots=[10], methods=["semclip"]))
    execute(config, _command_line(), args.allow_mixed, _startup_seconds)
    return 0


def _report(args: argparse.Namespace) -> int:
    from semclip_bench.runner.record.report import write_report

    for source in args.sources:
        if not source.exists():
            raise UserError(f"--from: folder not found: {source}")
    path, rows = write_report(
        args.sources,
        args.kind,
        args.out,
        _command_line(),
        allow_mixed=args.allow_mixed,
        maps_shots=args.maps_shots,
        resamples=max(0, args.bootstrap),
    )
    print(f"{args.kind}: {len(rows)} episode rows from {len(args.sources)} folder(s) -> {path}")
    return 0


def _verify(args: argparse.Namespace) -> int:
    from semclip_bench.runner.record.verify import mismatch_table, parse_subset, verify

    result = verify(args.source, parse_subset(args.subset), args.out, _command_line())
    for note in result.notes:
        print(f"note: {note}")
    episodes = len(result.episodes)
    if result.ok:
        print(
            f"verify: {episodes} episodes of {args.source} rerun from a clean cache "
            f"{result.where} in {result.seconds:.0f} s: every compared column is identical"
        )
        return 0
    failed = len({m.episode_id for m in result.mismatches})
    print(mismatch_table(result.mismatches))
    cause = result.likely_cause()
    print(
        f"verify: FAILED: {len(result.mismatches)} values in {failed} of {episodes} episodes of "
        f"{args.source} differ from the rerun ({result.seconds:.0f} s)"
        + (f"; {cause}" if cause else "")
        + (f"; {result.versions}" if result.versions else "")
    )
    return 1
