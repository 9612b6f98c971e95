"""Content digests: the identity of a dataset by what its files hold, not by where they are.

A table's provenance names the dataset's content digest, so two runs can only be merged or compared
when they saw byte-identical images and masks (``PROTOCOL.md``, Reproducibility).
"""

from __future__ import annotations

import hashlib
import os
from functools import lru_cache
from pathlib import Path

from semclip_bench.data.types import DefectDataset


def file_sha256(path: str | Path) -> str:
    """Full sha256 (hex) of a file's bytes, memoised per (absolute path, size, mtime): a file
    hashed once in a process (e.g. by the sem-synth cache check) is not read again."""
    absolute = os.path.abspath(path)
    stat = os.stat(absolute)
    return _file_sha256(absolute, stat.st_size, stat.st_mtime_ns)


@lru_cache(maxsize=1 << 16)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _relative(path: Path, root: Path | None, resolved_root: Path | None) -> str:
    """``path`` relative to the dataset root (the same on every machine), else its file name."""
    if root is not None and resolved_root is not None:
        path = Path(path)
        if path.is_relative_to(root):  # the usual case: no file-system calls
            return path.relative_to(root).as_posix()
        if path.resolve().is_relative_to(resolved_root):
            return path.resolve().relative_to(resolved_root).as_posix()
    return Path(path).name


def dataset_digest(dataset: DefectDataset) -> str:
    """sha256 (hex) over every sample's (relative path, category, split, label, image and mask
    content hashes), in sorted order: equal digests mean the same images, labels and masks."""
    digest = hashlib.sha256()
    root = Path(dataset.root) if dataset.root is not None else None
    resolved_root = root.resolve() if root is not None else None
    rows = sorted(
        (
            _relative(s.image_path, root, resolved_root),
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
