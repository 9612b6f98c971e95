"""Datasets without masks (image-level labels only): loading, notes, ``data check``."""

from __future__ import annotations

import csv
import logging
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from semclip_bench.cli import main
from semclip_bench.data import check_dataset, load_dataset
from semclip_bench.data.dataset import masks_missing_reason, missing_mask_types
from semclip_bench.errors import UserError

Factory = Callable[..., Path]


def _drop(path: Path) -> None:
    shutil.rmtree(path)


def test_mvtec_without_ground_truth_loads_with_a_note(
    handmade: Factory, caplog: pytest.LogCaptureFixture
) -> None:
    root = handmade()
    _drop(root / "cat_a" / "ground_truth")
    with caplog.at_level(logging.INFO):
        dataset = load_dataset(root)
    defects = [s for s in dataset.samples if s.is_anomalous]
    assert len(defects) == 5 and all(s.mask_path is None for s in defects)
    assert (
        "no ground_truth/ folder, so its 5 defect image(s) have image-level labels" in caplog.text
    )
    assert masks_missing_reason(dataset.samples) == "no masks"
    assert missing_mask_types(dataset.samples) == ["bridge", "particle"]

    report = check_dataset(root)
    assert report.ok and not report.problems
    assert report.masks == (0, 5)
    text = report.format()
    assert "masks: 0 of 5 defect images (pixel metrics n/a; see the notes)" in text
    assert "note: " in text and "OK: no problems found" in text


def test_some_types_with_masks_use_them_and_name_the_others(handmade: Factory) -> None:
    root = handmade(categories=("cat_a", "cat_b"))
    _drop(root / "cat_a" / "ground_truth" / "particle")
    dataset = load_dataset(root)
    assert all(s.mask_path is not None for s in dataset.select("cat_a", "test", "bridge"))
    assert all(s.mask_path is None for s in dataset.select("cat_a", "test", "particle"))
    assert masks_missing_reason(dataset.select("cat_a")) == "masks missing for particle"
    assert masks_missing_reason(dataset.select("cat_b")) is None  # fully annotated category
    report = check_dataset(root)
    assert report.ok and report.masks == (8, 10)
    (note,) = report.notes
    assert "ground_truth: no masks for defect type(s) particle (2 images)" in note


def test_existing_type_folder_missing_one_mask_is_still_an_error(handmade: Factory) -> None:
    root = handmade()
    (root / "cat_a" / "ground_truth" / "bridge" / "001_mask.png").unlink()
    with pytest.raises(UserError, match=r"001\.png: defect image without a mask"):
        load_dataset(root)


def _write_manifest(root: Path, with_column: bool, empty_for: set[str]) -> Path:
    """A manifest of the hand-made dataset; no mask_path column, or empty cells for some types."""
    dataset = load_dataset(root)
    path = root / "manifest.csv"
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        header = ["image_path", "category", "split", "label"]
        writer.writerow([*header, "mask_path"] if with_column else header)
        for s in dataset.samples:
            row = [str(s.image_path.relative_to(root)), s.category, s.split, s.label]
            if with_column:
                keep = s.mask_path is not None and s.label not in empty_for
                row.append(str(s.mask_path.relative_to(root)) if keep else "")
            writer.writerow(row)
    return path


def test_csv_without_mask_column(handmade: Factory) -> None:
    root = handmade()
    dataset = load_dataset(_write_manifest(root, with_column=False, empty_for=set()))
    assert len(dataset.samples) == 12
    assert all(s.mask_path is None for s in dataset.samples)
    report = check_dataset(root / "manifest.csv")
    assert report.ok and report.masks == (0, 5)
    assert any("no mask_path column, so its 5 defect image(s)" in n for n in report.notes)


def test_csv_with_empty_mask_cells(handmade: Factory) -> None:
    root = handmade()
    dataset = load_dataset(_write_manifest(root, with_column=True, empty_for={"bridge"}))
    assert missing_mask_types(dataset.samples) == ["bridge"]
    assert masks_missing_reason(dataset.samples) == "masks missing for bridge"
    report = check_dataset(root / "manifest.csv")
    assert report.ok and report.masks == (2, 5)
    assert any("3 defect image(s) without a mask_path: cat_a/bridge (3)" in n for n in report.notes)


def test_data_check_prints_notes_and_exits_0(
    handmade: Factory, capsys: pytest.CaptureFixture
) -> None:
    root = handmade()
    _drop(root / "cat_a" / "ground_truth")
    assert main(["data", "check", str(root)]) == 0
    out = capsys.readouterr().out
    assert "note: " in out and "image-level labels only" in out
    assert "problem:" not in out and "OK: no problems found" in out
