"""Sweeps on data without masks, or with masks for some types only."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import pytest

from semclip_bench.cli import main
from semclip_bench.runner.record.row_store import read_rows

METHODS = "semclip,anomalyclip,patchcore"


def _sweep(data: Path, config: Path, out: Path) -> None:
    args = ["sweep", "--config", str(config), "--data", str(data), "--out", str(out)]
    assert main([*args, "--shots", "1", "--seeds", "0", "--methods", METHODS]) == 0


@pytest.fixture(scope="module")
def no_masks(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("nomask") / "ds"
    shutil.copytree(tiny_data, root)
    shutil.rmtree(root / "line_space" / "ground_truth")
    return root


def test_no_masks_image_metrics_and_classification_pixel_na(
    no_masks: Path, fast_config: Path, tmp_path: Path
) -> None:
    _sweep(no_masks, fast_config, tmp_path)
    rows = read_rows([tmp_path / "sweep"]).set_index("variant")
    assert set(rows["status"]) == {"ok"}
    assert rows["iAUROC"].notna().all() and rows["iAP"].notna().all()
    assert not math.isnan(rows.loc["semclip", "cls_accuracy"])  # classification computed
    for variant in ("semclip", "anomalyclip", "patchcore"):
        assert rows.loc[variant, ["pAUROC", "pF1max", "AUPRO"]].isna().all()
        assert '"pAUROC": "no masks"' in rows.loc[variant, "na_reasons"]
        assert '"particle":' in rows.loc[variant, "per_type_auroc"]  # per-type iAUROC computed
    for variant in ("semclip", "anomalyclip"):
        assert "no masks (image-level losses only)" in rows.loc[variant, "supervision"]
    assert rows.loc["patchcore", "supervision"] == "K normal images"
    table = (tmp_path / "sweep.md").read_text()
    assert "n/a (no masks)" in table and "no masks (image-level losses only)" in table


def test_masks_for_some_types(tiny_data: Path, fast_config: Path, tmp_path: Path) -> None:
    root = tmp_path / "ds"
    shutil.copytree(tiny_data, root)
    shutil.rmtree(root / "line_space" / "ground_truth" / "scratch")
    _sweep(root, fast_config, tmp_path / "out")
    rows = read_rows([tmp_path / "out" / "sweep"]).set_index("variant")
    assert rows["pAUROC"].isna().all()
    assert '"pAUROC": "masks missing for scratch"' in rows.loc["semclip", "na_reasons"]
    assert rows.loc["semclip", "supervision"] == (
        "K normal + K per defect type, no masks for scratch (image-level losses there)"
    )
    table = (tmp_path / "out" / "sweep.md").read_text()
    assert "n/a (masks missing for scratch)" in table
