"""Dataset loading (MVTec layout, CSV manifest, sem-synth cache) and ``check_dataset``."""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from semclip_bench.data import check_dataset, load_dataset, read_image, read_mask
from semclip_bench.data.check import check_headers
from semclip_bench.data.fixtures import tiny_synth_config
from semclip_bench.data.images import image_info, image_size
from semclip_bench.errors import UserError

Factory = Callable[..., Path]


# ---------------------------------------------------------------- MVTec layout, hand-made


def test_mvtec_round_trip(handmade: Factory) -> None:
    root = handmade(categories=("cat_a", "cat_b"))
    dataset = load_dataset(root)
    assert dataset.name == "ds"
    assert dataset.categories() == ["cat_a", "cat_b"]
    assert dataset.defect_types("cat_a") == ["bridge", "particle"]
    assert len(dataset.samples) == 2 * (4 + 3 + 3 + 2)
    assert len(dataset.select("cat_b", "train", "good")) == 4
    for sample in dataset.samples:
        assert sample.image_path.is_file()
        if sample.is_anomalous:
            assert sample.mask_path is not None
            assert sample.mask_path.name == f"{sample.image_path.stem}_mask.png"
            assert sample.mask_path.parent.name == sample.label
        else:
            assert sample.mask_path is None


def test_single_category_folder(handmade: Factory) -> None:
    root = handmade()
    dataset = load_dataset(root / "cat_a")
    assert dataset.categories() == ["cat_a"]
    assert len(dataset.samples) == 12


def test_mask_named_like_image_accepted(handmade: Factory) -> None:
    root = handmade()
    gt = root / "cat_a" / "ground_truth" / "bridge"
    for mask in gt.iterdir():
        mask.rename(gt / mask.name.replace("_mask", ""))
    dataset = load_dataset(root)
    bridges = dataset.select("cat_a", "test", "bridge")
    assert [s.mask_path.name for s in bridges] == ["000.png", "001.png", "002.png"]


def test_non_image_files_ignored(handmade: Factory) -> None:
    root = handmade()
    (root / "license.txt").write_text("x")
    (root / "cat_a" / "test" / "bridge" / ".DS_Store").write_bytes(b"x")
    (root / "cat_a" / "train" / "good" / "notes.txt").write_text("x")
    assert len(load_dataset(root).samples) == 12


def test_missing_mask_names_image(handmade: Factory) -> None:
    root = handmade()
    (root / "cat_a" / "ground_truth" / "bridge" / "001_mask.png").unlink()
    with pytest.raises(UserError, match=r"001\.png: defect image without a mask"):
        load_dataset(root)


def test_missing_mask_folder_means_no_masks_for_that_type(handmade: Factory) -> None:
    # A whole type without ground_truth/<type>/ is image-level labels only (tests/data/
    # test_maskless.py has the rest); a missing mask inside an existing folder stays an error.
    root = handmade()
    for mask in (root / "cat_a" / "ground_truth" / "particle").iterdir():
        mask.unlink()
    (root / "cat_a" / "ground_truth" / "particle").rmdir()
    dataset = load_dataset(root)
    assert all(s.mask_path is None for s in dataset.select("cat_a", "test", "particle"))
    assert all(s.mask_path is not None for s in dataset.select("cat_a", "test", "bridge"))


def test_extra_mask_names_mask(handmade: Factory) -> None:
    root = handmade()
    (root / "cat_a" / "test" / "bridge" / "002.png").unlink()
    with pytest.raises(UserError, match=r"002_mask\.png: mask without an image"):
        load_dataset(root)


def test_mask_folder_without_images(handmade: Factory, write_img: Callable) -> None:
    root = handmade()
    write_img(
        root / "cat_a" / "ground_truth" / "scratch" / "000_mask.png", np.ones((4, 4), np.uint8)
    )
    with pytest.raises(UserError, match=r"ground_truth/scratch: masks without images"):
        load_dataset(root)


def test_unknown_split_folder(handmade: Factory) -> None:
    root = handmade()
    (root / "cat_a" / "validation" / "good").mkdir(parents=True)
    with pytest.raises(UserError, match=r"validation: unknown split folder"):
        load_dataset(root)


def test_defects_in_train_rejected(handmade: Factory) -> None:
    root = handmade(layout={("train", "good"): 1, ("train", "bridge"): 1, ("test", "good"): 1})
    with pytest.raises(UserError, match=r"train/bridge: the train split may only hold 'good'"):
        load_dataset(root)


def test_missing_folder() -> None:
    with pytest.raises(UserError, match=r"/no/such/dataset: no such dataset folder"):
        load_dataset("/no/such/dataset")


def test_not_a_dataset_file(tmp_path: Path) -> None:
    path = tmp_path / "data.json"
    path.write_text("{}")
    with pytest.raises(UserError, match=r"data\.json: not a dataset"):
        load_dataset(path)


def test_empty_dataset(tmp_path: Path) -> None:
    (tmp_path / "ds" / "cat" / "train" / "good").mkdir(parents=True)
    with pytest.raises(UserError, match=r"ds: dataset is empty"):
        load_dataset(tmp_path / "ds")
    (tmp_path / "nothing").mkdir()
    with pytest.raises(UserError, match=r"nothing: no category folders"):
        load_dataset(tmp_path / "nothing")


# ---------------------------------------------------------------- CSV manifest


def _manifest(root: Path, rows: list[list[str]], header: str | None = None) -> Path:
    path = root / "manifest.csv"
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow((header or "image_path,category,split,label,mask_path").split(","))
        writer.writerows(rows)
    return path


def _rows_of(root: Path) -> list[list[str]]:
    """Manifest rows (relative paths) describing a hand-made MVTec folder."""
    return [
        [
            str(s.image_path.relative_to(root)),
            s.category,
            s.split,
            s.label,
            "" if s.mask_path is None else str(s.mask_path.relative_to(root)),
        ]
        for s in load_dataset(root).samples
    ]


def test_csv_round_trip_relative_paths(handmade: Factory) -> None:
    root = handmade()
    from_folder = load_dataset(root)
    from_csv = load_dataset(_manifest(root, _rows_of(root)))
    assert from_csv.name == "manifest"
    assert [
        (s.image_path, s.category, s.split, s.label, s.mask_path) for s in from_csv.samples
    ] == [(s.image_path, s.category, s.split, s.label, s.mask_path) for s in from_folder.samples]


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda r: r[0].__setitem__(2, "val"), r"manifest\.csv:2: unknown split 'val'"),
        (lambda r: r[0].__setitem__(0, "nope.png"), r"manifest\.csv:2: image file not found"),
        (lambda r: r[0].__setitem__(1, ""), r"manifest\.csv:2: empty category"),
        (lambda r: r.append(list(r[0])), r"manifest\.csv:14: image listed twice"),
        (lambda r: r[-1].__setitem__(4, "gone.png"), r"manifest\.csv:13: mask file not found"),
    ],
)
def test_bad_csv_rows(handmade: Factory, edit: Callable, message: str) -> None:
    root = handmade()
    rows = sorted(_rows_of(root), key=lambda r: (r[2] != "train", r[3] != "good", r[0]))
    # rows: train/good first, test defects last (row 13 of the file is a defect image)
    assert rows[0][2] == "train" and rows[-1][3] != "good"
    edit(rows)
    with pytest.raises(UserError, match=message):
        load_dataset(_manifest(root, rows))


def test_csv_missing_column_and_empty(tmp_path: Path) -> None:
    path = _manifest(tmp_path, [], header="image_path,category,label")
    with pytest.raises(UserError, match=r"manifest\.csv: CSV manifest lacks column\(s\) split"):
        load_dataset(path)
    path.write_text("")
    with pytest.raises(UserError, match=r"manifest\.csv: CSV manifest is empty"):
        load_dataset(path)
    _manifest(tmp_path, [])
    with pytest.raises(UserError, match=r"dataset is empty"):
        load_dataset(path)


def test_csv_unknown_column_names_the_known_one(handmade: Factory) -> None:
    """'mask' instead of 'mask_path' used to load silently, its masks left out."""
    root = handmade()
    path = _manifest(root, _rows_of(root), header="image_path,category,split,label,mask")
    with pytest.raises(UserError) as error:
        load_dataset(path)
    message = str(error.value)
    assert "\n" not in message and message.startswith(f"{path}: unknown column 'mask'")
    assert "(did you mean 'mask_path'?)" in message
    assert "known columns: image_path,category,split,label,mask_path" in message


def test_csv_unknown_columns_all_named_and_missing_one_hinted(handmade: Factory) -> None:
    root = handmade()
    rows = [[*r, "x"] for r in _rows_of(root)]
    path = _manifest(root, rows, header="image_path,category,split,label,mask_path,comment")
    with pytest.raises(UserError, match=r"unknown column 'comment' \(known columns"):
        load_dataset(path)
    path = _manifest(root, _rows_of(root), header="image_path,category,splt,Label,mask_path")
    with pytest.raises(UserError) as error:
        load_dataset(path)
    message = str(error.value)
    assert "lacks column(s) split, label" in message
    assert "unknown columns 'splt' (did you mean 'split'?), 'Label' (did you mean 'label'?)" in (
        message
    )


# ---------------------------------------------------------------- generated data


@pytest.mark.parametrize("fixture", ["tiny_synth_root", "tiny_synth_root_16"])
def test_generated_round_trip(fixture: str, request: pytest.FixtureRequest) -> None:
    root: Path = request.getfixturevalue(fixture)
    bits = 16 if fixture.endswith("16") else 8
    config = tiny_synth_config(bit_depth=bits)
    dataset = load_dataset(root)
    assert dataset.categories() == list(config.categories)
    for category in config.categories:
        assert dataset.defect_types(category) == sorted(config.defect_types)
        assert len(dataset.select(category, "train", "good")) == config.n_train_good
        assert len(dataset.select(category, "test", "good")) == config.n_test_good
        for defect in config.defect_types:
            assert len(dataset.select(category, "test", defect)) == config.n_per_defect
    for sample in dataset.samples:
        info = image_info(sample.image_path)
        assert info.bit_depth == bits
        image = read_image(sample.image_path)
        assert image.dtype == np.float32 and image.min() >= 0.0 and image.max() <= 1.0
        assert image.shape[:2] == (config.image_size, config.image_size)
        if sample.is_anomalous:
            mask = read_mask(sample.mask_path)
            assert mask.shape == image.shape[:2] and mask.any()
    report = check_dataset(dataset)
    assert report.ok, report.format()
    assert dict(report.bit_depths) == {bits: len(dataset.samples)}


# ---------------------------------------------------------------- check_dataset


def test_check_counts_and_ok(handmade: Factory) -> None:
    report = check_dataset(handmade(size_hw=(24, 32)))
    assert report.ok
    assert report.counts[("cat_a", "test", "bridge")] == 3
    assert report.n_images == 12
    assert dict(report.sizes) == {(24, 32): 12}
    assert dict(report.bit_depths) == {8: 12}
    assert dict(report.channels) == {1: 12}
    assert report.max_values == {8: 255}
    assert "8-bit: 12 (max value 255)" in report.format()
    assert "OK" in report.format()


def test_check_warns_about_12_bit_data_in_16_bit_files(
    handmade: Factory, write_img: Callable
) -> None:
    root = handmade(dtype=np.uint16, suffix=".tif")
    for path in root.glob("cat_a/*/*/*.tif"):
        write_img(path, np.full((24, 32), 4000, np.uint16))
    report = check_dataset(root)
    assert report.ok and report.max_values == {16: 4000}
    assert any("16-bit images use at most 12 bits (max value 4000)" in w for w in report.warnings)


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_header_check_finds_what_a_run_would_meet(
    handmade: Factory, write_img: Callable, suffix: str
) -> None:
    """check_headers: the per-file problems of data check, from headers, with its messages."""
    dtype = np.uint16 if suffix == ".tif" else np.uint8
    root = handmade(size_hw=(24, 32), dtype=dtype, suffix=suffix)
    assert check_headers(load_dataset(root)) == []
    mask = root / "cat_a" / "ground_truth" / "bridge" / "001_mask.png"
    write_img(mask, np.ones((17, 23), np.uint8))
    empty = root / "cat_a" / "train" / "good" / f"002{suffix}"
    empty.write_bytes(b"")
    dataset = load_dataset(root)
    problems = check_headers(dataset)
    assert problems == check_dataset(dataset).problems  # the same messages, in the same order
    image = root / "cat_a" / "test" / "bridge" / f"001{suffix}"
    assert sorted(problems) == sorted(
        [
            f"{empty}: image file is empty",
            f"{mask}: mask size 17x23 (HxW) differs from its image {image} (24x32)",
        ]
    )


def test_image_size_reads_the_header(tmp_path: Path, write_img: Callable) -> None:
    for name, image in [
        ("a.png", np.zeros((5, 7), np.uint16)),
        ("b.tif", np.zeros((6, 4, 3), np.uint8)),
        ("c.bmp", np.zeros((3, 9, 3), np.uint8)),
    ]:
        assert image_size(write_img(tmp_path / name, image)) == image.shape[:2]
    (tmp_path / "bad.png").write_bytes(b"not an image")
    with pytest.raises(UserError, match=r"bad\.png: cannot decode image"):
        image_size(tmp_path / "bad.png")
    with pytest.raises(UserError, match=r"gone\.png: image file not found"):
        image_size(tmp_path / "gone.png")


def test_check_finds_size_mismatch_and_truncation(handmade: Factory, write_img: Callable) -> None:
    root = handmade(size_hw=(24, 32))
    # A transposed mask (W x H) must be reported.
    write_img(
        root / "cat_a" / "ground_truth" / "bridge" / "001_mask.png", np.ones((32, 24), np.uint8)
    )
    bad = root / "cat_a" / "test" / "good" / "000.png"
    bad.write_bytes(bad.read_bytes()[:40])
    dataset = load_dataset(root)  # structure is fine: contents are verified by the check
    report = check_dataset(dataset)
    assert not report.ok
    assert len(report.problems) == 2
    text = report.format()
    assert "001_mask.png: mask size 32x24 (HxW) differs" in text
    assert "000.png: cannot decode image" in text
    assert "FAILED: 2 problem(s)" in text


def test_check_collects_all_structural_problems(handmade: Factory) -> None:
    root = handmade()
    (root / "cat_a" / "ground_truth" / "bridge" / "000_mask.png").unlink()
    (root / "cat_a" / "test" / "particle" / "001.png").unlink()
    report = check_dataset(root)
    assert len(report.problems) == 2
    assert any("000.png: defect image without a mask" in p for p in report.problems)
    assert any("001_mask.png: mask without an image" in p for p in report.problems)
    assert report.n_images == 11  # the rest is still counted
