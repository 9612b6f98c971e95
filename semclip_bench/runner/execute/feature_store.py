"""Persistent on-disk store of frozen per-image features, shared by runs and processes.

Layout: ``<root>/<kind>/<key digest>/<image sha256>.pt`` with ``<root>`` =
``$SEMCLIP_BENCH_CACHE/features`` (default ``~/.cache/semclip_bench/features``; or
``$SEMCLIP_BENCH_FEATURES``). ``kind`` is the
method name (what ``cache info`` sums sizes by). The key digest hashes everything the features
depend on besides the image: the method's ``feature_key()`` (backbone name, weights content digest
or tag, input size, taps, feature-code version), the input transform (size, mean, std), the
extraction precision, the device type and the torch version. The image is named by the sha256 of
its file content, so a changed image or changed weights can never be served stale: they get other
file names. Each key folder holds ``key.json`` describing its key (for ``cache info``).

Files hold the exact float32 features the in-memory cache keeps, so a row computed from stored
features equals the row computed from fresh ones. Under bf16 extraction, a float32 tensor whose
every value is a bf16 number (most backbone outputs) is stored as bf16 and widened on load:
lossless, half the disk.

Concurrency: a file is written to a temporary name in its own folder and moved into place with
``os.replace``, so readers (other ranks, other runs) see a whole file or none. A file that cannot
be read (truncated, corrupt, another format) is a miss: it is recomputed and rewritten, with one
warning per run. Writes run on one background thread (they overlap extraction); a failed write
(disk full, read-only cache) warns once and never stops a run.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import tempfile
import threading
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

log = logging.getLogger(__name__)

#: Bumped when the file format or the key's composition changes (old entries are then unused).
STORE_FORMAT = 1
#: Name of the features folder inside the cache folder.
FEATURES_DIR = "features"
KEY_FILE = "key.json"
SUFFIX = ".pt"
#: Feature files waiting for the writer thread at most (the extraction waits beyond that).
MAX_QUEUED = 128


#: Environment variable naming the feature store folder itself (default: <cache>/features).
FEATURES_ENV = "SEMCLIP_BENCH_FEATURES"


def features_root(cache_dir: str | Path | None = None) -> Path:
    """The store's folder: ``$SEMCLIP_BENCH_FEATURES`` if set, else ``<cache>/features`` with
    ``<cache>`` = ``cache_dir`` or the package's cache folder (``$SEMCLIP_BENCH_CACHE``)."""
    from semclip_bench.data.dataset import default_cache_dir

    if cache_dir is None and os.environ.get(FEATURES_ENV):
        return Path(os.environ[FEATURES_ENV]).expanduser()
    base = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    return base / FEATURES_DIR


@dataclass(frozen=True)
class StoreKey:
    """Everything extracted features depend on besides the image itself."""

    kind: str  # method name; a folder level, not part of the digest
    feature_key: str
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    precision: str  # resolved: "fp32" or "bf16"
    device_type: str  # "cpu" or "cuda": kernels differ in the last bits
    torch_version: str = torch.__version__

    def describe(self) -> dict[str, object]:
        return {
            "format": STORE_FORMAT,
            "feature_key": self.feature_key,
            "image_size": int(self.image_size),
            "mean": [float(v) for v in self.mean],
            "std": [float(v) for v in self.std],
            "precision": self.precision,
            "device_type": self.device_type,
            "torch": self.torch_version,
        }

    def digest(self) -> str:
        text = json.dumps(self.describe(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:32]


@dataclass
class StoreStats:
    loaded: int = 0
    written: int = 0
    bytes_written: int = 0
    unreadable: int = 0
    failed_writes: int = 0


@dataclass
class _Folder:
    path: Path
    digest: str
    ready: bool = False


class FeatureStore:
    """Per-image feature files under ``root`` (see the module docstring)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.stats = StoreStats()
        self._folders: dict[StoreKey, _Folder] = {}
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="feature-store")
        self._pending: list[Future] = []
        self._lock = threading.Lock()
        self._warned_read = False
        self._warned_write = False

    # ------------------------------------------------------------------ paths
    def _folder(self, key: StoreKey) -> _Folder:
        folder = self._folders.get(key)
        if folder is None:
            digest = key.digest()
            folder = _Folder(self.root / _safe_name(key.kind) / digest, digest)
            self._folders[key] = folder
        return folder

    def path(self, key: StoreKey, image_digest: str) -> Path:
        """Where the features of the image with content sha256 ``image_digest`` live."""
        return self._folder(key).path / f"{image_digest}{SUFFIX}"

    # ------------------------------------------------------------------ reading
    def load(self, key: StoreKey, image_digest: str) -> dict[str, Tensor] | None:
        """The stored features of one image, or None (absent or unreadable: a miss)."""
        folder = self._folder(key)
        path = folder.path / f"{image_digest}{SUFFIX}"
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            self._unreadable(path, exc)
            return None
        try:
            record = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
            features = _unpack(record, folder.digest, image_digest)
        except Exception as exc:  # any unreadable file is a miss, never a crash
            self._unreadable(path, exc)
            return None
        with self._lock:  # loads may run on several threads (FeatureCache)
            self.stats.loaded += 1
        return features

    def _unreadable(self, path: Path, exc: BaseException) -> None:
        with self._lock:
            self.stats.unreadable += 1
            warn = not self._warned_read
            self._warned_read = True
        if warn:
            log.warning(
                "feature cache: unreadable file %s (%s): recomputing and rewriting it "
                "(further unreadable files are counted in the cache summary)",
                path,
                str(exc).splitlines()[0] if str(exc) else type(exc).__name__,
            )

    # ------------------------------------------------------------------ writing
    def save(self, key: StoreKey, image_digest: str, features: Mapping[str, Tensor]) -> None:
        """Queue the features of one image for writing (a compact CPU copy is taken now)."""
        narrow = key.precision == "bf16"
        record = _pack(features, self._folder(key).digest, image_digest, narrow)
        self._pending = [f for f in self._pending if not f.done()]
        while len(self._pending) >= MAX_QUEUED:  # bound the memory the queued copies hold
            self._pending.pop(0).result()
        self._pending.append(self._writer.submit(self._write, key, image_digest, record))

    def _write(self, key: StoreKey, image_digest: str, record: dict) -> None:
        folder = self._folder(key)
        try:
            if not folder.ready:
                folder.path.mkdir(parents=True, exist_ok=True)
                key_file = folder.path / KEY_FILE
                if not key_file.exists():
                    description = {"kind": key.kind, **key.describe()}
                    _atomic_write(key_file, (json.dumps(description, indent=2) + "\n").encode())
                folder.ready = True
            buffer = io.BytesIO()
            torch.save(record, buffer)
            payload = buffer.getvalue()
            _atomic_write(folder.path / f"{image_digest}{SUFFIX}", payload)
        except OSError as exc:
            with self._lock:
                self.stats.failed_writes += 1
                warn = not self._warned_write
                self._warned_write = True
            if warn:
                log.warning("feature cache: cannot write under %s (%s); continuing", self.root, exc)
            return
        with self._lock:
            self.stats.written += 1
            self.stats.bytes_written += len(payload)

    def flush(self) -> None:
        """Wait until every queued write is on disk (or has failed with its warning)."""
        pending, self._pending = self._pending, []
        for future in pending:
            future.result()

    def close(self) -> None:
        self.flush()
        self._writer.shutdown(wait=True)

    # ------------------------------------------------------------------ reporting
    def size_bytes(self) -> int:
        """Bytes of every feature file under the root (all kinds, all keys)."""
        return sum(entry.bytes for entry in folder_usage(self.root))

    def summary(self) -> str:
        """One line for the run log and the provenance."""
        s = self.stats
        parts = [f"disk {self.root}: {s.loaded} loaded, {s.written} written"]
        parts.append(f"({_megabytes(s.bytes_written)})")
        if s.unreadable:
            parts.append(f"{s.unreadable} unreadable rewritten")
        if s.failed_writes:
            parts.append(f"{s.failed_writes} writes failed")
        parts.append(f"size now {_megabytes(self.size_bytes())}")
        return " ".join(parts)


# ---------------------------------------------------------------------- file format
def _pack(
    features: Mapping[str, Tensor], key_digest: str, image_digest: str, narrow: bool
) -> dict[str, object]:
    tensors: dict[str, Tensor] = {}
    widen: list[str] = []
    for name, value in features.items():
        value = value.detach().to("cpu", copy=True).contiguous()
        if narrow and value.dtype == torch.float32:
            small = value.to(torch.bfloat16)
            if torch.equal(small.float(), value):  # every value is a bf16 number: lossless
                value = small
                widen.append(name)
        tensors[name] = value
    return {
        "format": STORE_FORMAT,
        "key": key_digest,
        "image": image_digest,
        "features": tensors,
        "widen": widen,
    }


def _unpack(record: object, key_digest: str, image_digest: str) -> dict[str, Tensor]:
    if not isinstance(record, dict) or record.get("format") != STORE_FORMAT:
        raise ValueError("not a feature file of this format")
    if record.get("key") != key_digest or record.get("image") != image_digest:
        raise ValueError("file holds another key or image than its name says")
    tensors = record["features"]
    if not isinstance(tensors, dict) or not all(isinstance(v, Tensor) for v in tensors.values()):
        raise ValueError("malformed features")
    widen = set(record.get("widen") or ())
    return {name: value.float() if name in widen else value for name, value in tensors.items()}


def _atomic_write(path: Path, payload: bytes) -> None:
    """Write ``payload`` to ``path`` so that readers see the old file, the new file or none."""
    handle, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(payload)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _safe_name(kind: str) -> str:
    cleaned = "".join(c if c.isalnum() or c in "-_." else "_" for c in kind)
    return cleaned or "unknown"


def _megabytes(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


# ---------------------------------------------------------------------- inspection
@dataclass
class FolderUsage:
    """Files and bytes of one key folder of the store."""

    kind: str
    digest: str
    files: int = 0
    bytes: int = 0
    description: dict[str, object] = field(default_factory=dict)


def folder_usage(root: str | Path) -> list[FolderUsage]:
    """Every key folder under ``root`` with its feature files' count and size (sorted)."""
    root = Path(root)
    usage: list[FolderUsage] = []
    if not root.is_dir():
        return usage
    for kind_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        for key_dir in sorted(p for p in kind_dir.iterdir() if p.is_dir()):
            entry = FolderUsage(kind_dir.name, key_dir.name)
            with os.scandir(key_dir) as items:
                for item in items:
                    if item.name.endswith(SUFFIX) and item.is_file():
                        entry.files += 1
                        entry.bytes += item.stat().st_size
            try:
                entry.description = json.loads((key_dir / KEY_FILE).read_text())
            except (OSError, ValueError):
                entry.description = {}
            usage.append(entry)
    return usage


def image_digests(paths: Sequence[Path]) -> list[str]:
    """Content sha256 of each image file (memoised per path, size and mtime)."""
    from semclip_bench.data import file_sha256

    return [file_sha256(p) for p in paths]
