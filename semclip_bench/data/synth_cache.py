"""The ``sem-synth`` cache: content-addressed folders of generated data, verified on every use.

A cache folder is named by :func:`synth_cache_key`: the sha256 of the generator's identity (the
bytes of its source files and the NumPy/OpenCV versions, see
:mod:`semclip_bench.data.synth.identity`), the :class:`~semclip_bench.data.synth.SynthConfig`
and the split variant (``test`` or ``val``). Changed generator code or settings therefore always
get a new folder: an older cache can never be served. Each folder's ``synth.json`` records the
content digest of the images and masks written; :func:`ensure_synth` recomputes it on every use
and regenerates a folder whose files were edited, truncated, added or removed, logging one line
saying why. Generation goes into a temporary folder renamed into place at the end, under a file
lock, so concurrent processes (e.g. DDP ranks) neither see half a dataset nor generate twice.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from semclip_bench.data.digest import file_sha256
from semclip_bench.errors import UserError

if TYPE_CHECKING:
    from semclip_bench.data.synth import GenerationReport, SynthConfig

log = logging.getLogger(__name__)

#: Name of the built-in synthetic dataset (``--data sem-synth``, the test split).
SYNTH_NAME = "sem-synth"
#: Environment variable naming the cache folder (default ``~/.cache/semclip_bench``).
CACHE_ENV = "SEMCLIP_BENCH_CACHE"
#: Split variants of ``sem-synth`` (``sem-synth:<variant>``); ``test`` is plain ``sem-synth``.
VARIANTS: tuple[str, ...] = ("test", "val")
#: Length (hex digits) of the cache key in folder names.
KEY_LENGTH = 16


def default_cache_dir() -> Path:
    """The cache folder: ``$SEMCLIP_BENCH_CACHE`` if set, else ``~/.cache/semclip_bench``."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "semclip_bench"


def parse_synth_spec(spec: object) -> str | None:
    """The variant named by a dataset spec (``sem-synth[:test|:val]``), or ``None`` if ``spec``
    is not a sem-synth spec. An unknown variant is a :class:`UserError`."""
    if not isinstance(spec, str) or not (spec == SYNTH_NAME or spec.startswith(SYNTH_NAME + ":")):
        return None
    variant = spec[len(SYNTH_NAME) + 1 :] if spec != SYNTH_NAME else "test"
    if variant not in VARIANTS:
        raise UserError(
            f"dataset '{spec}': unknown {SYNTH_NAME} variant '{variant}' (use "
            + ", ".join(f"'{SYNTH_NAME}:{v}'" for v in VARIANTS)
            + f", or '{SYNTH_NAME}' for the test split)"
        )
    return variant


def synth_dataset_name(variant: str) -> str:
    """Name shown in tables: ``sem-synth`` for the test split, ``sem-synth:val`` for validation."""
    return SYNTH_NAME if variant == "test" else f"{SYNTH_NAME}:{variant}"


def variant_config(variant: str = "test") -> SynthConfig:
    """The benchmark's generator config of a split variant: the defaults with its data seed."""
    from semclip_bench.data import synth

    if variant not in VARIANTS:
        raise UserError(f"unknown {SYNTH_NAME} variant '{variant}' (known: {', '.join(VARIANTS)})")
    return dataclasses.replace(synth.SynthConfig(), seed=synth.DATA_SEEDS[variant])


def synth_cache_key(config: SynthConfig, variant: str = "test") -> str:
    """sha256 (hex) of (generator identity, config, variant): names the cache folder."""
    from semclip_bench.data import synth

    payload = {
        "generator": synth.generator_identity(),
        "config": config.to_dict(),
        "variant": variant,
    }
    text = json.dumps(payload, sort_keys=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def synth_cache_path(
    config: SynthConfig | None = None,
    cache_dir: str | Path | None = None,
    variant: str = "test",
) -> Path:
    """Folder that holds (or will hold) the generated dataset of ``config`` and ``variant``
    (``config`` defaults to :func:`variant_config`)."""
    config = config if config is not None else variant_config(variant)
    base = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    key = synth_cache_key(config, variant)[:KEY_LENGTH]
    return base / f"{SYNTH_NAME}-{variant}-{key}"


# --------------------------------------------------------------------------------------------
# Verifying a generated folder


def folder_files(root: Path) -> list[str]:
    """Relative paths (posix, sorted) of every file under ``root`` but the bookkeeping files."""
    from semclip_bench.data.synth import METADATA_NAMES

    files = []
    for path in root.rglob("*"):
        if path.is_file() or path.is_symlink():
            rel = path.relative_to(root).as_posix()
            if rel not in METADATA_NAMES:
                files.append(rel)
    return sorted(files)


def folder_checksums(root: Path) -> list[tuple[str, str]]:
    """(relative path, sha256) of every image and mask under ``root`` (memoised per file)."""
    return [(rel, file_sha256(root / rel)) for rel in folder_files(root)]


def _first_difference(root: Path, found: list[tuple[str, str]]) -> str:
    """Which file differs from the recorded checksum list (empty if the list is unreadable)."""
    from semclip_bench.data.synth import CHECKSUMS_NAME

    try:
        lines = (root / CHECKSUMS_NAME).read_text(encoding="utf-8").splitlines()
        recorded = dict(reversed(line.split("  ", 1)) for line in lines if line)
    except (OSError, ValueError):
        return ""
    actual = dict(found)
    for rel in sorted(set(recorded) | set(actual)):
        if rel not in actual:
            return f"; {rel} is missing"
        if rel not in recorded:
            return f"; {rel} was added"
        if recorded[rel] != actual[rel]:
            return f"; {rel} was changed"
    return ""


def verify_synth(root: Path, config: SynthConfig | None = None) -> str | None:
    """Why the generated folder ``root`` cannot be used (``None`` if it is intact).

    Checks that ``synth.json`` exists and records ``config`` (when given) and that the content
    digest of the files now in the folder equals the one recorded at generation.
    """
    from semclip_bench.data.synth import MANIFEST_NAME, content_digest

    root = Path(root)
    if not root.is_dir():
        return "not a folder"
    try:
        manifest = json.loads((root / MANIFEST_NAME).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return f"no {MANIFEST_NAME} (incomplete or not generated by this package)"
    except (OSError, ValueError) as exc:
        return f"{MANIFEST_NAME} unreadable ({exc})"
    recorded = manifest.get("content_digest") if isinstance(manifest, dict) else None
    if not isinstance(recorded, str):
        return f"{MANIFEST_NAME} records no content digest (written by an older version)"
    if config is not None and manifest.get("config") != config.to_dict():
        return f"{MANIFEST_NAME} records a different generator config"
    try:
        found_files = folder_checksums(root)
    except OSError as exc:
        return f"files unreadable ({exc})"
    found = content_digest(found_files)
    if found != recorded:
        return (
            f"content digest mismatch (recorded {recorded[:16]}, found {found[:16]}"
            f"{_first_difference(root, found_files)})"
        )
    return None


# --------------------------------------------------------------------------------------------
# Generating


#: Seconds between attempts to take the generation lock, and before saying that we wait.
_LOCK_POLL_S = 0.2
_LOCK_SAY_S = 5.0


def _check_not_bootstrapping(target: Path) -> None:
    """Refuse to generate while a spawned worker process re-imports the caller's main script.

    The generator's worker processes are spawned: each imports the script that started them. A
    script that loads sem-synth at import time (no ``if __name__ == "__main__":`` guard) would
    make every worker wait for the lock its parent holds -- a silent hang -- so it is an error.
    CPython's own check for this case reads the same flag.
    """
    import multiprocessing

    if getattr(multiprocessing.current_process(), "_inheriting", False):
        raise UserError(
            f"{target}: sem-synth generation was started by a worker process importing the main "
            "script; put the script's code under 'if __name__ == \"__main__\":'"
        )


@contextlib.contextmanager
def _locked(target: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``.<target name>.lock`` next to ``target`` (POSIX ``flock``;
    elsewhere no lock, and the atomic rename alone keeps half datasets out of sight)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    lock_path = target.parent / f".{target.name}.lock"
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        handle = open(lock_path, "a+")  # noqa: SIM115 - closed below
    except OSError as exc:
        raise UserError(f"{target.parent}: cannot create the cache folder ({exc})") from None
    try:
        waited = 0.0
        while True:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if waited < _LOCK_SAY_S <= waited + _LOCK_POLL_S:
                    log.info("waiting for another process that is generating %s", target)
                time.sleep(_LOCK_POLL_S)
                waited += _LOCK_POLL_S
        yield
    finally:
        handle.close()  # releases the lock


def _discard(target: Path) -> None:
    """Remove a stale cache folder: renamed aside first so that it disappears at once."""
    aside = Path(tempfile.mkdtemp(prefix=f".{target.name}.stale-", dir=target.parent))
    with contextlib.suppress(FileNotFoundError):  # already gone
        os.replace(target, aside / "old")
    shutil.rmtree(aside, ignore_errors=True)


def ensure_synth(
    config: SynthConfig | None = None,
    cache_dir: str | Path | None = None,
    workers: int | None = None,
    variant: str = "test",
) -> Path:
    """Return the verified cache folder of ``config`` / ``variant``, generating it if needed.

    ``config`` defaults to :func:`variant_config` of ``variant``. A folder that fails
    :func:`verify_synth` is regenerated, with one warning saying why.
    """
    config = config if config is not None else variant_config(variant)
    target = synth_cache_path(config, cache_dir, variant)
    if target.is_dir() and verify_synth(target, config) is None:
        return target
    _check_not_bootstrapping(target)
    with _locked(target):
        if target.exists() or target.is_symlink():  # recheck: another process may have fixed it
            problem = verify_synth(target, config)
            if problem is None:
                return target
            log.warning("%s cache %s: %s; regenerating", SYNTH_NAME, target, problem)
            _discard(target)
        else:
            log.info("generating %s into %s (first use; later runs reuse it)", SYNTH_NAME, target)
        if workers is None:  # worker processes start slowly: worth it for real sizes only
            workers = 1 if config.n_images < 64 else max(1, min(8, os.cpu_count() or 1))
        progress = ProgressLog(config.n_images)
        report = generate_into(target, config, workers=workers, progress=progress)
    log.info(
        "generated %d images in %.1f s (%.1f images/s), content digest %s",
        report.n_images,
        report.seconds,
        report.images_per_second,
        report.content_digest[:16],
    )
    return target


class ProgressLog:
    """``progress(n)`` callback that logs every tenth of ``total`` images generated."""

    def __init__(self, total: int, every: float = 0.1) -> None:
        self.total = max(1, total)
        self.done = 0
        self.step = max(1, int(self.total * every))
        self.next = self.step

    def __call__(self, n: int) -> None:
        self.done += n
        if self.done >= self.next or self.done == self.total:
            log.info("  %d / %d images", self.done, self.total)
            self.next = (self.done // self.step + 1) * self.step


def generate_into(
    target: str | Path,
    config: SynthConfig,
    workers: int = 1,
    progress: Callable[[int], None] | None = None,
) -> GenerationReport:
    """Generate ``config``'s dataset so that ``target`` only ever appears complete.

    Writes into a temporary folder next to ``target`` (removed on any failure or interruption)
    and renames it to ``target`` at the end (the generator records its config and content digest
    in ``synth.json``). ``target`` must not exist or be an empty folder. If another process
    completes ``target`` first, its result is kept. ``progress(n)`` is called with the number of
    images finished since its previous call. Returns the generator's report.
    """
    from semclip_bench.data import synth

    target = Path(target).expanduser()
    if target.exists():
        if not target.is_dir() or any(target.iterdir()):
            raise UserError(f"{target}: already exists and is not an empty folder")
        target.rmdir()
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
    except OSError as exc:
        raise UserError(f"{target.parent}: cannot create the output folder ({exc})") from None
    try:
        report = synth.generate(tmp, config, workers=workers, progress=progress)
        try:
            os.rename(tmp, target)
        except OSError:
            if not target.is_dir():  # not a lost race with another process: a real failure
                raise
        report = dataclasses.replace(report, root=target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return report
