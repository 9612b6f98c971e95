"""Map pictures: the stored maps of the chosen query images, and maps/<category>.png drawn by
sweep and again by report (tiny backbone and data)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from semclip_bench.cli import main
from semclip_bench.data import load_dataset
from semclip_bench.data.episodes import query_set
from semclip_bench.data.fixtures import write_tiny_elpv
from semclip_bench.runner.record.maps import PER_LABEL, chosen_indices, find_maps, panel_title

METHODS = "semclip,patchcore,linear_probe"


def _sweep(data: str, config: Path, out: Path, *extra: str) -> None:
    args = ["sweep", "--config", str(config), "--data", data, "--out", str(out), "--seeds", "0,1"]
    assert main([*args, "--shots", "1,2", "--methods", METHODS, *extra]) == 0


def test_chosen_images_are_two_per_label_and_fixed(tiny_data: Path) -> None:
    dataset = load_dataset(tiny_data)
    query = query_set(dataset, "line_space")
    chosen = chosen_indices(query)
    labels = [query[i].label for i in chosen]
    assert labels == ["good"] * PER_LABEL + ["particle"] * PER_LABEL + ["scratch"] * PER_LABEL
    assert chosen == chosen_indices(list(query))  # deterministic


def test_sweep_and_report_draw_maps_of_the_largest_k(
    tiny_data: Path, fast_config: Path, tmp_path: Path
) -> None:
    _sweep(str(tiny_data), fast_config, tmp_path / "run")
    stored = sorted(p.name for p in (tmp_path / "run" / "sweep" / "maps").rglob("*.npz"))
    assert stored == sorted([*(f"{v}-k2-s0.npz" for v in METHODS.split(",")), "images.npz"])
    picture = tmp_path / "run" / "maps" / "line_space.png"
    assert picture.stat().st_size > 0
    table = (tmp_path / "run" / "sweep.md").read_text()
    assert "[line_space](maps/line_space.png) (linear_probe: no maps" in table
    found = find_maps([tmp_path / "run" / "sweep"])["line_space"]
    semclip = next(r for r in found if str(r["variant"]) == "semclip")
    assert len(semclip["labels"]) == 3 * PER_LABEL and len(semclip["predicted"]) == 3 * PER_LABEL
    assert semclip["maps"].shape[0] == 3 * PER_LABEL and semclip["maps"].dtype == np.float16
    assert all(m is not None for m in semclip["masks"])
    picture.unlink()  # report draws it again from the stored maps, without rerunning
    source = str(tmp_path / "run" / "sweep")
    assert main(["report", "--from", source, "--out", str(tmp_path / "r")]) == 0
    assert (tmp_path / "r" / "maps" / "line_space.png").stat().st_size > 0
    report = ["report", "--from", source, "--out", str(tmp_path / "r1")]
    assert main([*report, "--maps-shots", "1"]) == 0
    assert "No maps were kept at K = 1" in (tmp_path / "r1" / "sweep.md").read_text()


def test_maps_shots_picks_k_and_must_be_a_run_shot(
    fast_config: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("SEMCLIP_BENCH_ELPV_ROOT", str(write_tiny_elpv(tmp_path / "elpv")))
    _sweep("elpv", fast_config, tmp_path / "run", "--maps-shots", "1")
    stored = {p.name for p in (tmp_path / "run" / "sweep" / "maps" / "mono").glob("*.npz")}
    assert "semclip-k1-s0.npz" in stored and not any("-k2-" in n for n in stored)
    assert (tmp_path / "run" / "maps" / "poly.png").is_file()
    args = ["sweep", "--config", str(fast_config), "--data", "elpv", "--shots", "1"]
    assert main([*args, "--out", str(tmp_path / "bad"), "--maps-shots", "5"]) != 0
    assert "--maps-shots 5: not a shot count" in capsys.readouterr().err


def test_panel_titles_name_truth_and_prediction_apart() -> None:
    assert panel_title("good", "scratch", 0.5) == "true good | pred scratch | score 0.5"
    assert panel_title("good", None, 0.5, wrap=True) == "true good\nscore 0.5"
    assert panel_title(None, None, 2.0) == "score 2"
