"""The run presets in the repository's top-level ``configs/``: the make targets call them, each one
resolves to exactly the run configuration of the command line it replaces (and of the committed
tables' provenance), and the ``./configs`` lookup of method and prompt overrides never reads them.

Configurations are compared as resolved by the CLI (``execute`` is replaced by a recorder), as
provenance.json records them; nothing here runs a sweep.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest

import semclip_bench
from semclip_bench.cli import main
from semclip_bench.configs import (
    CONFIGS_ENV,
    PACKAGE_CONFIG_DIR,
    check_config_dir,
    find_config,
    search_path,
    use_config_dir,
)
from semclip_bench.errors import UserError
from semclip_bench.runner import commands
from semclip_bench.runner.plan.config import RunConfig, available_variants

REPO = Path(semclip_bench.__file__).resolve().parents[1]
PRESETS = REPO / "configs"

#: What each make target ran before the presets, in order: the presets must give the same runs.
COMMAND_LINES_BEFORE_PRESETS: dict[str, list[str]] = {
    "sweep": ["sweep --shots 0,1,5,10,20"],
    "results": ["sweep --shots 0,1,5,10,20 --wandb disabled --out results"],
    "gpu-results": [
        "sweep --shots 0,1,5,10,20 --wandb disabled --out results/gpu",
        "ablate --wandb disabled --out results/gpu",
        "sweep --shots 0,1,5,10,20 --pretrained none --wandb disabled --out results/gpu/control",
    ],
    "ablate": ["ablate"],
    "elpv-sweep": ["sweep --data elpv --shots 0,1,5,10,20 --out results/elpv"],
    "controls": [
        "sweep --shots 0,1,5,10,20 --pretrained none --out results/control",
        "sweep --data elpv --shots 0,1,5,10,20 --pretrained none --out results/elpv/control",
    ],
}


@pytest.fixture
def at_repo_root(monkeypatch: pytest.MonkeyPatch) -> Path:
    """The repository root as the working directory (relative preset paths resolve from it),
    with no user config folders from the environment."""
    monkeypatch.chdir(REPO)
    monkeypatch.delenv(CONFIGS_ENV, raising=False)
    return REPO


def resolve(command: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """The run config of ``python -m semclip_bench <command>`` as provenance.json records it."""
    seen: list[RunConfig] = []
    monkeypatch.setattr(commands, "execute", lambda config, *args, **kwargs: seen.append(config))
    assert main(shlex.split(command)) == 0
    (config,) = seen
    return json.loads(json.dumps(asdict(config), default=str))


def make_recipes() -> dict[str, list[str]]:
    """The ``python -m semclip_bench`` command lines of each Makefile target, in order (the
    ``tune`` loop expanded over ``STUDIES``)."""
    text = (REPO / "Makefile").read_text().replace("\\\n", " ")
    studies = re.search(r"^STUDIES := (.*)$", text, re.MULTILINE).group(1).split()
    recipes: dict[str, list[str]] = {}
    target = None
    for line in text.splitlines():
        match = re.match(r"^([a-z][\w-]*):(?!=)", line)
        if match:
            target = match.group(1)
            recipes[target] = []
        elif line.startswith("\t") and target is not None:
            for part in re.split(r"&&|\|\||;", line):
                found = re.search(r"-m semclip_bench (.*)", part)
                if found is None:
                    continue
                command = found.group(1).strip()
                if "$$s" in command:
                    recipes[target] += [command.replace("$$s", s) for s in studies]
                else:
                    recipes[target].append(command)
        elif not line.startswith("\t"):
            target = None
    return recipes


def test_the_make_targets_call_the_presets() -> None:
    recipes = make_recipes()
    for target in [*COMMAND_LINES_BEFORE_PRESETS, "tune"]:
        runs = [c for c in recipes[target] if c.split()[0] in {"sweep", "ablate"}]
        assert runs, target
        for command in runs:
            preset = re.search(r"--config (configs/\S+\.yaml)", command)
            assert preset, f"make {target}: {command} names no preset"
            assert (REPO / preset.group(1)).is_file(), command


@pytest.mark.parametrize("target", sorted(COMMAND_LINES_BEFORE_PRESETS))
def test_a_preset_gives_the_run_of_the_command_line_it_replaces(
    target: str, at_repo_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = [resolve(c, monkeypatch) for c in make_recipes()[target]]
    before = [resolve(c, monkeypatch) for c in COMMAND_LINES_BEFORE_PRESETS[target]]
    assert now == before


def test_the_default_sweep_preset_gives_the_committed_table_s_config(
    at_repo_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    record = json.loads((REPO / "results" / "sweep" / "provenance.json").read_text())
    (command,) = make_recipes()["results"]
    assert command == "sweep --config configs/sweep.yaml"
    recorded, now = dict(record["config"]), resolve(command, monkeypatch)
    # Where the rows were written is not a setting of the table: a regeneration may write them
    # elsewhere (benchmarks.sweep_bench, --out) and copy them in.
    recorded.pop("out"), now.pop("out")
    assert now == recorded


#: Per study, committed variant name -> its candidate file now.
RENAMED = {
    "budget3_floor": {
        "semclip": "semclip_s0",
        "semclip_plus": "semclip_plus_s0",
        "anomalyclip": "anomalyclip_s0",
    }
}


def test_the_tuning_presets_give_the_committed_studies_configs(
    at_repo_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every committed study under results/tuning has its preset in `make tune`, and the preset,
    with the recorded command's other flags, resolves to the recorded settings; the candidate
    variants come from configs/tuning/methods/ (the files moved there unchanged)."""
    committed = sorted(p.parent for p in (REPO / "results" / "tuning").glob("*/sweep"))
    tuned = {c.split()[2]: c for c in make_recipes()["tune"] if c.startswith("sweep --config")}
    assert {f"configs/tuning/studies/{p.name}.yaml" for p in committed} == set(tuned)
    for folder in committed:
        provenance = folder / "sweep" / "provenance.json"
        if not provenance.exists():  # a multi-process run: one record per rank
            provenance = folder / "sweep" / "rank0" / "provenance.json"
        record = json.loads(provenance.read_text())
        command = record["command"].removeprefix("python -m semclip_bench ")
        command = command.replace("benchmarks/tuning/studies/", "configs/tuning/studies/")
        assert f"--config configs/tuning/studies/{folder.name}.yaml" in command
        now = resolve(command, monkeypatch)
        recorded = record["config"]
        assert Path(recorded["config_dir"]).parts[-2:] == ("benchmarks", "tuning")
        assert now["config_dir"] == str(REPO / "configs" / "tuning")
        # Variants renamed after the study ran, when their reference form changed (the rows keep
        # the old name): configs/tuning/studies/<study>.yaml says so.
        renamed = RENAMED.get(folder.name, {})
        recorded["methods"] = [renamed.get(m, m) for m in recorded["methods"]]
        recorded.pop("out", None), now.pop("out", None)  # the study's rows went elsewhere
        shared = (set(now) & set(recorded)) - {"config_dir", "device"}
        assert {k: now[k] for k in shared} == {k: recorded[k] for k in shared}, folder.name
        with use_config_dir(now["config_dir"]):
            for name in now["methods"]:
                path = find_config("methods", name)
                assert path is not None and path.parent.parent in {
                    REPO / "configs" / "tuning",
                    PACKAGE_CONFIG_DIR,
                }, name


def _presets() -> list[Path]:
    """Every --config file in configs/ (not the tuning studies' candidate variants)."""
    variants = PRESETS / "tuning" / "methods"
    return sorted(p for p in PRESETS.rglob("*.yaml") if variants not in p.parents)


@pytest.mark.parametrize("preset", _presets(), ids=lambda p: str(p.relative_to(PRESETS)))
def test_every_preset_resolves_with_its_variants(
    preset: Path, at_repo_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    command = "ablate" if "ablation" in preset.stem else "sweep"
    config = resolve(f"{command} --config {preset.relative_to(REPO)}", monkeypatch)
    assert config["kind"] == ("ablation" if command == "ablate" else "sweep")
    with use_config_dir(config["config_dir"]):
        merged = RunConfig(**{**config, "out": Path(config["out"]), "config_dir": None})
        assert commands.variants_of(merged)


def test_method_lookup_from_the_repository_root_never_reads_a_preset(at_repo_root: Path) -> None:
    """The repository's configs/ (presets, studies) is no override folder: from the repository
    root, every method file and prompt bank comes from the package, and the tuning candidates are
    no variants of a plain run."""
    assert search_path() == [PACKAGE_CONFIG_DIR]
    for kind in ("methods", "prompts"):
        assert not (PRESETS / kind).exists(), f"configs/{kind}/ would override the package's"
        for shipped in (PACKAGE_CONFIG_DIR / kind).glob("*.yaml"):
            assert find_config(kind, shipped.stem) == shipped
    for preset in _presets():
        assert find_config("methods", preset.stem) in {None, PACKAGE_CONFIG_DIR / "methods" /
                                                       f"{preset.stem}.yaml"}  # fmt: skip
    candidates = {p.stem for p in (PRESETS / "tuning" / "methods").glob("*.yaml")}
    assert candidates and not candidates & set(available_variants())
    with pytest.raises(UserError, match="neither a methods/ nor a prompts/ subfolder"):
        check_config_dir("configs")
    assert check_config_dir("configs/tuning") == PRESETS / "tuning"


def test_a_working_directory_configs_folder_counts_only_with_methods_or_prompts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(CONFIGS_ENV, raising=False)
    (tmp_path / "configs" / "gpu").mkdir(parents=True)
    (tmp_path / "configs" / "sweep.yaml").write_text("shots: [1]\n")
    (tmp_path / "configs" / "gpu" / "sweep.yaml").write_text("shots: [1]\n")
    assert search_path() == [PACKAGE_CONFIG_DIR]
    (tmp_path / "configs" / "methods").mkdir()
    assert search_path() == [(tmp_path / "configs").resolve(), PACKAGE_CONFIG_DIR]
