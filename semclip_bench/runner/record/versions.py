"""The package versions on the path of a run's numbers, and the lock file they came from.

Every number depends on more than this code: sem-synth draws with OpenCV and NumPy, images are read
with Pillow, features come from torch/open_clip/timm, heads train under Lightning (issue 22: an
OpenCV minor release changed the dataset digest). Provenance therefore records these versions and
the sha256 of the running Python's lock (``requirements/lock-py3.X.txt``, docs/environment.md)
with whether the environment matches it; refusals over a differing digest or row name the recorded
versions that differ from the running environment (:func:`versions_note`).

Deliberately cheap: versions come from ``importlib.metadata`` (no module imports), and the lock
check reads one text file and the installed distributions' metadata once per process.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
from collections.abc import Mapping
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any

#: Short name (as recorded and printed) -> the distributions that provide it, first found wins.
#: opencv is the wheel's version (5.0.0.93, finer than ``cv2.__version__``'s 5.0.0: the packaging
#: revision can change the bundled build); ``cv2.__version__`` is the fallback without a wheel.
TRACKED: dict[str, tuple[str, ...]] = {
    "torch": ("torch",),
    "torchvision": ("torchvision",),
    "numpy": ("numpy",),
    "opencv": (
        "opencv-python-headless",
        "opencv-python",
        "opencv-contrib-python-headless",
        "opencv-contrib-python",
    ),
    "scipy": ("scipy",),
    "pillow": ("pillow",),
    "open_clip": ("open_clip_torch",),
    "timm": ("timm",),
    "lightning": ("lightning",),
    "albumentations": ("albumentations",),
}

#: The value of a package that is not installed.
MISSING = "not installed"

#: Where the locks live: the repository's ``requirements/`` (absent in a non-editable install).
LOCK_DIR = Path(__file__).resolve().parents[3] / "requirements"


def normalize(name: str) -> str:
    """PEP 503 form of a distribution name (``Open_Clip.torch`` -> ``open-clip-torch``)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _distribution_version(names: tuple[str, ...]) -> str | None:
    for name in names:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return None


@lru_cache(maxsize=1)
def installed_versions() -> dict[str, str]:
    """``{"python": "3.11.7", "torch": "2.14.1+cu130", "cuda": "13.0", ...}`` for the running
    environment. torch is its build string (``torch.__version__``: a GPU image's own build, e.g.
    ``2.5.0a0+nv24.10``, differs there from the wheel's) with the CUDA it was built for."""
    import torch  # the runner has imported it already

    versions = {"python": sys.version.split()[0]}
    for short, names in TRACKED.items():
        found = _distribution_version(names)
        if short == "torch":
            found = str(torch.__version__)
        if found is None and short == "opencv":
            try:  # a source build of OpenCV has no wheel metadata
                import cv2

                found = str(cv2.__version__)
            except ImportError:
                found = None
        versions[short] = found or MISSING
        if short == "torch":
            versions["cuda"] = str(torch.version.cuda or "none")
    return versions


def lock_path(version: tuple[int, int] | None = None, folder: Path = LOCK_DIR) -> Path:
    """The lock of a Python ``(major, minor)`` (default: the running one); may not exist."""
    major, minor = version or sys.version_info[:2]
    return folder / f"lock-py{major}.{minor}.txt"


_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)", re.M)


def lock_pins(text: str) -> dict[str, str]:
    """``{normalized name: version}`` of every ``name==version`` line of a requirements file."""
    return {normalize(m.group(1)): m.group(2) for m in _PIN.finditer(text)}


def _installed_distributions() -> dict[str, str]:
    found: dict[str, str] = {}
    for dist in metadata.distributions():
        name = dist.metadata["Name"]
        if name:
            found.setdefault(normalize(name), dist.version)
    return found


@lru_cache(maxsize=1)
def lock_status(path: Path | None = None) -> dict[str, Any]:
    """The lock of the running Python: its path (repository-relative), sha256, and whether every
    package it pins is installed at that version (``differences`` lists the first few that are
    not). ``{"file": None}`` when there is no lock for this Python (e.g. a pip-installed
    package)."""
    path = path or lock_path()
    if not path.is_file():
        return {"file": None, "sha256": None, "matches": False, "differences": []}
    data = path.read_bytes()
    installed = _installed_distributions()
    differences = [
        f"{name} {installed.get(name, MISSING)} (lock: {pinned})"
        for name, pinned in sorted(lock_pins(data.decode("utf-8")).items())
        if installed.get(name) != pinned
    ]
    return {
        "file": f"{path.parent.name}/{path.name}",
        "sha256": hashlib.sha256(data).hexdigest(),
        "matches": not differences,
        "differences": differences[:5],
    }


def environment_record() -> dict[str, Any]:
    """What provenance.json records about the environment: ``versions`` and ``lock``."""
    return {"versions": dict(installed_versions()), "lock": dict(lock_status())}


def version_differences(recorded: Mapping[str, str], current: Mapping[str, str]) -> list[str]:
    """``["opencv 5.0.0.93 -> 5.1.0.95", ...]``: recorded packages whose version differs."""
    return [
        f"{name} {recorded[name]} -> {current.get(name, MISSING)}"
        for name in recorded
        if recorded[name] != current.get(name, MISSING)
    ]


def versions_note(
    record: Mapping[str, Any] | None, current: Mapping[str, str] | None = None
) -> str:
    """The clause a refusal appends: which versions recorded in a provenance ``record`` differ
    from ``current`` (default: the running environment), or that they match or were not recorded.
    """
    current = installed_versions() if current is None else current
    recorded = (record or {}).get("versions")
    if not isinstance(recorded, Mapping) or not recorded:
        return "versions not recorded"
    differing = version_differences(recorded, current)
    if not differing:
        return "recorded versions equal this environment's"
    return "recorded versions differ from this environment: " + ", ".join(differing)


def record_versions_note(folder: Path, current: Mapping[str, str] | None = None) -> str:
    """:func:`versions_note` of ``<folder>/provenance.json`` (or "versions not recorded")."""
    path = Path(folder) / "provenance.json"
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return "versions not recorded"
    return versions_note(record, current)


def between_note(first: Path, second: Path) -> str:
    """The clause for two folders' records: the versions that differ from the first's to the
    second's (a report merge of rows made in two environments)."""
    records = []
    for folder in (first, second):
        try:
            records.append(json.loads((Path(folder) / "provenance.json").read_text()))
        except (OSError, ValueError):
            records.append({})
    versions = [r.get("versions") for r in records]
    if not all(isinstance(v, Mapping) and v for v in versions):
        return "versions not recorded"
    differing = version_differences(versions[0], versions[1])
    if not differing:
        return "recorded versions equal"
    return "recorded versions differ: " + ", ".join(differing)


def versions_text(record: Mapping[str, Any]) -> str:
    """One line for a table header: the recorded versions and the lock, compactly."""
    versions = record.get("versions")
    if not isinstance(versions, Mapping) or not versions:
        torch, python = record.get("torch"), record.get("python")
        return f"torch {torch}, Python {python} (other versions not recorded)"
    text = ", ".join(f"{name} {version}" for name, version in versions.items())
    lock = record.get("lock") or {}
    if lock.get("file"):
        state = "environment matches it" if lock.get("matches") else "environment differs from it"
        text += f"; lock `{lock['file']}` sha256 `{str(lock.get('sha256'))[:12]}` ({state})"
    else:
        text += "; no lock (environment not built by make)"
    return text


__all__ = [
    "MISSING",
    "TRACKED",
    "between_note",
    "environment_record",
    "installed_versions",
    "lock_path",
    "lock_pins",
    "lock_status",
    "record_versions_note",
    "version_differences",
    "versions_note",
    "versions_text",
]
