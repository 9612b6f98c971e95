"""Config lookup order, and a bad setting failing before the first episode."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from semclip_bench.cli import main
from semclip_bench.configs import (
    CONFIGS_ENV,
    PACKAGE_CONFIG_DIR,
    find_config,
    search_path,
    use_config_dir,
)
from semclip_bench.errors import UserError
from semclip_bench.prompts import builtin_bank_path
from semclip_bench.runner.plan.config import RunConfig, merge_config, method_config


def _config_dir(root: Path, semclip_options: dict | None = None, bank: str | None = None) -> Path:
    """A config folder with methods/semclip.yaml (package file + options) and/or a prompt bank."""
    root.mkdir(parents=True, exist_ok=True)
    if semclip_options is not None:
        shipped = yaml.safe_load((PACKAGE_CONFIG_DIR / "methods" / "semclip.yaml").read_text())
        shipped["options"].update(semclip_options)
        (root / "methods").mkdir()
        (root / "methods" / "semclip.yaml").write_text(yaml.safe_dump(shipped))
    if bank is not None:
        (root / "prompts").mkdir()
        (root / "prompts" / f"{bank}.yaml").write_text(
            yaml.safe_dump({"templates": ["an image of {}."], "classes": {"good": ["clean"]}})
        )
    return root


def test_lookup_order_config_dir_env_cwd_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(CONFIGS_ENV, raising=False)
    assert find_config("methods", "semclip") == PACKAGE_CONFIG_DIR / "methods" / "semclip.yaml"
    assert search_path() == [PACKAGE_CONFIG_DIR]

    cwd = _config_dir(tmp_path / "configs", {"temperature": 0.03})
    assert find_config("methods", "semclip") == cwd / "methods" / "semclip.yaml"
    env = _config_dir(tmp_path / "env", {"temperature": 0.02}, bank="expert")
    monkeypatch.setenv(CONFIGS_ENV, f"{tmp_path / 'missing'}:{env}")
    assert find_config("methods", "semclip") == env / "methods" / "semclip.yaml"
    assert builtin_bank_path("expert") == env / "prompts" / "expert.yaml"
    # Files not overridden still come from the package.
    assert builtin_bank_path("generic") == PACKAGE_CONFIG_DIR / "prompts" / "generic.yaml"
    explicit = _config_dir(tmp_path / "explicit", {"temperature": 0.01})
    with use_config_dir(explicit):
        assert method_config("semclip")[0]["temperature"] == 0.01
        assert builtin_bank_path("expert") == env / "prompts" / "expert.yaml"
    assert method_config("semclip")[0]["temperature"] == 0.02
    assert search_path() == [env.resolve(), cwd.resolve(), PACKAGE_CONFIG_DIR]


def test_config_dir_option_is_checked(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"--config-dir: folder not found: .*nope"):
        merge_config(RunConfig(), {"config_dir": str(tmp_path / "nope")}, "command line")
    with pytest.raises(UserError, match="neither a methods/ nor a prompts/ subfolder"):
        merge_config(RunConfig(), {"config_dir": str(tmp_path)}, "command line")


def _sweep(data: Path, config: Path, out: Path, *extra: str) -> int:
    args = ["sweep", "--config", str(config), "--data", str(data), "--out", str(out)]
    return main([*args, "--shots", "1", "--seeds", "0", *extra])


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"prompts": "no_such_bank"}, r"method 'semclip': prompt bank 'no_such_bank' not found"),
        ({"temprature": 0.1}, r"semclip.yaml: unknown option\(s\) temprature for method semclip"),
        ({"sigma": -1}, r"method 'semclip': semclip option sigma must be >= 0"),
    ],
)
def test_bad_method_setting_fails_before_the_first_episode(
    tiny_data: Path,
    fast_config: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
    options: dict,
    message: str,
) -> None:
    folder = _config_dir(tmp_path / "cfg", options)
    # patchcore comes first in the loop: it must not run before semclip's setting fails.
    code = _sweep(
        tiny_data, fast_config, tmp_path / "out", "--methods", "patchcore,semclip",
        "--config-dir", str(folder),
    )  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err
    assert err.count("error: ") == 1
    assert re.search(message, err), err
    assert not list((tmp_path / "out").rglob("episodes.csv")), "no episode may have run"


def test_unknown_training_setting_fails_fast(
    tiny_data: Path, fast_config: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    config = yaml.safe_load(fast_config.read_text())
    config["method_overrides"]["semclip"]["training"]["epoch"] = 3
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(config))
    assert _sweep(tiny_data, path, tmp_path / "out", "--methods", "patchcore,semclip") == 2
    err = capsys.readouterr().err
    assert "method_overrides.semclip: unknown training key(s) epoch" in err
    assert not list((tmp_path / "out").rglob("episodes.csv"))


def test_config_dir_override_is_used_by_the_run(
    tiny_data: Path, fast_config: Path, tmp_path: Path
) -> None:
    bank = tmp_path / "cfg"
    _config_dir(bank, {"prompts": "mine"}, bank="mine")
    out = tmp_path / "out"
    # The bank 'mine' exists only in the config folder: the run fails unless the folder is used.
    assert (
        _sweep(tiny_data, fast_config, out, "--methods", "semclip", "--config-dir", str(bank)) == 0
    )
    provenance = yaml.safe_load((out / "sweep" / "provenance.json").read_text())
    assert provenance["config"]["config_dir"] == str(bank.resolve())


class _Counts:
    """A dataset stand-in: categories with a number of normal training images each."""

    name = "counts"

    def __init__(self, normal: dict[str, int]) -> None:
        self.normal = normal

    def categories(self) -> list[str]:
        return list(self.normal)

    def select(self, category: str, split: str, label: str) -> list[int]:
        return list(range(self.normal[category]))


def test_categories_default_to_all_and_an_unknown_one_is_named() -> None:
    from semclip_bench.runner.plan.validate import run_categories

    data = _Counts({"a": 3, "b": 5})
    assert run_categories(None, data) == ["a", "b"] and run_categories(["b"], data) == ["b"]
    with pytest.raises(UserError, match="unknown category 'c'"):
        run_categories(["a", "c"], data)


def test_a_shot_count_no_category_serves_is_an_option_error() -> None:
    from semclip_bench.runner.plan.validate import check_shots

    data = _Counts({"a": 3, "b": 5})
    check_shots([0, 5], data, ["a", "b"])  # b serves K = 5
    with pytest.raises(UserError, match="--shots: 5 shots is more than the data allows"):
        check_shots([5], data, ["a"])
