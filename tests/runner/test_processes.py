"""How many processes a run has and how they start (``runner/processes.py``)."""

from __future__ import annotations


def test_launch_method_defaults_and_override(monkeypatch) -> None:
    import pytest
    import torch

    from semclip_bench.errors import UserError
    from semclip_bench.runner.processes import LAUNCH_ENV, launch_method

    monkeypatch.delenv(LAUNCH_ENV, raising=False)
    assert launch_method(torch.device("cpu")) == "fork"  # Linux: fork is available
    assert launch_method(torch.device("cuda")) == "exec"  # not yet measured on a GPU
    monkeypatch.setenv(LAUNCH_ENV, "fork")
    assert launch_method(torch.device("cuda")) == "fork"
    monkeypatch.setenv(LAUNCH_ENV, "spawn")
    with pytest.raises(UserError, match="choose fork or exec"):
        launch_method(torch.device("cpu"))


def test_auto_processes_follow_cores_and_gpu_memory(monkeypatch) -> None:
    from types import SimpleNamespace

    import torch

    from semclip_bench.runner import processes
    from semclip_bench.runner.config import RunConfig

    cuda = torch.device("cuda")
    monkeypatch.delenv(processes.LAUNCH_ENV, raising=False)
    monkeypatch.setattr(processes.os, "cpu_count", lambda: 16)

    def gpu_with(gib: float) -> None:
        props = SimpleNamespace(total_memory=int(gib * 2**30))
        monkeypatch.setattr(torch.cuda, "get_device_properties", lambda index: props)

    gpu_with(139)  # an H200: 8 per GPU, bounded by the cores
    assert processes.procs_per_device(RunConfig(), cuda) == 8
    assert processes.procs_per_device(RunConfig(devices=2), cuda) == 4  # 16 cores for 2 GPUs
    gpu_with(24)  # a 24 GiB card: one process
    assert processes.procs_per_device(RunConfig(), cuda) == 1
    gpu_with(80)
    assert processes.procs_per_device(RunConfig(), cuda) == 5
    assert processes.procs_per_device(RunConfig(procs_per_device=3), cuda) == 3  # as asked
    assert processes.procs_per_device(RunConfig(), torch.device("cpu")) == 1
