"""Content digests: the identity of a dataset by what its files hold, not by where they are.

A table's provenance names the dataset's content digest, so two runs can only be merged or compared
when they saw byte-identical images and masks (``PROTOCOL.md``, Reproducibility).
"""

from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path

from semclip_bench.data.types import DefectDataset


def file_sha256(path: str | Path) -> str:
    """Full sha256 (hex) of a file's bytes, memoised per (resolved path, size, mtime)."""
    resolved = Path(path).resolve()
    stat = resolved.stat()
    return _file_sha256(str(resolved), stat.st_size, stat.st_mtime_ns)


@lru_cache(maxsize=1 << 16)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _relative(path: Path, root: Path | None) -> str:
    if root is not None:
        try:
            return Path(path).resolve().relative_to(Path(root).resolve()).as_posix()
        except ValueError:
            pass
    return Path(path).name


def dataset_digest(dataset: DefectDataset) -> str:
    """sha256 (hex) over every sample's (relative path, category, split, label, image and mask
    content hashes), in sorted order: equal digests mean the same images, labels and masks."""
    digest = hashlib.sha256()
    rows = sorted(
        (
            _relative(s.image_path, dataset.root),
            s.category,
            s.split,
            s.label,
            file_sha256(s.image_path),
            file_sha256(s.mask_path) if s.mask_path is not None else "",
        )
        for s in dataset.samples
    )
    for row in rows:
        digest.update(("\t".join(row) + "\n").encode("utf-8"))
    return digest.hexdigest()
