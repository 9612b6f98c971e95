"""Smoke test of ``python -m benchmarks.throughput`` on the CPU with the tiny backbone."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/ is not installed

from benchmarks._sections import read_sections, write_section
from benchmarks.throughput import ALL_METHODS, main


def test_throughput_writes_a_row_per_method_and_the_floor(tmp_path: Path, capsys) -> None:
    out = tmp_path / "performance.md"
    write_section(out, "other | device | backbone | bf16", "kept\n")
    argv = ["--backbone", "semclip-tiny", "--device", "cpu", "--batch-sizes", "2", "--repeats",
            "1", "--warmup", "0", "--shots", "1", "--epochs", "1", "--threads", "2", "--out",
            str(out)]  # fmt: skip
    assert main(argv) == 0
    sections = read_sections(out)
    assert next(iter(sections)) == "other | device | backbone | bf16"  # another key is kept
    key = next(k for k in sections if k.startswith("throughput | "))
    assert key.endswith("| semclip-tiny | fp32")
    body = sections[key]
    rows = [line for line in body.splitlines() if line.startswith("| ") and "---" not in line]
    names = [row.split("|")[1].strip() for row in rows[1:]]
    assert names == ["floor: encode_image", *ALL_METHODS]
    for row in rows[1:]:
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert float(cells[2]) > 0  # images/s
        assert cells[3].endswith("%")
    assert "randomly initialised weights; timing only" in body and "(partial)" not in body
    assert "torch " in body and "open_clip " in body and "--backbone semclip-tiny" in body
    assert "Targets at batch 2" in capsys.readouterr().out

    assert main(argv) == 0  # a re-run replaces its own section, keeps the other one
    again = read_sections(out)
    assert len(again) == 2 and again["other | device | backbone | bf16"].endswith("kept\n\n")
