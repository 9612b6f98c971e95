"""Method and variant config files: names, ``base`` inheritance, overrides, errors, ablations."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from semclip_bench.cli import main
from semclip_bench.errors import UserError
from semclip_bench.models import METHODS
from semclip_bench.runner.plan import config as config_module
from semclip_bench.runner.plan.config import (
    ABLATIONS,
    DEFAULT_METHODS,
    RunConfig,
    ablation_variants,
    available_variants,
    load_variant,
    method_config,
    sweep_variants,
)
from semclip_bench.runner.record.row_store import read_rows


@pytest.fixture
def methods_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty configs/methods folder as the only config folder (the package's left out)."""
    import semclip_bench.configs as configs_module

    folder = tmp_path / "methods"
    folder.mkdir()
    monkeypatch.setattr(configs_module, "search_path", lambda: [tmp_path])
    monkeypatch.setattr(config_module, "search_path", lambda: [tmp_path])
    return folder


def _write(folder: Path, name: str, content: dict) -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(content))
    return path


# ------------------------------------------------------------------------------ shipped files
def test_every_shipped_config_loads_and_the_default_list_is_reference_plus_variants() -> None:
    names = available_variants()
    assert set(METHODS) <= set(names)
    for name in names:  # option names are checked against the constructors here
        variant = load_variant(name)
        assert variant.label == name and variant.method in METHODS
    assert set(DEFAULT_METHODS) <= set(names) and set(METHODS) <= set(DEFAULT_METHODS)
    assert RunConfig().methods == list(DEFAULT_METHODS)
    extra = [n for n in DEFAULT_METHODS if n not in METHODS]
    assert extra == ["semclip_plus"]


def test_trainable_methods_share_one_budget_rule() -> None:
    """SEM-CLIP and AnomalyCLIP-style: E epochs of the same mini-batch size, no step cap."""
    semclip, anomalyclip = load_variant("semclip").training, load_variant("anomalyclip").training
    for training in (semclip, anomalyclip):
        assert "max_steps" not in training
    assert semclip["epochs"] == anomalyclip["epochs"] > 0
    assert semclip["batch_size"] == anomalyclip["batch_size"]


# ------------------------------------------------------------------------------ mechanism
def test_base_inherits_and_overrides(methods_dir: Path) -> None:
    base = {"method": "semclip", "options": {"sigma": 4.0, "paths": "dual"}}
    _write(methods_dir, "semclip", {**base, "training": {"epochs": 5}})
    _write(methods_dir, "mine", {"base": "semclip", "options": {"sigma": 1.0}})
    variant = load_variant("mine")
    assert variant.label == "mine" and variant.method == "semclip"
    assert variant.options == {"sigma": 1.0, "paths": "dual"}
    assert variant.training == {"epochs": 5}
    # Overrides: the method's name applies to every variant of it, the variant's name last.
    overrides = {
        "semclip": {"options": {"paths": "vanilla"}, "training": {"epochs": 2}},
        "mine": {"options": {"sigma": 0.0}},
    }
    variant = load_variant("mine", overrides)
    assert variant.options == {"sigma": 0.0, "paths": "vanilla"}
    assert variant.training == {"epochs": 2}
    assert method_config("mine", {"options": {"sigma": 2.0}})[0]["sigma"] == 2.0


def test_registered_method_without_file_uses_constructor_defaults(methods_dir: Path) -> None:
    variant = load_variant("winclip")
    assert (variant.method, variant.options, variant.training) == ("winclip", {}, {})


@pytest.mark.parametrize(
    ("files", "name", "needle"),
    [
        ({"a": {"base": "b"}, "b": {"base": "a", "method": "semclip"}}, "a", "cycle"),
        ({"a": {"base": "a", "method": "semclip"}}, "a", "cycle"),
        ({"a": {"base": "nope", "method": "semclip"}}, "a", "unknown base 'nope'"),
        ({"a": {"method": "semclip", "colour": 1}}, "a", "unknown key(s) colour"),
        ({"a": {"method": "nosuch"}}, "a", "registered method"),
        ({"a": {"options": {"sigma": 1}}}, "a", "registered method"),
        ({"a": {"method": "semclip", "options": {"sigmaa": 1}}}, "a", "sigmaa"),
        ({"a": {"method": "semclip", "training": {"max_steps": 9}}}, "a", "max_steps"),
        ({"a": {"method": "semclip", "training": {"epochs": -1}}}, "a", "epochs"),
        ({"a": {"method": "semclip", "options": [1, 2]}}, "a", "'options' must be a mapping"),
        ({"winclip": {"method": "semclip"}}, "winclip", "must use method 'winclip'"),
        (
            {"a": {"base": "b", "method": "winclip"}, "b": {"method": "semclip"}},
            "a",
            "differs",
        ),
    ],
)
def test_bad_variant_files_are_user_errors_naming_the_file(
    methods_dir: Path, files: dict, name: str, needle: str
) -> None:
    for file_name, content in files.items():
        _write(methods_dir, file_name, content)
    with pytest.raises(UserError) as info:
        load_variant(name)
    message = str(info.value)
    assert needle in message and str(methods_dir) in message


def test_unknown_names_list_the_choices() -> None:
    with pytest.raises(UserError, match=r"unknown method or variant 'nosuch'.*semclip_plus"):
        sweep_variants(RunConfig(methods=["nosuch"]))
    with pytest.raises(UserError, match="method_overrides: unknown method or variant typo"):
        sweep_variants(RunConfig(methods=["winclip"], method_overrides={"typo": {}}))
    with pytest.raises(UserError, match=r"method_overrides\.winclip"):
        load_variant("winclip", {"winclip": {"option": {"sigma": 1}}})
    with pytest.raises(UserError, match=r"method_overrides\.winclip"):
        load_variant("winclip", {"winclip": {"options": [1]}})
    with pytest.raises(UserError, match=r"method_overrides\.semclip: unknown option"):
        load_variant("semclip_plus", {"semclip": {"options": {"nope": 1}}})


def test_sweep_variants_keep_order_and_drop_duplicates() -> None:
    variants = sweep_variants(RunConfig(methods=["winclip", "semclip_plus", "winclip"]))
    assert [(v.label, v.method) for v in variants] == [
        ("winclip", "winclip"),
        ("semclip_plus", "semclip"),
    ]


def test_ablations_apply_to_the_published_form() -> None:
    variants = ablation_variants(RunConfig(kind="ablation"))
    published = load_variant("semclip")
    assert variants[0] == published
    assert [v.label for v in variants[1:]] == [f"semclip-{name}" for name in ABLATIONS]
    for variant, name in zip(variants[1:], ABLATIONS, strict=True):
        assert variant.options == {**published.options, **ABLATIONS[name]}
        assert variant.options["text_centering"] is False
        assert variant.options["transform_init"] == "random"
        assert variant.training == published.training


# ------------------------------------------------------------------------------ end to end
def test_named_variants_run_and_are_labelled_by_name(
    tiny_data: Path, fast_config: Path, tmp_path: Path
) -> None:
    args = ["sweep", "--config", str(fast_config), "--data", str(tiny_data), "--out", str(tmp_path)]
    extra = ["--shots", "1", "--seeds", "0", "--methods", "winclip_projected,semclip_plus"]
    assert main(args + extra) == 0
    rows = read_rows([tmp_path / "sweep"])
    assert set(zip(rows["variant"], rows["method"], strict=True)) == {
        ("winclip_projected", "winclip"),
        ("semclip_plus", "semclip"),
    }
    assert set(rows["status"]) == {"ok"}
    assert "semclip_plus" in (tmp_path / "sweep.md").read_text()


def test_unknown_variant_on_the_command_line_is_one_line(
    tiny_data: Path, fast_config: Path, tmp_path: Path, capsys
) -> None:
    args = ["sweep", "--config", str(fast_config), "--data", str(tiny_data), "--out", str(tmp_path)]
    assert main([*args, "--methods", "semclip_pluss"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "semclip_pluss" in err[0] and "Traceback" not in err[0]


def test_fit_mode_is_checked_on_the_command_line_and_in_yaml(tmp_path: Path, capsys) -> None:
    from semclip_bench.runner.plan.config import merge_config

    assert merge_config(RunConfig(), {"fit-mode": "stacked"}, "x").fit_mode == "stacked"
    with pytest.raises(UserError, match=r"preset.yaml: bad value for 'fit_mode': 'fast'"):
        merge_config(RunConfig(), {"fit_mode": "fast"}, "preset.yaml")
    with pytest.raises(SystemExit):
        main(["sweep", "--fit-mode", "fast"])
    assert "argument --fit-mode: invalid choice: 'fast'" in capsys.readouterr().err
