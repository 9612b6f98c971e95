"""Run configuration: defaults < YAML file (``--config``) < command-line flags.

A run is a grid of episodes (category x shots x seed, see PROTOCOL.md) times a list of *variants*.
A variant is one registered method with fixed options and training settings, named by a config
file ``configs/methods/<name>.yaml`` (keys ``method``, ``base``, ``description``, ``options``,
``training``). ``<method>.yaml`` of a registered method is its reference form; other files are
named variants, e.g. ``semclip_plus.yaml`` with ``method: semclip`` (tables and W&B label a variant
by its file name). ``base: <name>`` inherits another file's options and training and overrides
some (chains are followed; a cycle or an unknown base is a UserError naming the file). The sweep
runs ``--methods`` (default :data:`DEFAULT_METHODS`); the ablation runs the published SEM-CLIP
with options switched off (:data:`ABLATIONS`).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from semclip_bench.configs import PACKAGE_CONFIG_DIR, check_config_dir, find_config, search_path
from semclip_bench.errors import UserError

#: The package's configs/ folder (method hyper-parameters, prompt banks); ships in the wheel.
#: Files are looked up with user folders first: see :mod:`semclip_bench.configs`.
CONFIG_DIR = PACKAGE_CONFIG_DIR

#: Values of ``--precision``.
PRECISIONS: tuple[str, ...] = ("auto", "fp32", "bf16")
#: --fit-mode values (see RunConfig.fit_mode).
FIT_MODES: tuple[str, ...] = ("auto", "stacked", "alone")

#: The sweep's default variants: the reference form of every method, plus the named project
#: variants reported next to them (``semclip_plus``: SEM-CLIP with this project's additions).
DEFAULT_METHODS: tuple[str, ...] = (
    "semclip",
    "semclip_plus",
    "winclip",
    "anomalyclip",
    "patchcore",
    "linear_probe",
)

#: Default output folder of ``sweep``/``ablate``/``report`` (git-ignored; see RunConfig.out).
DEFAULT_OUT = "runs"

#: Keys a method/variant config file may hold.
VARIANT_KEYS: tuple[str, ...] = ("method", "base", "description", "options", "training")


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
    #: K = 0 runs the zero-shot methods (others are skipped with the reason).
    shots: list[int] = field(default_factory=lambda: [0, 1, 5, 10, 20])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    #: Registered methods or named variants (configs/methods/<name>.yaml).
    methods: list[str] = field(default_factory=lambda: list(DEFAULT_METHODS))
    data: str = "sem-synth"
    categories: list[str] | None = None
    backbone: str | None = None  # None: the package's default backbone
    pretrained: str | None = None  # None: the default backbone's weights
    image_size: int | None = None
    device: str = "auto"
    #: Where a run writes (``<out>/<kind>/`` and ``<out>/<kind>.md``): the git-ignored ``runs/``
    #: by default, so a user's run never lands in, or resumes from, the committed ``results/``
    #: (committed tables are made with an explicit ``--out results...``).
    out: Path = Path(DEFAULT_OUT)
    wandb: str = "auto"  # auto | online | offline | disabled
    wandb_project: str = "semclip_bench"
    shard: tuple[int, int] = (0, 1)  # (i, n): this process runs episodes with index % n == i
    batch_size: int = 32
    #: Bootstrap resamples of the tables' intervals (0: none; metrics/bootstrap.py).
    bootstrap: int = 1000
    #: Inference precision of extract/predict (and of head training): "auto" = fp32 everywhere
    #: (bf16 misses the protocol's 0.5-point tolerance; see features.resolve_precision); "bf16"
    #: on CPU uses CPU autocast (slow on most CPUs; for checks only).
    precision: str = "auto"
    #: Processes (GPUs, or CPU processes) to spread the episodes over with Lightning's DDP launcher.
    devices: int = 1
    #: Processes per device (0 = auto: the measured default on CUDA, 1 on the CPU); the run has
    #: devices x procs_per_device processes, sharing each GPU between procs_per_device of them.
    procs_per_device: int = 0
    #: Reuse/write frozen features in the on-disk store under $SEMCLIP_BENCH_CACHE/features.
    feature_cache: bool = True
    #: How trained heads are fitted: "stacked" = the episodes of one (variant, K) with equal
    #: support sizes (every seed and category) as one module when the method allows it
    #: (models/stacked.py); "alone" = one episode at a time; "auto" = stacked on CUDA, where it
    #: saves kernel launches, alone on the CPU, where it does not pay (engine.fit_stacked).
    fit_mode: str = "auto"
    ablations: list[str] = field(
        default_factory=lambda: ["generic_prompts", "single_path", "no_text_guidance", "all"]
    )
    #: K of the map pictures (maps/<category>.png; runner/record/maps.py); None: the largest K of
    #: the run.
    maps_shots: int | None = None
    #: Overrides over the config files, {name: {options:, training:}}: a method's name applies to
    #: every variant of that method, a variant's name (applied after it) to that variant only.
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
        if name == "maps_shots":
            if value is None:
                return None
            if int(value) < 0:
                raise ValueError("must be >= 0")
            return int(value)
        if name == "bootstrap":
            number = int(value)
            if number < 0:
                raise ValueError("bootstrap must be >= 0 (0 disables the intervals)")
            return number
        if name == "precision":
            if str(value) not in PRECISIONS:
                raise ValueError(f"choose from {', '.join(PRECISIONS)}")
            return str(value)
        if name == "fit_mode":
            if str(value) not in FIT_MODES:
                raise ValueError(f"choose from {', '.join(FIT_MODES)}")
            return str(value)
        if name == "feature_cache":
            if not isinstance(value, bool):
                raise ValueError("expected true or false")
            return value
        if name == "devices":
            number = int(value)
            if number < 1:
                raise ValueError("devices must be >= 1")
            return number
        if name == "procs_per_device":
            number = int(value)
            if number < 0:
                raise ValueError("procs-per-device must be >= 0 (0 = auto)")
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


def methods_dir() -> Path:
    """The package's folder of method and variant config files (the last of the lookup order)."""
    return CONFIG_DIR / "methods"


def available_variants() -> list[str]:
    """Registered methods and every variant file in the lookup order, sorted (for messages)."""
    from semclip_bench.models import METHODS

    files = {p.stem for folder in search_path() for p in (folder / "methods").glob("*.yaml")}
    return sorted(set(METHODS) | files)


def _read_variant_file(name: str) -> tuple[Path, dict[str, Any]] | None:
    """(path, content) of ``methods/<name>.yaml``, the first found in the config lookup order
    (:mod:`semclip_bench.configs`); None when there is no such file."""
    if "/" in name or "\\" in name:
        return None
    path = find_config("methods", name)
    if path is None:
        return None
    content = read_yaml(path, option=f"method config '{name}'")
    unknown = sorted(set(map(str, content)) - set(VARIANT_KEYS))
    if unknown:
        raise UserError(
            f"{path}: unknown key(s) {', '.join(unknown)} (allowed: {', '.join(VARIANT_KEYS)})"
        )
    for key in ("options", "training"):
        if not isinstance(content.get(key) or {}, dict):
            raise UserError(f"{path}: '{key}' must be a mapping of option names to values")
    for key in ("method", "base"):
        if content.get(key) is not None and not isinstance(content[key], str):
            raise UserError(f"{path}: '{key}' must be a name, got {content[key]!r}")
    return path, content


def load_variant(
    name: str, overrides: dict[str, Any] | None = None, option: str = "--methods"
) -> Variant:
    """The variant ``name``: configs/methods/<name>.yaml (after its ``base`` chain) + overrides.

    The one resolution of a method name for ``--methods`` and the Python API's ``load_method``
    (``option`` names the caller in the error for an unknown name, which lists every accepted
    name: registered methods, plugins and variant files).

    A registered method without a file has empty options (its constructor defaults).
    ``overrides`` is RunConfig.method_overrides: ``overrides[method]`` then ``overrides[name]``.
    Option and training keys are checked against the method's constructor and
    :class:`~semclip_bench.models.lightning.TrainingConfig`; any problem is a UserError naming the
    file (or ``method_overrides``), raised before any episode runs.
    """
    from semclip_bench.models import METHODS

    found = _read_variant_file(name)
    if found is None:
        if name not in METHODS:
            raise UserError(
                f"{option}: unknown method or variant '{name}' (no methods/{name}.yaml in "
                f"{', '.join(map(str, search_path()))}); "
                f"choose from {', '.join(available_variants())}"
            )
        layers: list[tuple[Path, dict[str, Any]]] = []
    else:
        layers = [found]
        while layers[-1][1].get("base") is not None:
            path, content = layers[-1]
            base = content["base"]
            if base in {p.stem for p, _ in layers}:
                chain = " -> ".join([*(p.stem for p, _ in layers), base])
                raise UserError(f"{path}: base '{base}' makes a cycle ({chain})")
            parent = _read_variant_file(base)
            if parent is None:
                raise UserError(
                    f"{path}: unknown base '{base}' (no methods/{base}.yaml in the config folders)"
                )
            layers.append(parent)
    method = name if not layers else None
    for path, content in layers:  # the variant's own file first, then its bases
        declared = content.get("method")
        if declared is not None and method is not None and declared != method:
            raise UserError(
                f"{path}: method '{declared}' differs from '{method}' of the file that uses it as "
                "a base"
            )
        method = method or declared
    if method is None:
        method = name if name in METHODS else None
    where = layers[0][0] if layers else name
    if method not in METHODS:
        raise UserError(
            f"{where}: 'method' must name a registered method ({', '.join(METHODS)}), "
            f"got {method!r}"
        )
    if name in METHODS and method != name:
        raise UserError(f"{where}: the reference config of '{name}' must use method '{name}'")
    options: dict[str, Any] = {}
    training: dict[str, Any] = {}
    sources: list[tuple[str, dict[str, Any], dict[str, Any]]] = []
    for path, content in reversed(layers):  # bases first, the variant's own file last
        sources.append((str(path), dict(content.get("options") or {}), content.get("training")))
    overrides = overrides or {}
    for key in dict.fromkeys((method, name)):
        extra = overrides.get(key) or {}
        if (
            not isinstance(extra, dict)
            or not set(extra) <= {"options", "training"}
            or not all(isinstance(v or {}, dict) for v in extra.values())
        ):
            raise UserError(
                f"method_overrides.{key}: expected a mapping with 'options' and/or 'training' "
                "mappings"
            )
        sources.append((f"method_overrides.{key}", dict(extra.get("options") or {}),
                        extra.get("training")))  # fmt: skip
    for source, opts, train in sources:
        _check_options(method, opts, source)
        _check_training_keys(train or {}, source)
        options.update(opts)
        training.update(train or {})
    _check_training_values(training, str(where))
    return Variant(name, method, options, training)


def _check_options(method: str, options: dict[str, Any], source: str) -> None:
    """Every key of ``options`` must be a keyword of the method's constructor."""
    import inspect

    from semclip_bench.models import method_class

    params = inspect.signature(method_class(method).__init__).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    allowed = {
        k
        for k, p in params.items()
        if k not in {"self", "backbone", "class_names"}
        and p.kind in (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    }
    unknown = sorted(set(map(str, options)) - allowed)
    if unknown:
        raise UserError(
            f"{source}: unknown option(s) {', '.join(unknown)} for method {method} "
            f"(allowed: {', '.join(sorted(allowed))})"
        )


def _check_training_keys(training: dict[str, Any], source: str) -> None:
    """Every key of a ``training`` section must be a field of TrainingConfig."""
    from semclip_bench.models.lightning import TrainingConfig

    allowed = {f.name for f in fields(TrainingConfig)}
    unknown = sorted(set(map(str, training)) - allowed)
    if unknown:
        raise UserError(
            f"{source}: unknown training key(s) {', '.join(unknown)} "
            f"(allowed: {', '.join(sorted(allowed))}; the budget rule has no step cap)"
        )


def _check_training_values(training: dict[str, Any], where: str) -> None:
    """The merged ``training`` section must build a TrainingConfig."""
    from semclip_bench.models.lightning import TrainingConfig

    try:
        TrainingConfig(**training)
    except UserError as exc:
        raise UserError(f"{where}: {exc}") from None


def method_config(method: str, overrides: dict[str, Any] | None = None) -> tuple[dict, dict]:
    """(options, training) of the method or named variant ``method`` (see :func:`load_variant`).

    ``overrides``: ``{options:, training:}`` applied last (the shape of one method_overrides entry).
    """
    variant = load_variant(method, {method: overrides} if overrides else None)
    return dict(variant.options), dict(variant.training)


#: What each SEM-CLIP ablation switches off (constructor options of SemClip), applied to the
#: published form (configs/methods/semclip.yaml): the paper's three ablations and all three.
ABLATIONS: dict[str, dict[str, Any]] = {
    "generic_prompts": {"prompts": "generic"},
    "single_path": {"paths": "vanilla"},
    "no_text_guidance": {"text_guidance": False},
    "all": {"prompts": "generic", "paths": "vanilla", "text_guidance": False},
}


def sweep_variants(config: RunConfig) -> list[Variant]:
    """One variant per requested name (registered method or config file), in the given order."""
    _check_override_names(config)
    return [load_variant(name, config.method_overrides) for name in dict.fromkeys(config.methods)]


def ablation_variants(config: RunConfig) -> list[Variant]:
    """Published SEM-CLIP plus each requested ablation (options merged over the full model's)."""
    _check_override_names(config)
    full = load_variant("semclip", config.method_overrides)
    variants = [full]
    for name in config.ablations:
        if name not in ABLATIONS:
            raise UserError(
                f"--ablations: unknown ablation '{name}'; choose from {', '.join(ABLATIONS)}"
            )
        options = {**full.options, **ABLATIONS[name]}
        variants.append(Variant(f"semclip-{name}", "semclip", options, full.training))
    return variants


def _check_override_names(config: RunConfig) -> None:
    """method_overrides may only name registered methods or config files (typos fail early)."""
    known = set(available_variants())
    unknown = sorted(set(config.method_overrides) - known)
    if unknown:
        raise UserError(
            f"method_overrides: unknown method or variant {', '.join(unknown)}; "
            f"choose from {', '.join(sorted(known))}"
        )
