"""Query throughput, support fitting time and peak GPU memory of every method, against the floor.

Run: ``python -m benchmarks.throughput`` (``--help`` for options). Per method:

- **query inference** (images/s): ``extract`` + ``predict`` of a batch of fresh images already on
  the device (the real per-image cost at query time: nothing cached), at each ``--batch-sizes``;
- **support fitting** (s/episode): ``fit_method`` (``setup_support`` + the head's training, with the
  method's ``configs/methods/<name>.yaml`` options and training) on a K-shot support built like the
  runner's: K normal images, plus K per defect type with random masks for the supervised methods;
  features are extracted beforehand (the runner caches them), so this is the head's cost alone;
- **peak GPU memory**: ``torch.cuda.max_memory_allocated`` over the case (reset before it), weights
  and memory banks included;
- **the floor**: ``backbone.encode_image`` of the same backbone, batch sizes and precision; every
  method's throughput is also given as a ratio to it;
- **where the time goes**: at the largest batch, ``extract`` and ``predict`` each timed alone,
  next to the floor (a second table).

Timing: warm-up calls, ``torch.cuda.synchronize`` around each timed call, ``--repeats`` timed calls,
median. Images are random (timing does not depend on content). Results are printed and written
as one section of ``--out`` (default ``results/performance.md``) keyed by (device, backbone,
precision): a run on another device, backbone or precision adds its section, a re-run replaces
its own.

``--check-precision`` runs a few runner episodes (same data, same supports) in fp32 and in bf16 and
prints/writes the metric differences next to the seed-to-seed spread. ``--profile`` adds a
``torch.profiler`` table of each method's top ops at the largest batch size.
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from benchmarks._sections import write_section
from semclip_bench.errors import UserError

ALL_METHODS = ("semclip", "winclip", "anomalyclip", "patchcore", "linear_probe")
#: Query-inference targets as a fraction of the floor (defined for ViT-B-16-plus-240 on an H200).
TARGETS = {"semclip": 0.60, "patchcore": 0.60, "anomalyclip": 0.60, "winclip": 0.10}
TARGET_BACKBONE = "ViT-B-16-plus-240"


# ----------------------------------------------------------------------------------------- timing
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(
    fn: Callable[[], Any], device: torch.device, warmup: int, repeats: int, reduce=statistics.median
) -> float:
    """Median (or ``reduce``) wall-clock seconds of ``fn()`` over ``repeats`` calls after
    ``warmup`` calls, synchronising the GPU around each call."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return reduce(times)


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        _sync(device)
        torch.cuda.reset_peak_memory_stats(device)


def _peak_gib(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    _sync(device)
    return torch.cuda.max_memory_allocated(device) / 2**30


# ---------------------------------------------------------------------------------------- support
def make_support(
    backbone, method, class_names: tuple[str, ...], shots: int, device: torch.device, precision: str
):
    """A K-shot support in feature space: K normal (+ K per defect type with random masks)."""
    from semclip_bench.models.base import SupportSet
    from semclip_bench.runner.execute.features import extract_features

    size = method.input_geometry(backbone).size
    generator = torch.Generator().manual_seed(0)
    defect_labels = [c for c in range(1, len(class_names)) for _ in range(shots)]
    labels = type(method).support_of([0] * shots, defect_labels)
    n = len(labels)
    masks = torch.zeros(n, size, size)
    for i, label in enumerate(labels):  # one random rectangle per defect image (setup only)
        if label:
            h, w = torch.randint(size // 16, size // 4, (2,), generator=generator).tolist()
            y, x = torch.randint(0, size - max(h, w), (2,), generator=generator).tolist()
            masks[i, y : y + h, x : x + w] = 1.0
    images = torch.randn(n, 3, size, size, generator=generator)
    parts = [
        extract_features(method, images[begin : begin + 32], precision, device)
        for begin in range(0, n, 32)
    ]
    features = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
    return SupportSet(
        features=features,
        labels=torch.tensor(labels, dtype=torch.long, device=device),
        masks=masks.to(device),
        class_names=class_names,
        category="line_space",
    )


# ------------------------------------------------------------------------------------- benchmark
def bench_method(
    name: str, backbone, args: argparse.Namespace, device: torch.device, precision: str
) -> dict[str, Any]:
    """Fit time, and throughput + peak memory per batch size, of one method."""
    from semclip_bench.data.types import DEFECT_TYPES, NORMAL_LABEL
    from semclip_bench.models import method_class
    from semclip_bench.models.lightning import TrainingConfig, fit_method
    from semclip_bench.runner.execute.episode import head_trainer_settings
    from semclip_bench.runner.execute.features import extract_features, prediction_math
    from semclip_bench.runner.plan.config import method_config

    options, training = method_config(name)
    if args.epochs is not None and "epochs" in training:
        training["epochs"] = args.epochs
    class_names = (NORMAL_LABEL, *DEFECT_TYPES)
    torch.manual_seed(0)
    _reset_peak(device)
    method = method_class(name)(backbone, class_names, **options).to(device).eval()
    support = make_support(backbone, method, class_names, args.shots, device, precision)

    def fit() -> None:
        fit_method(
            method,
            support,
            TrainingConfig(**training),
            seed=0,
            **head_trainer_settings(device),
        )
        method.eval()

    # Best of the fits: the first one also pays one-off kernel/library initialisation.
    fit_s = time_call(fit, device, warmup=0, repeats=args.fit_repeats, reduce=min)
    fit_peak = _peak_gib(device)
    size = method.input_geometry(backbone).size
    result: dict[str, Any] = {
        "method": name,
        "support_images": int(support.labels.numel()),
        "epochs": training.get("epochs", 0) if type(method).trainable else 0,
        "fit_s": fit_s,
        "fit_peak_gib": fit_peak,
        "cases": {},
    }
    for batch in args.batch_sizes:
        images = torch.randn(batch, 3, size, size, device=device)

        # as the runner: see runner/execute/features.py
        def query(images: torch.Tensor = images) -> None:
            features = extract_features(method, images, precision, device)
            with torch.no_grad(), prediction_math(precision, device):
                method.predict(features)

        # The floor again, right before the case: a busy machine slows both alike.
        encode = _encode_fn(backbone, batch, precision, device)
        floor_s = time_call(encode, device, warmup=args.warmup, repeats=args.repeats)
        _reset_peak(device)
        seconds = time_call(query, device, warmup=args.warmup, repeats=args.repeats)
        result["cases"][batch] = {
            "ips": batch / seconds,
            "peak_gib": _peak_gib(device),
            "floor_ips": batch / floor_s,
        }
    # Where the largest batch's query time goes: extraction and prediction, each timed alone.
    features = extract_features(method, images, precision, device)

    def extract(images: torch.Tensor = images) -> None:
        extract_features(method, images, precision, device)

    def predict(features: dict[str, torch.Tensor] = features) -> None:
        with torch.no_grad(), prediction_math(precision, device):
            method.predict(features)

    result["split"] = {
        "batch": int(images.shape[0]),
        "extract_s": time_call(extract, device, warmup=args.warmup, repeats=args.repeats),
        "predict_s": time_call(predict, device, warmup=args.warmup, repeats=args.repeats),
        "floor_s": floor_s,
    }
    if args.profile:
        result["profile"] = profile_table(query, device)
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return result


def _encode_fn(backbone, batch: int, precision: str, device: torch.device) -> Callable[[], None]:
    """A call of ``backbone.encode_image`` on a fresh random batch (the floor's unit of work)."""
    from semclip_bench.runner.execute.features import autocast

    images = torch.randn(batch, 3, backbone.image_size, backbone.image_size, device=device)

    def encode() -> None:
        with torch.no_grad(), autocast(precision, device):
            backbone.encode_image(images)

    return encode


def bench_floor(backbone, args, device: torch.device, precision: str) -> dict[str, Any]:
    """``backbone.encode_image`` throughput: the floor every method is compared with."""
    cases = {}
    for batch in args.batch_sizes:
        encode = _encode_fn(backbone, batch, precision, device)
        _reset_peak(device)
        seconds = time_call(encode, device, warmup=args.warmup, repeats=args.repeats)
        cases[batch] = {"ips": batch / seconds, "peak_gib": _peak_gib(device)}
    return {"method": "floor: encode_image", "cases": cases}


def best_floor(
    first: dict[str, Any], second: dict[str, Any], results: list[dict[str, Any]]
) -> dict[str, Any]:
    """The floor row: per batch size the fastest of all its measurements (the passes before and
    after the methods and the one right before each method's case)."""
    cases = {}
    for b in first["cases"]:
        best = max(first["cases"][b], second["cases"][b], key=lambda c: c["ips"])
        adjacent = [r["cases"][b]["floor_ips"] for r in results if b in r["cases"]]
        cases[b] = {**best, "ips": max([best["ips"], *adjacent])}
    return {**first, "cases": cases}


def _ratio(case: dict[str, Any], floor: dict[str, Any], batch: int) -> float:
    """A case's images/s over the floor's measured right before it (else the floor row's)."""
    return case["ips"] / case.get("floor_ips", floor["cases"][batch]["ips"])


def profile_table(fn: Callable[[], None], device: torch.device, rows: int = 15) -> str:
    """Top ops of one call of ``fn`` by (self) device time (CPU time on a CPU)."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    with profile(activities=activities) as prof:
        fn()
        _sync(device)
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    return prof.key_averages().table(sort_by=key, row_limit=rows)


# ------------------------------------------------------------------------------------ formatting
def _fmt_gib(value: float | None) -> str:
    return "n/a (CPU)" if value is None else f"{value:.2f}"


def throughput_table(floor: dict[str, Any], results: list[dict[str, Any]], batches) -> str:
    """Markdown table: one row per method plus the floor; images/s, ratio and peak per batch."""
    head = ["method", "fit s/episode (support imgs, epochs)"]
    for b in batches:
        head += [f"img/s @{b}", f"x floor @{b}", f"peak GiB @{b}"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in [floor, *results]:
        fit = "-"
        if "fit_s" in r:
            fit = f"{r['fit_s']:.2f} ({r['support_images']}, {r['epochs']})"
        cells = [r["method"], fit]
        for b in batches:
            case = r["cases"][b]
            ratio = 1.0 if r is floor else _ratio(case, floor, b)
            cells += [f"{case['ips']:.1f}", f"{ratio:.1%}", _fmt_gib(case["peak_gib"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def split_table(results: list[dict[str, Any]]) -> str:
    """Markdown table: per method, the extraction and prediction milliseconds of the largest
    batch, each timed alone, and the floor's milliseconds timed right before them."""
    rows = [r for r in results if "split" in r]
    if not rows:
        return ""
    b = rows[0]["split"]["batch"]
    lines = [
        f"| method | extract ms @{b} | predict ms @{b} | floor ms @{b} | extract / floor |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        split = r["split"]
        lines.append(
            f"| {r['method']} | {1e3 * split['extract_s']:.2f} | {1e3 * split['predict_s']:.2f} | "
            f"{1e3 * split['floor_s']:.2f} | {split['extract_s'] / split['floor_s']:.2f}x |"
        )
    return "\n".join(lines) + "\n"


def targets_text(floor, results, batches, backbone_name: str, device: torch.device) -> str:
    """Each target method's ratio to the floor at the largest batch size, with PASS / MISS."""
    b = max(batches)
    applies = backbone_name == TARGET_BACKBONE and device.type == "cuda"
    lines = [
        f"Targets at batch {b} (defined for {TARGET_BACKBONE} on CUDA"
        + ("" if applies else "; informative only here")
        + "):"
    ]
    for r in results:
        if r["method"] in TARGETS:
            ratio = _ratio(r["cases"][b], floor, b)
            need = TARGETS[r["method"]]
            verdict = "PASS" if ratio >= need else "MISS"
            lines.append(
                f"- {r['method']}: {ratio:.1%} of the floor (target >= {need:.0%}): {verdict}"
            )
    return "\n".join(lines) + "\n"


def environment(backbone, device: torch.device, precision: str, args) -> dict[str, str]:
    import open_clip

    from semclip_bench import __version__
    from semclip_bench.runner.execute.engine import device_name, git_commit

    spec = backbone.spec
    weights = (
        str(spec.pretrained) if spec.pretrained else "randomly initialised weights; timing only"
    )
    env = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "device": device_name(device),
        "precision": precision,
        "backbone": f"{spec.name} ({backbone.image_size} px, grid "
        f"{backbone.grid_size[0]}x{backbone.grid_size[1]}, width {backbone.width})",
        "weights": weights,
        "versions": f"torch {torch.__version__}, CUDA {torch.version.cuda or 'none'}, "
        f"open_clip {open_clip.__version__}, semclip_bench {__version__}, "
        f"git {git_commit()}, Python {sys.version.split()[0]}",
        "command": "python -m benchmarks.throughput " + " ".join(map(shlex.quote, args.argv)),
    }
    if hasattr(os, "getloadavg"):  # other processes on the machine make CPU timings noisy
        env["load average at start (1/5/15 min)"] = " / ".join(f"{x:.1f}" for x in os.getloadavg())
    return env


def _throughput_body(env, floor, results, args, backbone_name: str, device) -> str:
    """The section text: environment, table, targets, method notes and optional profiles."""
    body = _env_block(env) + "\n" + throughput_table(floor, results, args.batch_sizes) + "\n"
    body += targets_text(floor, results, args.batch_sizes, backbone_name, device)
    split = split_table(results)
    if split:
        body += (
            "\nWhere a query's time goes at the largest batch: extraction and prediction timed "
            "each alone (on CUDA the two overlap inside a query, so they may add up to more).\n\n"
            + split
        )
    body += (
        "\nQuery inference = extract (under the precision's autocast) + predict (float32, as the "
        "runner) of fresh random images already on the device (no decode, no cache); median of "
        f"{args.repeats} timed calls after {args.warmup} warm-up calls. Fit = setup_support + "
        f"head training on a {args.shots}-shot support (features precomputed), best of "
        f"{args.fit_repeats}. Peak = max_memory_allocated over the case, weights included. "
        "x floor = a method's images/s over the floor's timed right before that case (same "
        "batch; interleaved so that a busy machine slows both alike); the floor row shows the "
        "fastest of all floor timings.\n"
    )
    for r in results:
        if "profile" in r:
            body += (
                f"\n<details><summary>profile {r['method']} @{max(args.batch_sizes)}"
                f"</summary>\n\n```\n{r['profile']}```\n</details>\n"
            )
    return body


def _env_block(env: dict[str, str]) -> str:
    return "".join(f"- {k}: {v}\n" for k, v in env.items())


# ------------------------------------------------------------------------------ precision check
def check_precision(args, device: torch.device) -> str:
    """Run the same episodes in fp32 and bf16 with the runner; metric differences per method."""
    import numpy as np

    from semclip_bench.runner.execute.engine import run
    from semclip_bench.runner.plan.config import RunConfig, sweep_variants
    from semclip_bench.runner.record.row_store import METRIC_COLUMNS, read_rows

    rows = {}
    seconds = {}
    with tempfile.TemporaryDirectory() as tmp:
        for precision in ("fp32", "bf16"):
            config = RunConfig(
                kind="sweep",
                shots=args.check_shots,
                seeds=args.check_seeds,
                methods=args.methods,
                data=args.data,
                categories=args.categories,
                backbone=args.backbone,
                pretrained=args.pretrained,
                image_size=args.image_size,
                device=device.type,
                out=Path(tmp) / precision,
                wandb="disabled",
                precision=precision,
                feature_cache=False,  # time the extraction, not a read of earlier features
            )
            start = time.perf_counter()
            command = f"python -m benchmarks.throughput --check-precision ({precision})"
            run(config, sweep_variants(config), command)
            seconds[precision] = time.perf_counter() - start
            rows[precision] = read_rows([Path(tmp) / precision / "sweep"]).set_index("episode_id")
    a, b = rows["fp32"], rows["bf16"].loc[rows["fp32"].index]
    metrics = [m for m in METRIC_COLUMNS if m in a.columns]
    lines = [
        f"Precision check: {len(a)} episodes (shots {args.check_shots}, seeds {args.check_seeds}) "
        f"in fp32 ({seconds['fp32']:.0f}s) and bf16 ({seconds['bf16']:.0f}s). Cells: mean |bf16 - "
        "fp32| / max |bf16 - fp32| over episodes, in metric points (x100); `spread` = mean over "
        "(category, shots) of the fp32 std across seeds, for scale.",
        "",
        "| method | " + " | ".join(metrics) + " |",
        "|---|" + "---|" * len(metrics),
    ]
    for method in sorted(set(a["method"])):
        sel = a["method"] == method
        cells, spread = [], []
        for m in metrics:
            diff = (b.loc[sel, m] - a.loc[sel, m]).abs().to_numpy(dtype=float)
            if np.isnan(diff).all():
                cells.append("n/a")
            else:
                cells.append(f"{100 * np.nanmean(diff):.2f} / {100 * np.nanmax(diff):.2f}")
            std = a.loc[sel].groupby(["category", "shots"])[m].std().to_numpy(dtype=float)
            spread.append("n/a" if np.isnan(std).all() else f"{100 * np.nanmean(std):.2f}")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
        lines.append(f"| {method} spread | " + " | ".join(spread) + " |")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------ main
def _int_list(text: str) -> list[int]:
    """``--check-shots`` and the other lists, parsed as the runner parses ``--shots``."""
    from semclip_bench.runner.plan.config import parse_int_list

    try:
        return parse_int_list(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers >= 0: {exc}") from None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.throughput",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--backbone", default=None, help="open_clip model (default: the package's)")
    parser.add_argument("--pretrained", default=None, help="open_clip tag or checkpoint file")
    parser.add_argument("--image-size", type=int, default=None, help="input size override")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument(
        "--batch-sizes", type=_int_list, default=None, help="default: 1,16,64 on CUDA, 1,4 on CPU"
    )
    parser.add_argument("--methods", default=",".join(ALL_METHODS), help="comma-separated")
    parser.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto")
    parser.add_argument("--out", type=Path, default=Path("results/performance.md"))
    parser.add_argument(
        "--repeats", type=int, default=None, help="timed calls (default 5 on CUDA, 2 on CPU)"
    )
    parser.add_argument(
        "--warmup", type=int, default=None, help="untimed calls (default 2 on CUDA, 1 on CPU)"
    )
    parser.add_argument(
        "--fit-repeats", type=int, default=None, help="timed fits (default 2 on CUDA, 1 on CPU)"
    )
    parser.add_argument("--shots", type=int, default=10, help="K of the fitted support")
    parser.add_argument(
        "--epochs", type=int, default=None, help="override training epochs (default: the config's)"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--profile", action="store_true", help="top-ops table per method")
    parser.add_argument(
        "--skip-throughput", action="store_true", help="only the precision check (with it)"
    )
    check = parser.add_argument_group("precision check")
    check.add_argument("--check-precision", action="store_true", help="fp32 vs bf16 metrics")
    check.add_argument("--data", default="sem-synth", help="dataset of the check")
    check.add_argument("--categories", default=None, help="comma-separated (default: all)")
    check.add_argument("--check-shots", type=_int_list, default=[5])
    check.add_argument("--check-seeds", type=_int_list, default=[0, 1])
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in args.methods if m not in ALL_METHODS]
    if unknown:
        choices = ", ".join(ALL_METHODS)
        parser.error(f"--methods: unknown method {unknown[0]!r}; choose from {choices}")
    if args.categories:
        args.categories = [c.strip() for c in args.categories.split(",") if c.strip()]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for noisy in (
        "lightning",
        "lightning.pytorch",
        "lightning.fabric",
        "lightning.pytorch.utilities.rank_zero",
        "lightning.fabric.utilities.rank_zero",
    ):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=".*module\\(s\\) in eval mode.*")
    from semclip_bench.backbones import BackboneSpec, build_backbone, default_backbone_spec
    from semclip_bench.runner.execute.episode import no_uninitialized_fill
    from semclip_bench.runner.execute.features import resolve_precision
    from semclip_bench.runner.execute.processes import resolve_device

    try:
        no_uninitialized_fill()  # as the runner does
        device = resolve_device(args.device)
        if args.threads:
            torch.set_num_threads(args.threads)
        gpu = device.type == "cuda"
        args.batch_sizes = args.batch_sizes or ([1, 16, 64] if gpu else [1, 4])
        args.repeats = args.repeats or (5 if gpu else 2)
        args.warmup = args.warmup if args.warmup is not None else (2 if gpu else 1)
        args.fit_repeats = args.fit_repeats or (2 if gpu else 1)
        precision = resolve_precision(args.precision, device)
        default = default_backbone_spec()
        name = args.backbone or default.name
        pretrained = args.pretrained
        if pretrained is None and name == default.name:
            pretrained = default.pretrained
        spec = BackboneSpec(name=name, pretrained=pretrained, image_size=args.image_size)
        backbone = build_backbone(spec, device=device)
        env = environment(backbone, device, precision, args)
        print("".join(f"{k}: {v}\n" for k, v in env.items()))
        key = f"{env['device']} | {spec.name} | {precision}"
        if not args.skip_throughput:
            first = bench_floor(backbone, args, device, precision)  # also warms the backbone up
            results: list[dict[str, Any]] = []
            for method in args.methods:
                start = time.perf_counter()
                results.append(bench_method(method, backbone, args, device, precision))
                print(f"{method}: done in {time.perf_counter() - start:.1f}s", flush=True)
                # Written after every method: a run cut short still leaves its rows.
                partial = _throughput_body(env, first, results, args, spec.name, device)
                write_section(args.out, f"throughput | {key}", partial + "\n(partial)\n")
            floor = best_floor(first, bench_floor(backbone, args, device, precision), results)
            body = _throughput_body(env, floor, results, args, spec.name, device)
            print(body)
            write_section(args.out, f"throughput | {key}", body)
        if args.check_precision:
            text = check_precision(args, device)
            print("\n" + text)
            write_section(
                args.out,
                f"precision check | {env['device']} | {spec.name}",
                _env_block(env) + "\n" + text,
            )
        print(f"written: {args.out}")
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
