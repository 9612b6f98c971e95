"""``python -m benchmarks.sweep_bench`` on the CPU with the tiny backbone and tiny data."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/ is not installed

from benchmarks._sections import read_sections
from benchmarks.sweep_bench import main
from semclip_bench.data.synth import SynthConfig, generate


def test_warm_mode_times_two_runs_and_writes_a_section(tmp_path: Path, monkeypatch) -> None:
    data = tmp_path / "data"
    generate(
        data,
        SynthConfig(
            seed=3, categories=("line_space",), defect_types=("particle",), image_size=64,
            n_train_good=3, n_test_good=3, n_per_defect=3,
        ),
    )  # fmt: skip
    monkeypatch.setenv("SEMCLIP_BENCH_CACHE", str(tmp_path / "cache"))
    md = tmp_path / "performance.md"
    command = ["sweep", "--data", str(data), "--backbone", "semclip-tiny", "--device", "cpu",
               "--wandb", "disabled", "--shots", "1", "--seeds", "0",
               "--methods", "patchcore,linear_probe"]  # fmt: skip
    assert main(["--feature-cache", "warm", "--md", str(md), "--", *command]) == 0
    sections = read_sections(md)
    (key,) = sections
    assert key.startswith("sweep_bench | CPU") and key.endswith("cache warm")
    body = sections[key]
    rows = [line for line in body.splitlines() if line.startswith("| first") or "| second" in line]
    assert len(rows) == 2
    header = next(line for line in body.splitlines() if line.startswith("| run |"))
    assert "features" in header and "predict" in header
    assert "Second run / first run" in body
    assert "0 loaded from disk" in body and " 0 extracted" in body  # first extracts, second loads
    assert not (tmp_path / "cache" / "features").exists()  # the benchmark's store was its own
