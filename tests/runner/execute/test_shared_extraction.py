"""``--devices 2`` with the disk store: each image's features are extracted by one rank only."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]


def test_ranks_split_the_extraction(tiny_data: Path, fast_config: Path, tmp_path: Path) -> None:
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": str(REPO),
        "SEMCLIP_BENCH_FEATURES": str(tmp_path / "features"),  # an empty store
    }
    args = ["sweep", "--config", str(fast_config), "--data", str(tiny_data), "--shots", "1",
            "--methods", "patchcore,linear_probe", "--device", "cpu", "--devices", "2",
            "--out", str(tmp_path / "out")]  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-m", "semclip_bench", *args],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    extracted, loaded = [], []
    for rank in (0, 1):
        line = json.loads(
            (tmp_path / "out" / "sweep" / f"rank{rank}" / "provenance.json").read_text()
        )
        cache = line["cache"]
        extracted.append(int(re.search(r"(\d+) extracted", cache).group(1)))
        loaded.append(int(re.search(r"(\d+) loaded from disk", cache).group(1)))
    # Every (feature kind, image) was extracted by exactly one rank, about half each.
    stored = list((tmp_path / "features").rglob("*.pt"))
    assert sum(extracted) == len(stored) > 20
    assert abs(extracted[0] - extracted[1]) <= 2
    assert all(n > 0 for n in loaded)  # each rank read the other's share from disk
