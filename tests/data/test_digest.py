"""dataset_digest: the content identity of any dataset (folder, CSV, sem-synth)."""

from __future__ import annotations

import csv
import hashlib
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from semclip_bench.data import dataset_digest, file_sha256, load_dataset, synth
from semclip_bench.data.digest import _file_sha256
from semclip_bench.data.fixtures import tiny_synth_config

Factory = Callable[..., Path]


def _write_csv(path: Path, rows: list[tuple[str, str, str, str, str]]) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image_path", "category", "split", "label", "mask_path"])
        writer.writerows(rows)
    return path


def _rows(dataset_root: Path) -> list[tuple[str, str, str, str, str]]:
    dataset = load_dataset(dataset_root)
    return [
        (
            s.image_path.relative_to(dataset_root).as_posix(),
            s.category,
            s.split,
            s.label,
            s.mask_path.relative_to(dataset_root).as_posix() if s.mask_path else "",
        )
        for s in dataset.samples
    ]


def test_file_sha256_is_the_sha256_of_the_bytes(tmp_path: Path) -> None:
    path = tmp_path / "f.bin"
    path.write_bytes(b"abc")
    assert file_sha256(path) == hashlib.sha256(b"abc").hexdigest()
    path.write_bytes(b"abcd")  # new size: the memo does not serve the old hash
    assert file_sha256(path) == hashlib.sha256(b"abcd").hexdigest()


def test_same_content_same_digest_anywhere_and_in_any_format(
    handmade: Factory, tmp_path: Path
) -> None:
    root = handmade()
    digest = dataset_digest(load_dataset(root))
    assert len(digest) == 64
    moved = tmp_path / "elsewhere" / "ds"
    shutil.copytree(root, moved)
    assert dataset_digest(load_dataset(moved)) == digest  # relative paths only
    # The same files listed by a CSV manifest next to them: the same dataset.
    manifest = _write_csv(root / "manifest.csv", _rows(root))
    from_csv = load_dataset(manifest)
    assert dataset_digest(from_csv) == digest


def test_digest_changes_with_bytes_labels_and_masks(handmade: Factory) -> None:
    root = handmade()
    digest = dataset_digest(load_dataset(root))
    rows = _rows(root)
    manifest = _write_csv(root / "manifest.csv", rows)
    assert dataset_digest(load_dataset(manifest)) == digest
    relabelled = [(*r[:3], "particle" if r[3] == "bridge" else r[3], r[4]) for r in rows]
    assert dataset_digest(load_dataset(_write_csv(manifest, relabelled))) != digest
    _write_csv(manifest, rows)

    mask = next(root.rglob("*_mask.png"))
    data = bytearray(mask.read_bytes())
    data[-20] ^= 1
    mask.write_bytes(bytes(data))
    after_mask = dataset_digest(load_dataset(root))
    assert after_mask != digest

    image = root / "cat_a" / "train" / "good" / "000.png"
    stat = image.stat()
    data = bytearray(image.read_bytes())
    data[-20] ^= 1
    image.write_bytes(bytes(data))
    os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1000))
    assert dataset_digest(load_dataset(root)) not in (digest, after_mask)


def test_sem_synth_digest_reuses_the_cache_check(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Loading sem-synth hashes every file once (the content check); the digest hashes none."""
    tiny = tiny_synth_config()
    monkeypatch.setattr(synth, "SynthConfig", lambda: tiny)
    load_dataset("sem-synth", cache_dir=tmp_path)  # generate
    _file_sha256.cache_clear()
    dataset = load_dataset("sem-synth", cache_dir=tmp_path)  # verify the warm cache
    checked = _file_sha256.cache_info()
    n_files = len(dataset.samples) + sum(s.mask_path is not None for s in dataset.samples)
    assert checked.misses == n_files
    digest = dataset_digest(dataset)
    after = _file_sha256.cache_info()
    assert after.misses == checked.misses and after.hits >= checked.hits + n_files
    assert digest == dataset_digest(load_dataset(dataset.root))
