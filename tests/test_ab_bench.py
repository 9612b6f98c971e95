"""benchmarks.ab_bench: the section's medians, ratios, row agreement and projection."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks.ab_bench import section_body


def _run(wall: float, fit: float) -> dict:
    prov = {"device": "CPU (test)", "git_commit": "abc", "stage_seconds": {"fit": fit}}
    return {"command": ["sweep", "--out", "x"], "wall": wall, "ranks": [prov]}


def test_section_reports_medians_ratios_and_projection(tmp_path: Path) -> None:
    rounds = [
        {"before": _run(10.0, 8.0), "after": _run(6.0, 4.0)},
        {"before": _run(12.0, 8.0), "after": _run(7.0, 4.0)},
        {"before": _run(11.0, 8.0), "after": _run(5.0, 4.0)},
    ]
    (tmp_path / "provenance.json").write_text(
        json.dumps({"stage_seconds": {"fit": 100.0, "data": 7.0}})
    )
    body = section_body(rounds, ["- round 1: x 1/1"], ["--base", "b"], "old", tmp_path)
    assert "| wall (process) | 11.0 | 6.0 | 54.5% |" in body
    assert "| fit | 8.0 | 4.0 | 50.0% |" in body
    assert "| fit | 100 | 50 |" in body and "| data | 7 | 7 |" in body  # unmeasured: kept
    assert "| sum of stages | 107 | 57 |" in body
    assert "- round 1: x 1/1" in body
