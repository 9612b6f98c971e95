"""The CLI's help and ``data check`` start without the heavy stack (torch, Lightning, W&B, the
plotting stack, open_clip, timm, pandas): they are imported only by the commands that use them.
Checked on ``sys.modules`` of a fresh interpreter, not by timing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import semclip_bench
from semclip_bench.data.fixtures import write_tiny_mvtec

CHECKOUT = Path(semclip_bench.__file__).resolve().parents[1]

#: Top-level packages that the help and ``data check`` must not import.
HEAVY = ("torch", "lightning", "wandb", "matplotlib", "open_clip", "timm", "pandas")

#: Runs ``python -m semclip_bench ARGS`` in this interpreter and prints which HEAVY it imported.
PROBE = """
import json, runpy, sys
heavy, args = json.loads(sys.argv[1]), json.loads(sys.argv[2])
sys.argv = ["semclip_bench", *args]
try:
    runpy.run_module("semclip_bench", run_name="__main__", alter_sys=True)
except SystemExit:
    pass
sys.stdout.flush()
print("HEAVY=" + json.dumps(sorted(name for name in heavy if name in sys.modules)))
"""


def _heavy_imports(args: list[str]) -> list[str]:
    env = {**os.environ, "PYTHONPATH": str(CHECKOUT)}
    completed = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(HEAVY), json.dumps(args)],
        capture_output=True,
        text=True,
        env=env,
        cwd=CHECKOUT,
        check=True,
    )
    line = [x for x in completed.stdout.splitlines() if x.startswith("HEAVY=")][-1]
    return json.loads(line.removeprefix("HEAVY="))


@pytest.mark.parametrize(
    "args",
    [
        ["--help"],
        ["sweep", "--help"],
        ["ablate", "--help"],
        ["report", "--help"],
        ["verify", "--help"],
        ["data", "--help"],
        ["data", "synth", "--help"],
        ["data", "check", "--help"],
        ["pretrain", "--help"],
        ["cache", "--help"],
    ],
    ids=lambda args: " ".join(args),
)
def test_help_imports_no_heavy_package(args: list[str]) -> None:
    assert _heavy_imports(args) == []


def test_data_check_imports_no_heavy_package(tmp_path: Path) -> None:
    root = write_tiny_mvtec(tmp_path / "tiny")
    assert _heavy_imports(["data", "check", str(root), "--workers", "1"]) == []
