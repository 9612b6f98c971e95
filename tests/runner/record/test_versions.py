"""Versions in provenance and the environment lock (issue 22); no network, no run."""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from semclip_bench.runner.record import versions
from semclip_bench.runner.record.provenance import provenance_block
from semclip_bench.runner.record.versions import (
    MISSING,
    TRACKED,
    installed_versions,
    lock_path,
    lock_pins,
    lock_status,
    version_differences,
    versions_note,
    versions_text,
)

REPO = Path(__file__).resolve().parents[3]
LOCKED_PYTHONS = ("3.10", "3.11", "3.12", "3.13", "3.14")
#: Every package on the numbers' path, as the locks name them.
REQUIRED = (
    "numpy",
    "opencv-python-headless",
    "scipy",
    "pillow",
    "open-clip-torch",
    "timm",
    "lightning",
    "albumentations",
    "torchmetrics",
)


def _entries(text: str) -> dict[str, tuple[str, list[str]]]:
    """``{name: (version, hashes)}`` of a pip requirements file written with hashes."""
    entries = {}
    for block in re.split(r"\n(?=[A-Za-z0-9])", text):
        match = re.match(r"([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)", block)
        if match:
            entries[match.group(1)] = (match.group(2), re.findall(r"--hash=sha256:(\w+)", block))
    return entries


def test_installed_versions_name_every_package_on_the_numbers_path() -> None:
    found = installed_versions()
    assert set(found) == {"python", "cuda", *TRACKED}
    assert found["python"] == sys.version.split()[0]
    import cv2
    import numpy
    import torch

    assert found["numpy"] == numpy.__version__ and found["torch"] == torch.__version__
    assert found["cuda"] == str(torch.version.cuda or "none")
    assert found["opencv"].startswith(cv2.__version__)  # the wheel adds its packaging revision


@pytest.mark.parametrize("python", LOCKED_PYTHONS)
def test_each_lock_pins_every_package_with_hashes(python: str) -> None:
    path = REPO / "requirements" / f"lock-py{python}.txt"
    entries = _entries(path.read_text())
    assert entries["torch"][0] == "2.14.1" and entries["torchvision"][0] == "0.29.1"
    missing = [name for name in REQUIRED if name not in entries]
    assert not missing, f"{path.name} lacks {missing}"
    unhashed = [name for name, (_, hashes) in entries.items() if not hashes]
    assert not unhashed, f"{path.name}: no sha256 for {unhashed}"
    assert all(len(h) == 64 for _, hashes in entries.values() for h in hashes)
    pinned = {versions.normalize(name): version for name, (version, _) in entries.items()}
    assert lock_pins(path.read_text()) == pinned


def test_pip_itself_is_pinned_with_a_hash() -> None:
    entries = _entries((REPO / "requirements" / "pip.txt").read_text())
    assert list(entries) == ["pip"] and entries["pip"][1]


def test_make_targets_and_the_stamp_depend_on_the_lock() -> None:
    text = (REPO / "Makefile").read_text()
    targets = set(re.findall(r"^([A-Za-z0-9_.$()/%-]+):", text, re.M))
    assert {"install", "test", "sweep", "lock", "lint", "verify-results"} <= targets
    stamp = re.search(r"^\$\(STAMP\):(.*)$", text, re.M)
    assert stamp and "$(LOCK)" in stamp.group(1)
    assert "--require-hashes --no-deps -r $(LOCK)" in text
    assert re.search(r"^UV_VERSION := \d+\.\d+\.\d+$", text, re.M), "uv pinned exactly"
    assert "--upgrade pip" not in text
    locked = re.search(r"^LOCK_PYTHONS := (.*)$", text, re.M).group(1).split()
    assert tuple(locked) == LOCKED_PYTHONS


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_a_new_venv_checks_free_disk_first() -> None:
    """A full disk stops the install with one line naming the place, before pip starts."""

    def check(gigabytes: str) -> subprocess.CompletedProcess:
        command = ["make", "--no-print-directory", "-C", str(REPO), "check-disk"]
        command += [f"PYTHON={sys.executable}", f"VENV_DISK_GB={gigabytes}"]
        return subprocess.run(command, capture_output=True, text=True, check=False)

    assert check("0").returncode == 0
    refused = check("1e9")
    assert refused.returncode != 0
    first = refused.stderr.splitlines()[0]
    assert first.startswith("error: a new .venv needs about 1e+09 GB of free disk and ")
    assert f"{REPO} has " in first and "GB free" in first
    for bad in ("abc", "-1", ""):
        refused = check(bad)
        assert refused.returncode != 0
        assert refused.stderr.splitlines()[0] == (
            f"error: VENV_DISK_GB={bad!r}: need a number of GB, 0 or more"
        )
    stamp = re.search(r"^\$\(STAMP\):.*\n\t(.*)$", (REPO / "Makefile").read_text(), re.M)
    assert stamp and "$(CHECK_DISK)" in stamp.group(1), "the check runs before the venv is made"


def test_lock_status_compares_every_pin_with_the_environment(tmp_path: Path) -> None:
    found = installed_versions()
    good = tmp_path / "lock-py9.9.txt"
    good.write_text(f"numpy=={found['numpy']} \\\n    --hash=sha256:{'0' * 64}\n")
    status = lock_status.__wrapped__(good)
    assert status["matches"] and status["file"].endswith("lock-py9.9.txt")
    assert status["sha256"] == hashlib.sha256(good.read_bytes()).hexdigest()
    bad = tmp_path / "lock-py9.8.txt"
    bad.write_text("numpy==0.0.1\nno-such-package==1.0\n")
    status = lock_status.__wrapped__(bad)
    assert not status["matches"]
    assert status["differences"] == [
        f"no-such-package {MISSING} (lock: 1.0)",
        f"numpy {found['numpy']} (lock: 0.0.1)",
    ]
    assert lock_status.__wrapped__(tmp_path / "none.txt")["file"] is None
    assert lock_path((3, 11), tmp_path) == tmp_path / "lock-py3.11.txt"


def test_a_differing_recorded_version_is_named() -> None:
    current = {"python": "3.11.7", "opencv": "5.1.0.95", "numpy": "2.4.6"}
    record = {"versions": {"python": "3.11.7", "opencv": "5.0.0.93", "numpy": "2.4.6"}}
    assert version_differences(record["versions"], current) == ["opencv 5.0.0.93 -> 5.1.0.95"]
    assert versions_note(record, current) == (
        "recorded versions differ from this environment: opencv 5.0.0.93 -> 5.1.0.95"
    )
    assert versions_note({"versions": current}, current) == (
        "recorded versions equal this environment's"
    )
    # provenance written before issue 22 still loads, and says what it lacks
    assert versions_note({"torch": "2.14.1"}, current) == "versions not recorded"
    assert versions_note(None, current) == "versions not recorded"
    assert versions_note({"versions": {"timm": "1.0"}}, {}) == (
        f"recorded versions differ from this environment: timm 1.0 -> {MISSING}"
    )


def test_header_prints_versions_in_one_line_and_reads_older_records() -> None:
    record = {
        "command": "sweep",
        "versions": {"python": "3.11.7", "torch": "2.14.1", "opencv": "5.0.0.93"},
        "lock": {"file": "requirements/lock-py3.11.txt", "sha256": "ab" * 32, "matches": True},
    }
    line = next(x for x in provenance_block([record], None).splitlines() if "Versions" in x)
    assert line == (
        "- Versions: python 3.11.7, torch 2.14.1, opencv 5.0.0.93; lock "
        "`requirements/lock-py3.11.txt` sha256 `abababababab` (environment matches it)"
    )
    older = {"command": "sweep", "torch": "2.2.0", "python": "3.10.1"}
    assert versions_text(older) == "torch 2.2.0, Python 3.10.1 (other versions not recorded)"
    assert "no lock" in versions_text({"versions": {"numpy": "1"}, "lock": {"file": None}})
