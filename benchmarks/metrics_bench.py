"""Time and peak memory of the exact pixel metrics on 500 maps of 256 x 256 (33 M pixels).

Run: ``python -m benchmarks.metrics_bench`` (options: ``--images``, ``--size``, ``--cases``).
With CUDA available, every case is also run with the maps as a CUDA tensor (``<case>@cuda``), which
the metrics sort on the GPU.
Each case runs in a fresh child process so that its peak memory is its own. Two peaks are
reported, both measured from after the inputs exist (inputs are excluded):
- ``tracemalloc`` peak: numpy/scipy allocations traced by Python's tracemalloc (numpy registers
  its data buffers with it); torch allocations are not traced by it.
- ``ru_maxrss`` delta: growth of the process's peak resident set (``resource.getrusage``), which
  sees every allocation (numpy, scipy, torch CPU) but only when it exceeds the earlier peak.
- GPU: growth of ``torch.cuda.max_memory_allocated`` over the resident maps.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import numpy as np

CASES = ("pixel_auroc", "pixel_f1_max", "aupro", "evaluate")


def make_case(images: int, size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Float32 maps and bool masks: half the images hold 1-3 defects of very different sizes.

    Built image by image in float32 so that making the inputs leaves no large temporary peak.
    """
    rng = np.random.default_rng(seed)
    maps = np.empty((images, size, size), dtype=np.float32)
    masks = np.zeros((images, size, size), dtype=bool)
    yy, xx = np.ogrid[:size, :size]
    for i in range(images):
        maps[i] = rng.standard_normal((size, size), dtype=np.float32)
        if i % 2:
            for _ in range(rng.integers(1, 4)):
                cy, cx = rng.integers(0, size, size=2)
                ry, rx = rng.integers(1, size // 6, size=2)
                masks[i] |= ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0
            maps[i] += 1.5 * masks[i]
    return maps, masks


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def run_case(case: str, images: int, size: int) -> dict[str, float | str]:
    """Run one case (``name`` or ``name@cuda``) in this process: value, time and peaks."""
    import torch

    from semclip_bench.metrics import aupro, evaluate, pixel_auroc, pixel_f1_max

    name, _, device = case.partition("@")
    maps_np, masks = make_case(images, size)
    labels = masks.reshape(images, -1).any(axis=1)
    scores = maps_np.reshape(images, -1).max(axis=1)
    maps = maps_np
    if device:  # the maps come as a tensor already on the GPU; masks stay on the CPU
        maps = torch.from_numpy(maps_np).to(device)
        del maps_np
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        gpu_before = torch.cuda.memory_allocated()
    funcs: dict[str, Callable[[], object]] = {
        "pixel_auroc": lambda: pixel_auroc(maps, masks),
        "pixel_f1_max": lambda: pixel_f1_max(maps, masks),
        "aupro": lambda: aupro(maps, masks),
        "evaluate": lambda: evaluate(scores, labels, maps=maps, masks=masks),
    }
    rss_before = _rss_mib()
    tracemalloc.start()
    start = time.perf_counter()
    value = funcs[name]()
    if device:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    _, traced_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    rss_delta = _rss_mib() - rss_before
    gpu_peak = (torch.cuda.max_memory_allocated() - gpu_before) / 2**20 if device else 0.0
    if isinstance(value, dict):
        value = {k: v for k, v in value.items() if k in ("pAUROC", "pF1max", "AUPRO")}
        shown = ", ".join(f"{k}={float(v):.6f}" for k, v in value.items())
    else:
        shown = f"{float(value):.6f}"
    return {
        "case": case,
        "pixels": int(maps.numel() if device else maps.size),
        "seconds": round(seconds, 3),
        "tracemalloc_peak_mib": round(traced_peak / 2**20, 1),
        "ru_maxrss_delta_mib": round(rss_delta, 1),
        "gpu_peak_mib": round(gpu_peak, 1),
        "value": shown,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--cases", default=",".join(CASES), help="comma-separated subset")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--md", type=Path, help="also write the table as a section of this file")
    parser.add_argument("--label", default="", help="added to the section key")
    args = parser.parse_args(argv)

    if args.child:
        print(json.dumps(run_case(args.child, args.images, args.size)))
        return

    import torch

    gpu = torch.cuda.is_available()
    cases = args.cases.split(",")
    for case in cases:
        if case.partition("@")[0] not in CASES:
            raise SystemExit(f"--cases: unknown case {case!r}; choose from {', '.join(CASES)}")
    if gpu and args.cases == ",".join(CASES):
        cases += [f"{c}@cuda" for c in CASES]
    where = (
        f"CPU (numpy) and GPU ({torch.cuda.get_device_name()}; torch path: sort, counts and PRO "
        "sums on the GPU, masks and connected components on the CPU)"
        if gpu
        else "CPU only (numpy): no CUDA device here; CUDA-tensor maps would take the torch path"
    )
    lines: list[str] = []

    def say(text: str) -> None:
        print(text, flush=True)
        lines.append(text)

    say(f"{args.images} maps of {args.size}x{args.size} = {args.images * args.size**2:,} pixels")
    say(f"devices: {where}; {os.cpu_count()} CPU cores")
    say(
        "peak memory is measured from after the inputs exist (float32 maps + bool masks, "
        f"{args.images * args.size**2 * 5 / 2**20:.0f} MiB, not included): tracemalloc = "
        "numpy/scipy allocations; ru_maxrss = growth of the process peak RSS; GPU = "
        "torch.cuda.max_memory_allocated growth"
    )
    say(
        f"{'case':<18}{'seconds':>9}{'tracemalloc MiB':>17}{'ru_maxrss MiB':>15}{'GPU MiB':>9}"
        "  value"
    )
    for case in cases:
        cmd = [sys.executable, "-m", "benchmarks.metrics_bench", "--child", case]
        cmd += ["--images", str(args.images), "--size", str(args.size)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        row = json.loads(out.strip().splitlines()[-1])
        say(
            f"{row['case']:<18}{row['seconds']:>9.2f}{row['tracemalloc_peak_mib']:>17.0f}"
            f"{row['ru_maxrss_delta_mib']:>15.0f}{row['gpu_peak_mib']:>9.0f}  {row['value']}"
        )
    if args.md:
        _write_section(args, lines, gpu)


def _write_section(args: argparse.Namespace, lines: list[str], gpu: bool) -> None:
    """The printed table as a section of ``args.md`` (with the code's commit and the command)."""
    import shlex
    from datetime import datetime, timezone

    import torch

    import semclip_bench
    from benchmarks._sections import write_section
    from semclip_bench.runner.execute.engine import git_commit

    device = torch.cuda.get_device_name() if gpu else f"CPU ({os.cpu_count()} cores)"
    load = " / ".join(f"{x:.1f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "?"
    body = (
        f"- date: {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}\n"
        f"- code: {Path(semclip_bench.__file__).parent} (git {git_commit()})\n"
        f"- command: python -m benchmarks.metrics_bench "
        + " ".join(map(shlex.quote, sys.argv[1:]))
        + f"\n- load average at the end (1/5/15 min): {load}\n\n```\n"
        + "\n".join(lines)
        + "\n```\n"
    )
    key = f"metrics_bench | {device} | {args.images} maps of {args.size}x{args.size}"
    write_section(args.md, key + (f" | {args.label}" if args.label else ""), body)


if __name__ == "__main__":
    main()
