"""A wheel install (not editable) runs a sweep from another directory: configs and prompt banks
ship inside the package. Nothing is downloaded: the wheel is built without build isolation and
installed without dependencies into a folder; the dependencies come from this environment."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import yaml

import semclip_bench
from semclip_bench.data.fixtures import write_tiny_mvtec

CHECKOUT = Path(semclip_bench.__file__).resolve().parents[1]

PROBE = """
import importlib.metadata, json, sys
import semclip_bench, semclip_bench.configs as configs, semclip_bench.prompts as prompts
from semclip_bench.runner.plan.config import method_config
method_config("semclip")
print(json.dumps({
    "package": semclip_bench.__file__,
    "version": semclip_bench.__version__,
    "metadata_version": importlib.metadata.version("semclip_bench"),
    "configs": str(configs.PACKAGE_CONFIG_DIR),
    "expert": str(prompts.builtin_bank_path("expert")),
    "modules": sorted(m.__file__ for n, m in sys.modules.items()
                      if n.startswith("semclip_bench") and getattr(m, "__file__", None)),
    "path": sys.path,
}))
"""


def _pip(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", "-q", *args], check=True)


def test_wheel_install_runs_a_sweep_outside_the_checkout(tmp_path: Path) -> None:
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(CHECKOUT / name, source / name)
    skip = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    shutil.copytree(CHECKOUT / "semclip_bench", source / "semclip_bench", ignore=skip)
    dist, site = tmp_path / "dist", tmp_path / "site"
    _pip("wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", str(dist), str(source))
    (wheel,) = dist.glob("semclip_bench-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for shipped in ("configs/methods/semclip.yaml", "configs/prompts/expert.yaml", "weights/"):
        assert any(n.startswith(f"semclip_bench/{shipped}") for n in names), shipped
    _pip("install", "--no-deps", "--no-index", "--target", str(site), str(wheel))

    work = tmp_path / "work"  # the user's folder: no configs/, no checkout
    work.mkdir()
    data = write_tiny_mvtec(tmp_path / "data")
    quick = {"training": {"epochs": 2, "batch_size": 8}}
    config = {"method_overrides": {"semclip": quick}, "backbone": "semclip-tiny", "device": "cpu"}
    (work / "fast.yaml").write_text(yaml.safe_dump(config))
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "SEMCLIP_BENCH_CONFIGS"}}
    env.update(PYTHONPATH=str(site), SEMCLIP_BENCH_CACHE=str(tmp_path / "cache"))

    probe = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=work, env=env, capture_output=True, text=True
    )
    assert probe.returncode == 0, probe.stderr
    found = json.loads(probe.stdout)
    installed = str(site.resolve())
    assert found["package"].startswith(installed)
    assert found["metadata_version"] == found["version"]  # pyproject.toml reads _version.py
    assert found["configs"].startswith(installed) and found["expert"].startswith(installed)
    assert all(path.startswith(installed) for path in found["modules"]), found["modules"]
    entries = {str(Path(p or work).resolve()) for p in found["path"]}
    assert str(CHECKOUT) not in entries, "the repository checkout must not be on sys.path"

    command = [sys.executable, "-m", "semclip_bench", "sweep", "--config", "fast.yaml"]
    command += ["--methods", "patchcore,semclip", "--data", str(data), "--shots", "1"]
    command += ["--seeds", "0", "--out", "out", "--wandb", "disabled"]
    done = subprocess.run(command, cwd=work, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = (work / "out" / "sweep" / "episodes.csv").read_text().splitlines()
    assert len(rows) == 3 and "line_space/semclip/k1/s0" in rows[2]
    provenance = json.loads((work / "out" / "sweep" / "provenance.json").read_text())
    # The engine ran from the installed copy, outside any git checkout.
    assert provenance["git_commit"] == "unknown"
    assert (work / "out" / "sweep.md").is_file()
