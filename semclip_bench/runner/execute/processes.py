"""The processes of a run: which device, how many processes, and how they start.

A run on several processes (``--devices N`` GPUs x ``--procs-per-device P``) is started by
Lightning Fabric's DDP launcher on the "cpu" accelerator (gloo: its collectives are one token
broadcast and barriers, so no NCCL is needed). On CUDA, rank ``r`` computes on GPU
``r % device_count``: one process per GPU, or several sharing one (a head's training is
launch-bound and leaves a GPU mostly idle). ``engine.run`` decides what each rank does.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from semclip_bench.errors import UserError
from semclip_bench.runner.plan.config import RunConfig


def seconds_since_process_start() -> float | None:
    """Wall-clock seconds since this process started (Linux ``/proc``; None elsewhere): the
    interpreter start and imports a run pays before ``run`` is entered."""
    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        hertz = os.sysconf("SC_CLK_TCK")
        return max(0.0, time.clock_gettime(time.CLOCK_BOOTTIME) - ticks / hertz)
    except (OSError, ValueError, IndexError, AttributeError):
        return None


def resolve_device(name: str) -> torch.device:
    """``auto`` / ``cpu`` / ``cuda`` as a device, asking NVML rather than the CUDA runtime where
    it can (Lightning's ``num_cuda_devices``): the processes of a run may be forked afterwards,
    and a process that has initialised CUDA cannot fork CUDA-using children."""
    from lightning.fabric.accelerators.cuda import num_cuda_devices

    available = num_cuda_devices() > 0
    if name == "auto":
        return torch.device("cuda" if available else "cpu")
    if name == "cuda" and not available:
        raise UserError("--device cuda: no CUDA device is available here")
    if name not in {"cpu", "cuda"}:
        raise UserError(f"--device: unknown device '{name}'; choose from auto, cpu, cuda")
    return torch.device(name)


#: Processes per GPU when ``procs_per_device`` is 0 ("auto"): a head's training is launch-bound,
#: so several processes keep one GPU busy (results/performance.md: sections labelled "1gpu",
#: 8 processes, and "1gpu-p4", 4 processes).
AUTO_PROCS_PER_GPU = 8
#: Processes of an "auto" run in all, whatever the GPU count: with stacked training the default
#: sweep has a dozen large work items, which more processes cannot share (results/performance.md,
#: section "1 vs 2 H200 (8 vs 16 processes), fp32").
AUTO_MAX_PROCESSES = 8
#: GPU memory budgeted per process by "auto" for the compact default backbone: the features a
#: process caches on its GPU, a stacked fit, the query inference peak and the CUDA context, with
#: room to spare. Larger backbones get more (:func:`gib_per_process`).
AUTO_GIB_PER_PROCESS = 16
#: The total process count the launching process chose, handed to the re-executed ranks so that
#: they agree with it without each querying the GPU (set only while the ranks start).
_PROCESSES_ENV = "SEMCLIP_BENCH_RUN_PROCESSES"


def process_count(config: RunConfig, device: torch.device) -> int:
    """How many processes the run has: ``devices x procs_per_device``, or, in a re-executed rank,
    the count its launcher chose."""
    inherited = os.environ.get(_PROCESSES_ENV)
    return int(inherited) if inherited else config.devices * procs_per_device(config, device)


def procs_per_device(config: RunConfig, device: torch.device) -> int:
    """Processes per device: ``config.procs_per_device``, or for 0 ("auto") the measured default
    on CUDA (:data:`AUTO_PROCS_PER_GPU`, at most :data:`AUTO_MAX_PROCESSES` in all, one per two
    CPU cores and one per :func:`gib_per_process` of the GPU's memory) and 1 on the CPU."""
    if config.procs_per_device:
        return config.procs_per_device
    if device.type != "cuda":
        return 1
    cores = os.cpu_count() or 1
    count = min(
        AUTO_PROCS_PER_GPU, AUTO_MAX_PROCESSES // config.devices, cores // (2 * config.devices)
    )
    gib = gpu_memory_gib()
    if gib is None and launch_method() == "exec":
        # Reading it through the CUDA runtime initialises CUDA here: fine when the processes are
        # re-executed, not when they are forked from this one.
        gib = torch.cuda.get_device_properties(0).total_memory / 2**30
    if gib is not None:
        count = min(count, int(gib // gib_per_process(config)))
    return max(1, count)


def gib_per_process(config: RunConfig) -> float:
    """GPU memory "auto" budgets per process: :data:`AUTO_GIB_PER_PROCESS` times the square root
    of the run's backbone's token volume (tokens x width per image) over the compact default's
    (at least 1). A heuristic on the H200 runs of ViT-B-16-plus-240 (4.3 times the default's
    volume), where 8 processes on one GPU leave no memory to spare and 4 run as fast
    (results/performance.md, sections labelled "vitb-bf16-p4" and "vitb-fp32-p4"). This rule
    gives it 33 GiB, so 4 processes on an H200."""
    from semclip_bench.backbones import DEFAULT_MODEL, token_volume

    reference = token_volume(DEFAULT_MODEL)
    volume = token_volume(config.backbone or DEFAULT_MODEL, config.image_size)
    if not reference or not volume:
        return float(AUTO_GIB_PER_PROCESS)
    return AUTO_GIB_PER_PROCESS * max(1.0, volume / reference) ** 0.5


def gpu_memory_gib() -> float | None:
    """Total memory of the first visible GPU in GiB, asked from ``nvidia-smi`` so that CUDA is not
    initialised in this process (the ranks may be forked from it); None when it cannot tell."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")[0].strip()
    try:
        answer = subprocess.run(
            ["nvidia-smi", "--query-gpu=memory.total", "--format=csv,noheader,nounits"]
            + (["-i", visible] if visible else []),
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        )
        return float(answer.stdout.split()[0]) / 1024  # MiB
    except (OSError, ValueError, IndexError, subprocess.SubprocessError):
        return None


#: How the processes of a multi-process run start: "fork" copies this process after its imports,
#: so no rank pays the interpreter start and imports again; "exec" re-executes the command line in
#: each process (Lightning's script launcher). Default: fork wherever the platform has it (the
#: "launch" column of results/performance.md, sections labelled "final-1gpu", exec, and
#: "stacked-fork-honest-startup-1gpu", fork), else exec.
#: SEMCLIP_BENCH_LAUNCH overrides.
LAUNCH_ENV = "SEMCLIP_BENCH_LAUNCH"


def launch_method() -> str:
    """``"fork"`` or ``"exec"``: how a run starts its processes, on every device
    (see :data:`LAUNCH_ENV`)."""
    import multiprocessing

    chosen = os.environ.get(LAUNCH_ENV, "").strip().lower()
    if chosen and chosen not in {"fork", "exec"}:
        raise UserError(f"{LAUNCH_ENV}={chosen!r}: choose fork or exec")
    can_fork = "fork" in multiprocessing.get_all_start_methods()
    if chosen == "fork" and not can_fork:
        raise UserError(f"{LAUNCH_ENV}=fork: this platform cannot fork processes; use exec")
    if not chosen:
        chosen = "fork" if can_fork else "exec"
    return chosen


def launch_processes(
    processes: int, device: torch.device, rank_main: Callable[[Any, torch.device, bool], Any]
) -> Any:
    """Run ``rank_main(fabric, rank_device, forked)`` in ``processes`` processes; returns rank 0's
    result (in this process).

    With "fork" (:func:`launch_method`) the processes are forked from this one (Fabric
    ``ddp_fork``): this process waits and gets rank 0's result back; no CUDA may be touched here
    before (:func:`resolve_device` asks NVML, not the CUDA runtime). With "exec" the launcher
    re-executes the command line and this process is rank 0. A rank that fails with a
    ``UserError`` gives that one line here, not a traceback.
    """
    import lightning as L
    from torch.multiprocessing import ProcessRaisedException

    method = launch_method()
    strategy = "ddp_fork" if method == "fork" else "ddp"
    fabric = L.Fabric(accelerator="cpu", devices=processes, strategy=strategy)

    def wrapped(fabric) -> Any:
        # Split the CPU between the processes (decode threads, metrics, CPU compute).
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // processes))
        rank_device = device
        if device.type == "cuda":
            rank_device = torch.device("cuda", fabric.local_rank % torch.cuda.device_count())
            torch.cuda.set_device(rank_device)
        result = rank_main(fabric, rank_device, method == "fork")
        if hasattr(result, "returned_at"):
            result.returned_at = time.time()  # wall clock: compared across processes below
        return result

    launching = _PROCESSES_ENV not in os.environ
    if launching:  # the re-executed ranks inherit the count (see _PROCESSES_ENV)
        os.environ[_PROCESSES_ENV] = str(processes)
    try:
        result = fabric.launch(wrapped)
        if getattr(result, "returned_at", None) is not None:
            # from rank 0's return to every rank's exit (their teardown): the "join" stage
            result.join_seconds = round(max(0.0, time.time() - result.returned_at), 2)
        return result
    except ProcessRaisedException as exc:  # a rank failed: its own last line, not a traceback
        lines = [line for line in str(exc).splitlines() if line.strip()]
        last = lines[-1] if lines else str(exc)
        if "UserError: " in last:
            raise UserError(last.split("UserError: ", 1)[1]) from None
        raise
    finally:
        if launching:
            os.environ.pop(_PROCESSES_ENV, None)
