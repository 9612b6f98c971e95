"""Smoke test of ``python -m benchmarks.convergence`` on the CPU with the tiny backbone."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/ is not installed

from benchmarks.convergence import checkpoints, main
from semclip_bench.data.fixtures import write_tiny_mvtec


@pytest.fixture(scope="module")
def tiny_val(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("val") / "data"
    return write_tiny_mvtec(root, seed=1, image_size=64, n_train_good=3, n_per_defect=7)


def test_checkpoints_are_quarter_half_full_double() -> None:
    assert checkpoints(8) == [2, 4, 8, 16]
    assert checkpoints(30) == [7, 15, 30, 60]
    assert checkpoints(1) == [1, 2]


def test_report_has_loss_per_epoch_and_metrics_at_checkpoints(
    tiny_val: Path, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "convergence.md"
    argv = ["--method", "semclip_plus", "--data", str(tiny_val), "--shots", "1,2", "--epochs",
            "4", "--backbone", "semclip-tiny", "--device", "cpu", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert out.read_text() == text
    assert "# Convergence of `semclip_plus` (E = 4 epochs)" in text
    loss_lines = [line for line in text.splitlines() if line.startswith("Training loss")]
    assert len(loss_lines) == 2  # K = 1 and K = 2, one seed, one category
    for line in loss_lines:
        values = [float(v) for v in line.split(": ", 1)[1].split(", ")]
        assert len(values) == 8 and all(v > 0 for v in values)  # 2E epochs
    summary = text.split("## Mean over categories and seeds")[1]
    rows = [r for r in summary.splitlines() if r.startswith("| ") and "---" not in r][1:]
    assert [(r.split("|")[1].strip(), r.split("|")[2].strip()) for r in rows] == [
        (k, e) for k in ("1", "2") for e in ("1", "2", "4", "8")
    ]
    for row in rows:
        i_auc = float(row.split("|")[4])
        assert 0.0 <= i_auc <= 1.0


def test_non_trainable_method_is_one_line(tiny_val: Path, capsys) -> None:
    assert main(["--method", "winclip", "--data", str(tiny_val), "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not trainable" in err[0]
