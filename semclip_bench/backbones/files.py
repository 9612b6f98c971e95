"""Content identity of weight files, shared by the CLIP and timm extractors' cache keys."""

from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path


def file_digest(path: str | Path) -> str:
    """Short sha256 of a file's content (16 hex digits), a stable identity for feature caches.

    Memoised per (resolved path, size, mtime): methods are rebuilt every episode, but the file is
    read once, and a rewritten file gets a new digest.
    """
    resolved = Path(path).resolve()
    stat = resolved.stat()
    return _digest(str(resolved), stat.st_size, stat.st_mtime_ns)


@lru_cache(maxsize=32)
def _digest(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()[:16]
