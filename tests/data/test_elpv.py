"""The elpv loader on a tiny folder in the package's layout (no 90 MB package needed)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from semclip_bench.data import dataset_digest, elpv, load_dataset
from semclip_bench.data.episodes import query_set
from semclip_bench.data.fixtures import write_tiny_elpv
from semclip_bench.errors import UserError


@pytest.fixture()
def elpv_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = write_tiny_elpv(tmp_path / "elpv")
    monkeypatch.setenv(elpv.ROOT_ENV, str(root))
    return root


def test_categories_labels_and_balanced_query(elpv_folder: Path) -> None:
    dataset = load_dataset("elpv")
    assert dataset.name == "elpv"
    assert dataset.categories() == ["mono", "poly"]
    for category in dataset.categories():
        assert dataset.defect_types(category) == [elpv.DEFECTIVE]
        query = Counter(s.label for s in query_set(dataset, category))
        assert query["good"] == query[elpv.DEFECTIVE] > 0
        assert dataset.select(category, "train", "good")
    assert all(s.mask_path is None for s in dataset.samples)


def test_val_and_test_never_share_an_image(elpv_folder: Path) -> None:
    specs = ("elpv", "elpv:val", "elpv-soft", "elpv-soft:val")
    keys = {spec: {s.key for s in load_dataset(spec).samples} for spec in specs}
    for test in ("elpv", "elpv-soft"):
        for val in ("elpv:val", "elpv-soft:val"):
            assert not keys[test] & keys[val]
    assert keys["elpv"] < keys["elpv-soft"]


def test_soft_variant_adds_two_types_and_is_deterministic(elpv_folder: Path) -> None:
    soft = load_dataset("elpv-soft")
    assert soft.name == "elpv-soft"
    assert soft.defect_types("mono") == sorted([elpv.DEFECTIVE, *elpv.SOFT_TYPES.values()])
    again = load_dataset("elpv-soft")
    assert [s.key for s in soft.samples] == [s.key for s in again.samples]
    assert dataset_digest(soft) == dataset_digest(again) != dataset_digest(load_dataset("elpv"))


def test_missing_package_is_one_line_with_install_command(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(elpv.ROOT_ENV, raising=False)
    monkeypatch.setattr(elpv, "PACKAGE", "elpv_dataset_not_installed_here")
    with pytest.raises(UserError, match=r'pip install "semclip_bench\[elpv\]"') as info:
        load_dataset("elpv")
    assert "\n" not in str(info.value)


def test_unknown_variant_and_bad_labels(elpv_folder: Path) -> None:
    with pytest.raises(UserError, match="unknown elpv variant"):
        load_dataset("elpv:train")
    (elpv_folder / "labels.csv").write_text("images/cell0001.png 0.5 mono\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"labels\.csv:1"):
        load_dataset("elpv")
