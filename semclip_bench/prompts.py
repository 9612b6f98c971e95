"""Prompt banks: composite text prompts per class, embedded into CLIP's joint space.

A prompt bank is a YAML file with two levels, as in SEM-CLIP's expert prompts:

.. code-block:: yaml

    templates:                 # template level; "{}" receives a state phrase
      - "A SEM image of {} on wafer surface."
    classes:                   # state level; class name -> phrases
      good: ["a defect-free pattern", "clean lines and spaces"]
      bridge: ["a bridge between adjacent lines"]

Every template x state combination of a class is encoded with ``backbone.encode_text`` (L2-
normalised), the embeddings are averaged per class and renormalised: one (embed_dim,) vector per
class. A class missing from ``classes`` falls back to its bare name (underscores as spaces), with
a warning, so a dataset with other defect types still runs. Optional keys: ``name`` and
``description`` (free text). Anything else, or a malformed entry, is a :class:`UserError` that
names the file.

Built-in banks live in ``configs/prompts/<name>.yaml``: ``expert`` (SEM-domain phrasings, the
method's default) and ``generic`` (WinCLIP-style "a photo of a {}" with bare class names, for the
prompt ablation). A user passes a path to use their own file, or overrides a bank by name with a
file of the same name in a config folder (lookup order in :mod:`semclip_bench.configs`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml
from torch import Tensor

from semclip_bench.errors import UserError

log = logging.getLogger(__name__)

#: Names of the banks shipped in ``configs/prompts``.
BUILTIN_BANKS: tuple[str, ...] = ("expert", "generic")

_ALLOWED_KEYS = {"name", "description", "templates", "classes"}


def prompt_dirs() -> list[Path]:
    """Where banks given by name are looked up, in order: ``prompts/`` of every folder of
    :func:`semclip_bench.configs.search_path` (``--config-dir``, ``$SEMCLIP_BENCH_CONFIGS``,
    ``./configs``, then the package's own)."""
    from semclip_bench.configs import search_path

    return [folder / "prompts" for folder in search_path() if (folder / "prompts").is_dir()]


def builtin_bank_path(name: str) -> Path:
    """Path of the bank ``name`` (first match in :func:`prompt_dirs`); UserError when absent."""
    from semclip_bench.configs import find_config

    path = find_config("prompts", name)
    if path is not None:
        return path
    raise UserError(
        f"prompt bank '{name}' not found in configs/prompts (option prompts; searched "
        f"{', '.join(str(d) for d in prompt_dirs())}): use one of "
        f"{', '.join(BUILTIN_BANKS)} or a path to a YAML file"
    )


@dataclass(frozen=True)
class PromptBank:
    """A parsed prompt bank; see the module docstring for the file format."""

    name: str
    templates: tuple[str, ...]
    states: dict[str, tuple[str, ...]] = field(default_factory=dict)
    source: Path | None = None

    def states_for(self, class_name: str) -> tuple[str, ...]:
        """State phrases of ``class_name``; its bare name when the bank does not list it."""
        if class_name in self.states:
            return self.states[class_name]
        return (class_name.replace("_", " ").strip() or class_name,)

    def prompts_for(self, class_name: str) -> list[str]:
        """All template x state prompts of ``class_name`` (template-major order)."""
        return [t.replace("{}", s) for t in self.templates for s in self.states_for(class_name)]

    def missing(self, class_names: Sequence[str]) -> list[str]:
        """Classes of ``class_names`` the bank does not list (they use their bare names)."""
        return [c for c in class_names if c not in self.states]


def _strings(value: object, where: str, path: Path) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if (
        not isinstance(value, list)
        or not value
        or not all(isinstance(v, str) and v.strip() for v in value)
    ):
        raise UserError(f"prompt bank {path}: '{where}' must be a non-empty list of strings")
    return tuple(v.strip() for v in value)


def parse_prompt_bank(data: object, path: Path, name: str | None = None) -> PromptBank:
    """Validate the YAML content ``data`` of ``path`` into a :class:`PromptBank`."""
    if not isinstance(data, dict):
        raise UserError(f"prompt bank {path}: expected a mapping with 'templates' and 'classes'")
    unknown = sorted(set(map(str, data)) - _ALLOWED_KEYS)
    if unknown:
        raise UserError(
            f"prompt bank {path}: unknown key(s) {', '.join(unknown)} "
            f"(allowed: {', '.join(sorted(_ALLOWED_KEYS))})"
        )
    if "templates" not in data:
        raise UserError(f"prompt bank {path}: missing 'templates'")
    templates = _strings(data["templates"], "templates", path)
    for i, template in enumerate(templates):
        if template.count("{}") != 1:
            raise UserError(
                f"prompt bank {path}: templates[{i}] {template!r} must contain exactly one '{{}}'"
            )
    classes = data.get("classes") or {}
    if not isinstance(classes, dict):
        raise UserError(f"prompt bank {path}: 'classes' must map class names to lists of phrases")
    states = {str(k): _strings(v, f"classes.{k}", path) for k, v in classes.items()}
    return PromptBank(
        name=str(data.get("name") or name or path.stem),
        templates=templates,
        states=states,
        source=path,
    )


def load_prompt_bank(spec: str | Path | PromptBank) -> PromptBank:
    """A bank from a built-in name ("expert", "generic") or a YAML file path.

    Raises UserError (naming the file) for a missing, unreadable or malformed file.
    """
    if isinstance(spec, PromptBank):
        return spec
    text = str(spec)
    is_path = isinstance(spec, Path) or text.endswith((".yaml", ".yml")) or "/" in text
    path = Path(text).expanduser() if is_path else builtin_bank_path(text)
    if not path.is_file():
        raise UserError(f"prompt bank file {path} not found (option prompts)")
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(f"prompt bank {path} cannot be read as YAML: {first}") from exc
    return parse_prompt_bank(data, path, name=None if is_path else text)


def group_sums(rows: Tensor, sizes: Sequence[int]) -> Tensor:
    """(G, D) sums of consecutive groups of ``rows`` ((sum(sizes), D)), each group added in row
    order: the same bits on every device and whatever torch's deterministic mode.

    ``index_add_`` gives these bits on the CPU, but on CUDA, outside deterministic mode, it adds
    with atomics in no fixed order: text embeddings computed before a process's first fit (which
    turns the mode on) would differ in the last bits from process to process, and so would every row
    of a method trained on them. Vectorised over groups and D; the loop is over the positions within
    a group (the prompts of one class: tens).
    """
    if not sizes or min(sizes) < 1 or sum(sizes) != rows.shape[0]:
        raise ValueError(f"group_sums: group sizes {list(sizes)} do not split {rows.shape[0]} rows")
    counts = torch.tensor(sizes, device=rows.device)
    starts = torch.cumsum(counts, 0) - counts
    position = torch.arange(max(sizes), device=rows.device)
    present = position[None, :] < counts[:, None]  # (G, longest)
    index = torch.where(present, starts[:, None] + position[None, :], 0)
    padded = rows[index] * present[..., None].to(rows.dtype)  # zeros past each group's end
    total = torch.zeros_like(padded[:, 0])
    for j in range(padded.shape[1]):  # in row order, as index_add_ adds on the CPU
        total = total + padded[:, j]
    return total


@torch.no_grad()
def embed_prompt_groups(backbone, groups: Sequence[Sequence[str]]) -> Tensor:
    """One text vector per group of prompts: (G, embed_dim), float32, L2-normalised.

    All prompts are encoded in one ``backbone.encode_text`` call (normalised), summed per group
    (:func:`group_sums`: the same bits on every run) and renormalised -- the CLIP prompt-ensemble
    recipe.
    """
    sizes = [len(g) for g in groups]
    if not groups or min(sizes) == 0:
        raise ValueError("embed_prompt_groups needs non-empty groups")
    texts = [t for g in groups for t in g]
    emb = F.normalize(backbone.encode_text(texts, normalize=True).float(), dim=-1)
    return F.normalize(group_sums(emb, sizes), dim=-1)


def class_text_embeddings(
    backbone, class_names: Sequence[str], prompts: str | Path | PromptBank = "expert"
) -> Tensor:
    """(C, embed_dim) normalised text embeddings of ``class_names`` from a prompt bank."""
    bank = load_prompt_bank(prompts)
    missing = bank.missing(class_names)
    if missing:
        log.warning(
            "prompt bank %s lists no phrases for %s: using the bare class name(s)",
            bank.source or bank.name,
            ", ".join(missing),
        )
    return embed_prompt_groups(backbone, [bank.prompts_for(c) for c in class_names])


__all__ = [
    "BUILTIN_BANKS",
    "PromptBank",
    "builtin_bank_path",
    "class_text_embeddings",
    "embed_prompt_groups",
    "group_sums",
    "load_prompt_bank",
    "parse_prompt_bank",
    "prompt_dirs",
]
