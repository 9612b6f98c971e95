"""How many processes a run has and how they start (``runner/execute/processes.py``)."""

from __future__ import annotations


def test_launch_method_defaults_and_override(monkeypatch) -> None:
    import pytest

    from semclip_bench.errors import UserError
    from semclip_bench.runner.execute.processes import LAUNCH_ENV, launch_method

    monkeypatch.delenv(LAUNCH_ENV, raising=False)
    assert launch_method() == "fork"  # Linux, CPU or CUDA (fork measured on an H200 host)
    monkeypatch.setenv(LAUNCH_ENV, "exec")
    assert launch_method() == "exec"
    monkeypatch.setenv(LAUNCH_ENV, "spawn")
    with pytest.raises(UserError, match="choose fork or exec"):
        launch_method()


def test_auto_processes_follow_cores_and_gpu_memory(monkeypatch) -> None:
    from types import SimpleNamespace

    import torch

    from semclip_bench.runner.execute import processes
    from semclip_bench.runner.plan.config import RunConfig

    cuda = torch.device("cuda")
    monkeypatch.delenv(processes.LAUNCH_ENV, raising=False)
    monkeypatch.setattr(processes.os, "cpu_count", lambda: 16)

    def gpu_with(gib: float) -> None:  # as nvidia-smi tells it (no CUDA initialised)
        monkeypatch.setattr(processes, "gpu_memory_gib", lambda: gib)

    gpu_with(139)  # an H200: 8 per GPU, bounded by the cores
    assert processes.procs_per_device(RunConfig(), cuda) == 8
    assert processes.procs_per_device(RunConfig(devices=2), cuda) == 4  # 16 cores for 2 GPUs
    monkeypatch.setattr(processes.os, "cpu_count", lambda: 64)
    assert processes.procs_per_device(RunConfig(devices=2), cuda) == 4  # 8 in all
    assert processes.procs_per_device(RunConfig(devices=16), cuda) == 1
    monkeypatch.setattr(processes.os, "cpu_count", lambda: 16)
    gpu_with(24)  # a 24 GiB card: one process
    assert processes.procs_per_device(RunConfig(), cuda) == 1
    gpu_with(80)
    assert processes.procs_per_device(RunConfig(), cuda) == 5
    assert processes.procs_per_device(RunConfig(procs_per_device=3), cuda) == 3  # as asked
    assert processes.procs_per_device(RunConfig(), torch.device("cpu")) == 1
    # No nvidia-smi: forked ranks skip the memory bound (CUDA must stay untouched before the
    # fork); re-executed ones read it from the CUDA runtime.
    monkeypatch.setattr(processes, "gpu_memory_gib", lambda: None)
    props = SimpleNamespace(total_memory=24 * 2**30)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda index: props)
    assert processes.procs_per_device(RunConfig(), cuda) == 8
    monkeypatch.setenv(processes.LAUNCH_ENV, "exec")
    assert processes.procs_per_device(RunConfig(), cuda) == 1


def test_larger_backbones_get_more_memory_per_process(monkeypatch) -> None:
    import torch

    from semclip_bench.backbones import token_volume
    from semclip_bench.runner.execute import processes
    from semclip_bench.runner.plan.config import RunConfig

    assert token_volume("semclip-vit-m16") == 197 * 240
    assert token_volume("ViT-B-16-plus-240") == 226 * 896
    assert token_volume("ViT-B-16-plus-240", image_size=160) == 101 * 896
    assert token_volume("no-such-model") is None
    default = processes.gib_per_process(RunConfig())
    assert default == processes.AUTO_GIB_PER_PROCESS
    assert processes.gib_per_process(RunConfig(backbone="semclip-tiny")) == default  # at least
    assert processes.gib_per_process(RunConfig(backbone="no-such-model")) == default
    vitb = processes.gib_per_process(RunConfig(backbone="ViT-B-16-plus-240"))
    assert vitb == default * (226 * 896 / (197 * 240)) ** 0.5
    monkeypatch.setattr(processes.os, "cpu_count", lambda: 16)
    monkeypatch.setattr(processes, "gpu_memory_gib", lambda: 143771 / 1024)  # an H200
    cuda = torch.device("cuda")
    assert processes.procs_per_device(RunConfig(), cuda) == 8
    assert processes.procs_per_device(RunConfig(backbone="ViT-B-16-plus-240"), cuda) == 4


def test_gpu_memory_from_nvidia_smi(monkeypatch) -> None:
    import subprocess
    from types import SimpleNamespace

    from semclip_bench.runner.execute import processes

    calls = []

    def fake_run(argv, **kwargs):
        calls.append(argv)
        return SimpleNamespace(stdout="143771\n")

    monkeypatch.setattr(processes.subprocess, "run", fake_run)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1,0")
    assert abs(processes.gpu_memory_gib() - 143771 / 1024) < 1e-9
    assert calls[-1][-2:] == ["-i", "1"]  # the first visible GPU, not physical GPU 0

    def missing(argv, **kwargs):
        raise FileNotFoundError("nvidia-smi")

    monkeypatch.setattr(processes.subprocess, "run", missing)
    assert processes.gpu_memory_gib() is None

    def failing(argv, **kwargs):
        raise subprocess.CalledProcessError(9, argv)

    monkeypatch.setattr(processes.subprocess, "run", failing)
    assert processes.gpu_memory_gib() is None


def test_fit_mode_auto_stacks_on_cuda_only() -> None:
    import torch

    from semclip_bench.runner.execute.engine import fit_stacked
    from semclip_bench.runner.plan.config import RunConfig

    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert fit_stacked(RunConfig(), cuda) and not fit_stacked(RunConfig(), cpu)
    assert fit_stacked(RunConfig(fit_mode="stacked"), cpu)
    assert not fit_stacked(RunConfig(fit_mode="alone"), cuda)
