"""Method configs and prompt banks, and where they are looked up.

The package ships its own files in this folder (``methods/<method>.yaml``: a method's options and
training settings; ``prompts/<name>.yaml``: prompt banks), so a wheel install needs nothing else.
Users override single files without editing the package; each file is looked up, by its relative
path, in this order (the first folder that holds it wins):

1. the folder given with ``--config-dir`` (``config_dir`` of ``run_sweep``/``load_method``/YAML);
2. the folders listed in ``$SEMCLIP_BENCH_CONFIGS`` (separated by ``os.pathsep``, ``:`` on Linux);
3. ``./configs`` of the current working directory;
4. the package's own ``semclip_bench/configs``.

So ``configs/methods/semclip.yaml`` in the working directory replaces the shipped SEM-CLIP
settings (the whole file: copy the shipped one and edit it), and ``configs/prompts/expert.yaml``
replaces the expert prompt bank, while every other file still comes from the package.

Only ``methods/`` and ``prompts/`` of a folder are read, and a user folder (2 and 3) with neither
is no config folder and is skipped: the repository's own ``configs/`` holds run presets
(``sweep --config configs/sweep.yaml``) and tuning studies, never a method or prompt override.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path

from semclip_bench.errors import UserError

log = logging.getLogger(__name__)

#: Environment variable with extra config folders (``os.pathsep``-separated).
CONFIGS_ENV = "SEMCLIP_BENCH_CONFIGS"
#: The package's own config folder (ships in the wheel).
PACKAGE_CONFIG_DIR = Path(__file__).resolve().parent

_explicit: list[Path] = []  # --config-dir of the running command (see use_config_dir)
_announced: set[Path] = set()  # user files already logged (once per process)


def search_path() -> list[Path]:
    """The config folders in lookup order (see the module docstring); missing ones, and folders
    with neither methods/ nor prompts/ (a folder of run presets), are skipped."""
    env = [Path(p).expanduser() for p in os.environ.get(CONFIGS_ENV, "").split(os.pathsep) if p]
    folders = [*_explicit, *env, Path.cwd() / "configs", PACKAGE_CONFIG_DIR]
    unique: list[Path] = []
    for folder in folders:
        if is_config_folder(folder) and all(not _same(folder, seen) for seen in unique):
            unique.append(folder)
    return unique


def is_config_folder(folder: Path) -> bool:
    """Whether ``folder`` holds method configs or prompt banks (a ``methods/`` or ``prompts/``
    subfolder)."""
    return (folder / "methods").is_dir() or (folder / "prompts").is_dir()


def _same(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve()
    except OSError:
        return False


def find_config(kind: str, name: str) -> Path | None:
    """``<folder>/<kind>/<name>.yaml`` from the first folder of :func:`search_path` holding it."""
    for folder in search_path():
        path = folder / kind / f"{name}.yaml"
        if path.is_file():
            if not _same(folder, PACKAGE_CONFIG_DIR) and path not in _announced:
                _announced.add(path)
                log.info("using %s (overrides the package's %s/%s.yaml)", path, kind, name)
            return path
    return None


def check_config_dir(path: str | Path | None, option: str = "--config-dir") -> Path | None:
    """``path`` as a folder, or None; a UserError naming the option when it is not a folder."""
    if path is None or str(path) == "":
        return None
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise UserError(
            f"{option}: folder not found: {folder} (expected a folder with methods/ and/or "
            "prompts/ subfolders)"
        )
    if not is_config_folder(folder):
        raise UserError(f"{option}: {folder} has neither a methods/ nor a prompts/ subfolder")
    return folder.resolve()


@contextlib.contextmanager
def use_config_dir(path: str | Path | None) -> Iterator[None]:
    """Put ``path`` first in the lookup order while the block runs (no-op for None)."""
    folder = check_config_dir(path)
    if folder is None:
        yield
        return
    _explicit.insert(0, folder)
    try:
        yield
    finally:
        _explicit.remove(folder)


__all__ = [
    "CONFIGS_ENV",
    "PACKAGE_CONFIG_DIR",
    "check_config_dir",
    "find_config",
    "is_config_folder",
    "search_path",
    "use_config_dir",
]
