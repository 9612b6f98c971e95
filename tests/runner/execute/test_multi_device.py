"""``--devices 2``: two DDP processes (Lightning Fabric, gloo on CPU) give a single run's rows."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd

from semclip_bench.cli import main
from semclip_bench.runner.record.row_store import METRIC_COLUMNS, EpisodeStore, read_rows

REPO = Path(__file__).resolve().parents[3]


def _cli(*args: str, timeout: int = 240, launch: str = "fork") -> subprocess.CompletedProcess:
    """The CLI in a fresh interpreter: the ranks are forked from it, or (``launch="exec"``)
    Lightning's launcher re-executes that command line (it cannot re-execute pytest)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    env["SEMCLIP_BENCH_LAUNCH"] = launch
    return subprocess.run(
        [sys.executable, "-m", "semclip_bench", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _metrics(rows: pd.DataFrame) -> pd.DataFrame:
    columns = ["episode_id", "status", "reason", *METRIC_COLUMNS, "per_type_auroc"]
    return rows[columns].sort_values("episode_id").reset_index(drop=True)


def test_two_processes_match_one(tiny_data: Path, fast_config: Path, tmp_path: Path) -> None:
    common = (
        "sweep",
        "--config",
        str(fast_config),
        "--data",
        str(tiny_data),
        "--shots",
        "1",
        "--methods",
        "patchcore,linear_probe,semclip",
        "--device",
        "cpu",
    )
    assert main([*common, "--out", str(tmp_path / "one")]) == 0  # the reference, in-process
    multi = _cli(*common, "--out", str(tmp_path / "two"), "--devices", "2")
    assert multi.returncode == 0, multi.stderr[-3000:]
    assert re.search(r"^processes: every rank exited [0-9.]+s after rank 0", multi.stdout, re.M)

    folder = tmp_path / "two" / "sweep"
    per_rank = {r: read_rows([folder / f"rank{r}"]) for r in (0, 1)}
    # 1 category x 1 shot x 2 seeds x 3 methods = 6 units, claimed by the ranks: each ran some,
    # none twice, together all of them
    counts = {r: len(per_rank[r]) for r in (0, 1)}
    assert sum(counts.values()) == 6 and min(counts.values()) >= 1
    assert not set(per_rank[0]["episode_id"]) & set(per_rank[1]["episode_id"])
    merged = read_rows([folder])
    one = read_rows([tmp_path / "one" / "sweep"])
    pd.testing.assert_frame_equal(_metrics(merged), _metrics(one))
    assert (tmp_path / "two" / "sweep.md").exists()  # rank 0 wrote the tables after the barrier
    assert not (folder / ".claims").exists()  # rank 0 removed the run's claims at the end
    # Each rank records its own share of the work; the header describes the run once.
    for r in (0, 1):
        record = json.loads((folder / f"rank{r}" / "provenance.json").read_text())
        assert (record["rank"], record["ranks"], record["shard"]) == (r, 2, "0/1")
        assert (
            record["work"]
            == "work items i with i % 1 == 0, claimed by the ranks longest estimated first"
        )
        assert record["episodes_assigned"] == record["episodes_written"] == counts[r]
    header = (tmp_path / "two" / "sweep.md").read_text().split("## Detection")[0]
    assert "2 ranks (`--devices 2 --procs-per-device 1`, shard 0/1)" in header
    assert "2 x CPU" in header
    assert f"rank 0: {counts[0]}, rank 1: {counts[1]}" in header and "Part 2" not in header
    # Resume sees every rank's rows.
    assert EpisodeStore(folder / "rank0", scan=folder).done_ids() == set(one["episode_id"])
    again = _cli(*common, "--out", str(tmp_path / "two"), "--devices", "2")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "0 episodes run" in again.stdout and len(read_rows([folder])) == 6


def test_exec_launch_gives_the_same_rows(
    tiny_data: Path, fast_config: Path, tmp_path: Path
) -> None:
    common = ("sweep", "--config", str(fast_config), "--data", str(tiny_data), "--shots", "1",
              "--methods", "patchcore,linear_probe", "--device", "cpu",
              "--devices", "2")  # fmt: skip
    rows = {}
    for launch in ("fork", "exec"):
        done = _cli(*common, "--out", str(tmp_path / launch), launch=launch)
        assert done.returncode == 0, done.stderr[-3000:]
        rows[launch] = _metrics(read_rows([tmp_path / launch / "sweep"]))
        assert len(rows[launch]) == 4
    pd.testing.assert_frame_equal(rows["fork"], rows["exec"])


def test_a_failing_rank_gives_one_error_line(
    tiny_data: Path, fast_config: Path, tmp_path: Path
) -> None:
    done = _cli("sweep", "--config", str(fast_config), "--data", str(tiny_data),
                "--categories", "no_such_category", "--device", "cpu", "--devices", "2",
                "--out", str(tmp_path / "out"))  # fmt: skip
    assert done.returncode != 0
    last = done.stderr.strip().splitlines()[-1]
    assert "no_such_category" in last and "Traceback" not in done.stderr
