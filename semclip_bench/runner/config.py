"""Run configuration: defaults < YAML file (``--config``) < command-line flags.

A run is a grid of episodes (category x shots x seed, see PROTOCOL.md) times a list of *variants*.
A variant is one method with its options: the sweep runs each method with its own config from
``configs/methods/<method>.yaml``; the ablation runs SEM-CLIP with options switched off.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from semclip_bench.configs import PACKAGE_CONFIG_DIR, check_config_dir, find_config
from semclip_bench.errors import UserError

#: The package's configs/ folder (method hyper-parameters, prompt banks); ships in the wheel.
#: Files are looked up with user folders first: see :mod:`semclip_bench.configs`.
CONFIG_DIR = PACKAGE_CONFIG_DIR

#: Values of ``--precision``.
PRECISIONS: tuple[str, ...] = ("auto", "fp32", "bf16")

ALL_METHODS: tuple[str, ...] = ("semclip", "winclip", "anomalyclip", "patchcore", "linear_probe")


@dataclass(frozen=True)
class Variant:
    """One method with fixed options; ``label`` names it in tables (``semclip-single_path``)."""

    label: str
    method: str
    options: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)


@dataclass
class RunConfig:
    """Everything a sweep or an ablation needs; field names match the CLI flags."""

    kind: str = "sweep"  # "sweep" or "ablation": names the output files
    shots: list[int] = field(default_factory=lambda: [1, 5, 10, 20])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    methods: list[str] = field(default_factory=lambda: list(ALL_METHODS))
    data: str = "sem-synth"
    categories: list[str] | None = None
    backbone: str | None = None  # None: the package's default backbone
    pretrained: str | None = None  # None: the default backbone's weights
    image_size: int | None = None
    device: str = "auto"
    out: Path = Path("results")
    wandb: str = "auto"  # auto | online | offline | disabled
    wandb_project: str = "semclip_bench"
    shard: tuple[int, int] = (0, 1)  # (i, n): this process runs episodes with index % n == i
    batch_size: int = 32
    #: Inference precision of extract/predict (and of head training): "auto" = bf16 on CUDA,
    #: fp32 on CPU; "bf16" on CPU uses CPU autocast (slow on most CPUs; for checks only).
    precision: str = "auto"
    #: Processes (GPUs, or CPU processes) to spread the episodes over with Lightning's DDP launcher.
    devices: int = 1
    ablations: list[str] = field(
        default_factory=lambda: ["generic_prompts", "single_path", "no_text_guidance", "all"]
    )
    #: Per-method overrides over configs/methods/<method>.yaml: {method: {options:, training:}}
    method_overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: Folder searched first for methods/<method>.yaml and prompts/<bank>.yaml (then
    #: $SEMCLIP_BENCH_CONFIGS, ./configs, the package's): see semclip_bench.configs.
    config_dir: Path | None = None

    @classmethod
    def field_names(cls) -> set[str]:
        return {f.name for f in fields(cls)}


def read_yaml(path: Path, option: str = "--config") -> dict[str, Any]:
    """Read a YAML mapping; a missing or unreadable file is a one-line UserError."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{option}: file not found: {path}")
    try:
        content = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(f"{option}: cannot parse YAML file {path}: {first}") from None
    if content is None:
        return {}
    if not isinstance(content, dict):
        raise UserError(f"{option}: {path} must hold a mapping of option names to values")
    return content


def merge_config(base: RunConfig, updates: dict[str, Any], source: str) -> RunConfig:
    """A copy of ``base`` with ``updates`` applied; unknown keys raise a UserError naming it."""
    config = copy.deepcopy(base)
    for key, value in updates.items():
        name = key.replace("-", "_")
        if name == "methods_config":  # alias used in YAML presets
            name = "method_overrides"
        if name not in RunConfig.field_names():
            raise UserError(f"{source}: unknown option '{key}'")
        setattr(config, name, _coerce(name, value, source))
    return config


def _coerce(name: str, value: Any, source: str) -> Any:
    """Convert YAML / CLI values to the field's type with a clear error."""
    try:
        if name in {"shots", "seeds"}:
            return parse_int_list(value)
        if name in {"methods", "categories", "ablations"}:
            if value is None:
                return None
            items = value.split(",") if isinstance(value, str) else list(value)
            return [str(v).strip() for v in items if str(v).strip()]
        if name == "out":
            return Path(value)
        if name == "config_dir":
            option = "--config-dir" if source == "command line" else f"{source}: 'config_dir'"
            return check_config_dir(value, option)
        if name == "shard":
            return parse_shard(value)
        if name in {"image_size", "batch_size"}:
            return None if value is None else int(value)
        if name == "precision":
            if str(value) not in PRECISIONS:
                raise ValueError(f"choose from {', '.join(PRECISIONS)}")
            return str(value)
        if name == "devices":
            number = int(value)
            if number < 1:
                raise ValueError("devices must be >= 1")
            return number
        return value
    except (TypeError, ValueError) as exc:
        option = f"--{name.replace('_', '-')}" if source == "command line" else f"'{name}'"
        raise UserError(f"{source}: bad value for {option}: {value!r} ({exc})") from None


def parse_int_list(value: Any) -> list[int]:
    """``"1,5,10"`` or ``[1, 5, 10]`` -> ``[1, 5, 10]`` (non-negative, unique, order kept)."""
    items = value.split(",") if isinstance(value, str) else list(value)
    out: list[int] = []
    for item in items:
        text = str(item).strip()
        if not text:
            continue
        number = int(text)
        if number < 0:
            raise ValueError("values must be >= 0")
        if number not in out:
            out.append(number)
    if not out:
        raise ValueError("empty list")
    return out


def parse_shard(value: Any) -> tuple[int, int]:
    """``"i/n"`` -> (i, n) with 0 <= i < n."""
    if isinstance(value, (list, tuple)) and len(value) == 2:
        i, n = int(value[0]), int(value[1])
    else:
        parts = str(value).split("/")
        if len(parts) != 2:
            raise ValueError("expected i/n, e.g. 0/4")
        i, n = int(parts[0]), int(parts[1])
    if n < 1 or not 0 <= i < n:
        raise ValueError("expected 0 <= i < n")
    return i, n


def method_config(method: str, overrides: dict[str, Any] | None = None) -> tuple[dict, dict]:
    """(options, training) of a method from ``methods/<method>.yaml`` plus overrides.

    The file is the first found in the config lookup order (:mod:`semclip_bench.configs`); a
    method without a file (e.g. a plugin) runs with its constructor's defaults.
    """
    path = find_config("methods", method)
    content = read_yaml(path, option=f"method config of '{method}'") if path is not None else {}
    options = dict(content.get("options") or {})
    training = dict(content.get("training") or {})
    overrides = overrides or {}
    options.update(overrides.get("options") or {})
    training.update(overrides.get("training") or {})
    return options, training


#: What each SEM-CLIP ablation switches off (constructor options of SemClip).
ABLATIONS: dict[str, dict[str, Any]] = {
    "generic_prompts": {"prompts": "generic"},
    "single_path": {"paths": "vanilla"},
    "no_text_guidance": {"text_guidance": False},
    "all": {"prompts": "generic", "paths": "vanilla", "text_guidance": False},
}


def sweep_variants(config: RunConfig) -> list[Variant]:
    """One variant per requested method, with its configured options."""
    from semclip_bench.models import METHODS

    variants = []
    for method in config.methods:
        if method not in METHODS:
            raise UserError(
                f"--methods: unknown method '{method}'; choose from {', '.join(METHODS)}"
            )
        options, training = method_config(method, config.method_overrides.get(method))
        variants.append(Variant(method, method, options, training))
    return variants


def ablation_variants(config: RunConfig) -> list[Variant]:
    """SEM-CLIP full plus each requested ablation (its options merged over the full model's)."""
    options, training = method_config("semclip", config.method_overrides.get("semclip"))
    variants = [Variant("semclip", "semclip", options, training)]
    for name in config.ablations:
        if name not in ABLATIONS:
            raise UserError(
                f"--ablations: unknown ablation '{name}'; choose from {', '.join(ABLATIONS)}"
            )
        variants.append(
            Variant(f"semclip-{name}", "semclip", {**options, **ABLATIONS[name]}, training)
        )
    return variants
