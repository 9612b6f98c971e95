"""A run checks the whole dataset before its first episode (engine.check_whole_dataset): a bad
file that none of its episodes reads still fails it at once, with one line naming the file."""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from semclip_bench.cli import main


def _sweep(data: Path, config: Path, out: Path, *extra: str) -> int:
    return main(
        [
            "sweep",
            "--config",
            str(config),
            "--data",
            str(data),
            "--out",
            str(out),
            "--shots",
            "1",
            "--seeds",
            "0",
            "--methods",
            "patchcore",
            *extra,
        ]
    )


@pytest.fixture
def two_categories(tiny_data: Path, tmp_path: Path) -> Path:
    """tiny_data plus a copy of its category under another name."""
    root = tmp_path / "data"
    shutil.copytree(tiny_data, root)
    shutil.copytree(root / "line_space", root / "other")
    return root


def test_wrong_size_mask_outside_the_run_fails_before_the_first_episode(
    two_categories: Path, fast_config: Path, tmp_path: Path, capsys
) -> None:
    mask = sorted((two_categories / "other" / "ground_truth" / "scratch").glob("*.png"))[-1]
    assert cv2.imwrite(str(mask), np.full((17, 23), 255, np.uint8))
    out = tmp_path / "out"
    # the run's episodes read only line_space: the bad mask of 'other' still stops it
    assert _sweep(two_categories, fast_config, out, "--categories", "line_space") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith(f"error: --data {two_categories}: {mask}: mask size 17x23 (HxW)")
    assert "data check" in err[0] and "no episode ran" in err[0]
    assert not list(out.rglob("episodes.csv")) or not any(
        p.stat().st_size for p in out.rglob("episodes.csv")
    )


def test_finished_episodes_are_kept_when_a_later_run_meets_a_bad_file(
    two_categories: Path, fast_config: Path, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "out"
    assert _sweep(two_categories, fast_config, out, "--categories", "line_space") == 0
    before = (out / "sweep" / "episodes.csv").read_bytes()
    capsys.readouterr()
    image = sorted((two_categories / "other" / "train" / "good").glob("*.png"))[0]
    image.write_bytes(b"")
    assert _sweep(two_categories, fast_config, out) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{image}: image file is empty" in err[0]
    assert (out / "sweep" / "episodes.csv").read_bytes() == before


def test_sweep_names_an_unknown_manifest_column(
    tiny_data: Path, fast_config: Path, tmp_path: Path, capsys
) -> None:
    from semclip_bench.data import load_dataset

    lines = ["image_path,category,split,label,mask"]
    for s in load_dataset(tiny_data).samples:
        mask = "" if s.mask_path is None else str(s.mask_path)
        lines.append(f"{s.image_path},{s.category},{s.split},{s.label},{mask}")
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("\n".join(lines) + "\n")
    assert _sweep(manifest, fast_config, tmp_path / "out") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith(f"error: {manifest}: unknown column 'mask'")
    assert "(did you mean 'mask_path'?)" in err[0]


def test_two_processes_stop_with_the_same_line(
    two_categories: Path, fast_config: Path, tmp_path: Path
) -> None:
    """With --devices 2, rank 0 checks and tells rank 1 (no rank waits for the other)."""
    import os
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[3]
    mask = sorted((two_categories / "other" / "ground_truth" / "scratch").glob("*.png"))[0]
    assert cv2.imwrite(str(mask), np.full((17, 23), 255, np.uint8))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(repo)}
    done = subprocess.run(
        [sys.executable, "-m", "semclip_bench", "sweep", "--config", str(fast_config),
         "--data", str(two_categories), "--categories", "line_space", "--device", "cpu",
         "--devices", "2", "--shots", "1", "--seeds", "0", "--methods", "patchcore",
         "--out", str(tmp_path / "out")],
        cwd=repo, env=env, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert done.returncode != 0
    last = done.stderr.strip().splitlines()[-1]
    assert f"{mask}: mask size 17x23 (HxW)" in last and "Traceback" not in done.stderr
    assert not any(p.stat().st_size for p in (tmp_path / "out").rglob("episodes.csv"))
