"""``benchmarks.fit_profile``: its table (the child processes are exercised by running it)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/ is not installed

from benchmarks.fit_profile import PARTS, main, section_body


def _row(step: float) -> dict:
    row = {part: step / len(PARTS) for part in PARTS}
    row.update(step=step, fixed_s=0.5, support=7, batch=7, steps=40, full_steps=200)
    return dict(row, variant="semclip-n7-s0")


def test_section_has_one_row_per_episode_and_code_version() -> None:
    results = {"old": {"000-semclip-n7-s0": _row(80.0)}, "after": {"000-semclip-n7-s0": _row(60)}}
    body = section_body(results, ["--", "sweep"], ["sweep", "--shots", "1"], 1)
    rows = [line for line in body.splitlines() if line.startswith("| semclip")]
    assert len(rows) == 2
    assert rows[0].split("|")[2].strip() == "old" and rows[1].split("|")[2].strip() == "after"
    assert "| 80.0 |" in rows[0] and "| 60.0 |" in rows[1]
    assert "python -m semclip_bench sweep --shots 1" in body


def test_the_command_is_required() -> None:
    with pytest.raises(SystemExit):
        main(["--threads", "1"])
