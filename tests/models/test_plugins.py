"""Method plugins (entry-point group ``semclip_bench.methods``): discovery, errors, install."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

import semclip_bench
from semclip_bench import models
from semclip_bench.cli import main
from semclip_bench.errors import UserError
from semclip_bench.models import ENTRY_POINT_GROUP, discover_plugins, method_class

PLUGIN_SOURCE = Path(__file__).parents[1] / "plugins" / "semclip_bench_example_plugin"
#: The checkout under test (the subprocesses must import this one, not another install).
CHECKOUT = Path(semclip_bench.__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_synth_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from semclip_bench.data.fixtures import write_tiny_mvtec

    return write_tiny_mvtec(tmp_path_factory.mktemp("plugin_data") / "ds")


def _register(monkeypatch: pytest.MonkeyPatch, name: str, target: str) -> None:
    monkeypatch.setitem(models.PLUGINS, name, (target, "test-dist"))
    monkeypatch.setitem(models.METHODS, name, target)


def test_discovery_skips_builtin_and_invalid_names(monkeypatch: pytest.MonkeyPatch) -> None:
    def fake(group: str) -> list[metadata.EntryPoint]:
        assert group == ENTRY_POINT_GROUP
        return [
            metadata.EntryPoint("semclip", "somewhere:Other", group),  # a built-in's name
            metadata.EntryPoint("bad name", "somewhere:Other", group),
            metadata.EntryPoint("fine", "somewhere:Fine", group),
        ]

    monkeypatch.setattr(metadata, "entry_points", lambda group: fake(group))
    found = discover_plugins()
    assert list(found) == ["fine"] and found["fine"][0] == "somewhere:Fine"


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("no_such_module_xyz:Thing", r"cannot be loaded: ModuleNotFoundError: .*no_such_module"),
        ("collections:OrderedDict", r"is not a FewShotMethod subclass"),
        ("semclip_bench.models.patchcore:PatchCore", r"name = 'patchcore' differs from .*'broken'"),
        ("semclip_bench.models.base:FewShotMethod", r"does not implement extract, feature_key"),
    ],
)
def test_broken_plugin_gives_one_error_naming_it(
    monkeypatch: pytest.MonkeyPatch, target: str, message: str
) -> None:
    _register(monkeypatch, "broken", target)
    with pytest.raises(UserError, match=rf"method plugin 'broken' \({target}, from test-dist\)"):
        method_class("broken")
    with pytest.raises(UserError, match=message):
        method_class("broken")


def test_broken_plugin_stops_a_sweep_before_any_episode(
    monkeypatch: pytest.MonkeyPatch,
    tiny_synth_root: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
) -> None:
    _register(monkeypatch, "broken", "no_such_module_xyz:Thing")
    args = ["sweep", "--data", str(tiny_synth_root), "--out", str(tmp_path), "--shots", "1"]
    args += ["--seeds", "0", "--backbone", "semclip-tiny", "--wandb", "disabled"]
    assert main([*args, "--methods", "patchcore,broken"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: method plugin 'broken'"), err
    assert not list(tmp_path.rglob("episodes.csv"))


def test_plugin_runs_like_a_builtin_method_and_reaches_wandb(
    monkeypatch: pytest.MonkeyPatch, tiny_synth_root: Path, tmp_path: Path
) -> None:
    """In-process with the example plugin importable: rows, tables and the W&B run names."""
    from semclip_bench.runner.execute import engine

    monkeypatch.syspath_prepend(str(PLUGIN_SOURCE))
    _register(monkeypatch, "mean_patch", "semclip_bench_example_plugin:MeanPatchDistance")
    started: list[tuple[str, str]] = []

    class Recorder(engine.Tracker):
        def start(self, name: str, group: str, config: dict):
            started.append((name, group))
            return None

        def log_summary(self, table_rows: list, name: str) -> None:
            started.append(("summary", name))

    monkeypatch.setattr(engine, "Tracker", Recorder)
    args = ["sweep", "--data", str(tiny_synth_root), "--out", str(tmp_path), "--shots", "1"]
    args += ["--seeds", "0", "--backbone", "semclip-tiny", "--wandb", "offline"]
    assert main([*args, "--methods", "mean_patch,patchcore"]) == 0
    assert ("mean_patch-line_space-k1-s0", "sweep/mean_patch/k1") in started
    table = (tmp_path / "sweep.md").read_text()
    assert "| mean_patch | 1 | K normal images |" in table


def test_installed_plugin_is_found_through_its_entry_point(
    tiny_synth_root: Path, tmp_path: Path
) -> None:
    """pip-install the example plugin into a folder and sweep it in a fresh process."""
    source = tmp_path / "src"
    shutil.copytree(PLUGIN_SOURCE, source, ignore=shutil.ignore_patterns("__pycache__", "*.egg-*"))
    site = tmp_path / "site"
    pip = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation"]
    subprocess.run([*pip, "--no-index", "--target", str(site), str(source)], check=True)
    assert (site / "semclip_bench_example_plugin" / "__init__.py").is_file()

    data = tiny_synth_root
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(CHECKOUT)])}
    env["SEMCLIP_BENCH_CACHE"] = str(tmp_path / "cache")
    command = [sys.executable, "-m", "semclip_bench", "sweep", "--methods", "mean_patch"]
    command += ["--data", str(data), "--shots", "1", "--seeds", "0", "--out", str(tmp_path / "o")]
    command += ["--backbone", "semclip-tiny", "--device", "cpu", "--wandb", "disabled"]
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = (tmp_path / "o" / "sweep" / "episodes.csv").read_text().splitlines()
    assert len(rows) == 2 and "line_space/mean_patch/k1/s0" in rows[1]
    provenance = json.loads((tmp_path / "o" / "sweep" / "provenance.json").read_text())
    assert provenance["config"]["methods"] == ["mean_patch"]
