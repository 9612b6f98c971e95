"""sem-synth's side-environment digest check starts at the oldest versions pyproject admits."""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # benchmarks/ is not installed

from benchmarks.synth_drift import VERSION_SETS  # noqa: E402


def _lower_bound(name: str) -> str:
    text = (ROOT / "pyproject.toml").read_text()
    found = re.search(rf'"{name}>=([0-9.]+)"', text)
    assert found, f"pyproject.toml has no lower bound for {name}"
    return found.group(1)


def test_oldest_set_is_pyprojects_lower_bounds() -> None:
    oldest = VERSION_SETS["oldest"]
    for name in ("numpy", "scipy"):
        bound = tuple(int(x) for x in _lower_bound(name).split("."))
        pinned = tuple(int(x) for x in oldest[name].split("."))
        # The oldest release checked is the oldest the range admits (same minor version).
        assert pinned[:2] == bound[:2], (name, oldest[name], _lower_bound(name))
    assert oldest["opencv-python-headless"].startswith("4.10")
