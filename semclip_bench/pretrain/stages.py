"""Stages of a multi-stage pretraining: ``--init`` loading, what a stage trained on and from
(recorded in ``pretrain_summary.json`` under "stage"), the earlier stage's summary and a compact
loss curve that travels with it."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from semclip_bench.errors import UserError
from semclip_bench.pretrain.export import sha256_file

if TYPE_CHECKING:
    from semclip_bench.pretrain.train import PretrainOptions

#: ``--data`` value of the formula-driven supervised stage.
FORMULA_DATA = "formula"


def load_init(model: torch.nn.Module, path: str | Path, arch: str) -> None:
    """Load a checkpoint file of an earlier stage into ``model`` strictly (same keys, same
    shapes); one-line UserError naming ``--init`` and the file otherwise."""
    from semclip_bench.backbones.loading import read_state_dict, state_dict_mismatch

    try:
        state = read_state_dict(str(path))
    except UserError as exc:
        raise UserError(f"option --init: {exc}") from exc
    mismatch = state_dict_mismatch(model.state_dict(), state)
    if mismatch:
        raise UserError(
            f"option --init: checkpoint {path} does not match --arch {arch}: {mismatch}"
        )
    model.load_state_dict(state, strict=True)


def previous_stage(init: str | Path, sha256: str) -> dict[str, Any] | None:
    """The summary of the run that wrote ``init`` (``pretrain_summary.json`` next to it, if its
    sha256 is the file's), else None."""
    path = Path(init).with_name("pretrain_summary.json")
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(summary, dict) or summary.get("sha256") != sha256:
        return None
    return summary


def stage_record(opts: PretrainOptions) -> dict[str, Any]:
    """What this stage trained on and from: data, objective, formula config and digest, init."""
    if opts.data == FORMULA_DATA:
        objective = "formula classification (cross-entropy, linear head on the image embedding)"
    elif opts.formula_weight > 0:
        objective = f"contrastive (ClipLoss) + {opts.formula_weight:g} x formula classification"
    else:
        objective = "contrastive (ClipLoss)"
    record: dict[str, Any] = {
        "data": opts.data if opts.data in ("sem-synth", FORMULA_DATA) else "captions-csv",
        "objective": objective,
    }
    if opts.uses_formula:
        from semclip_bench.pretrain.formula import formula_digest

        config = opts.formula_config()
        record["formula"] = {
            "config": config.to_dict(),
            "digest": formula_digest(config),
            "label_smoothing": opts.smoothing(),
            "weight": opts.formula_weight if opts.data != FORMULA_DATA else 1.0,
        }
    if opts.init is not None:
        record["init"] = {"file": str(opts.init), "sha256": sha256_file(opts.init)}
    return record


def curve_digest(history: list[tuple[int, float]], points: int = 100) -> list[list[float]]:
    """The loss curve in at most ``points`` (last step, mean loss) bins (kept in the summary, so
    a later stage's summary carries it along)."""
    if not history:
        return []
    size = max(1, math.ceil(len(history) / points))
    out = []
    for k in range(0, len(history), size):
        chunk = history[k : k + size]
        out.append([int(chunk[-1][0]), round(sum(v for _, v in chunk) / len(chunk), 5)])
    return out


__all__ = ["FORMULA_DATA", "curve_digest", "load_init", "previous_stage", "stage_record"]
