"""Fail fast: every variant of a run is built once before the first episode starts.

A bad option, an unknown training setting, a missing prompt bank or weights file, or a broken
plugin then stops the run within seconds of its start, with one line naming the variant and the
cause, instead of after the episodes of the methods that come before it in the loop.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import fields

import torch

from semclip_bench.data.labels import NORMAL_LABEL
from semclip_bench.errors import UserError
from semclip_bench.models.base import FewShotMethod
from semclip_bench.runner.plan.config import Variant

log = logging.getLogger(__name__)


def validate_variants(
    variants: Sequence[Variant],
    classes: dict[str, type[FewShotMethod]],
    backbone,
    class_names: Sequence[str],
) -> dict[str, FewShotMethod]:
    """Build each variant's method on ``backbone`` with ``class_names`` and check its training
    settings; raise one UserError naming the variant on the first failure. Returns the built
    methods by variant label (the runner measures the stacked ones' features with them).

    Construction is all it does (no extraction, no training), so it costs well under a second per
    method even for large backbones. The global RNG state is restored afterwards, so validation
    does not change any result.
    """
    from semclip_bench.models.lightning import TrainingConfig

    start = time.perf_counter()
    known = {f.name for f in fields(TrainingConfig)}
    built: dict[str, FewShotMethod] = {}
    rng = torch.random.get_rng_state()
    try:
        for variant in variants:
            where = f"method '{variant.label}'"
            unknown = sorted(set(variant.training) - known)
            if unknown:
                raise UserError(
                    f"{where}: unknown training setting(s) {', '.join(unknown)} "
                    f"(in methods/{variant.method}.yaml or method_overrides; known: "
                    f"{', '.join(sorted(known))})"
                )
            try:
                method = classes[variant.method](backbone, tuple(class_names), **variant.options)
            except UserError as exc:
                raise UserError(f"{where}: {exc}") from exc
            except TypeError as exc:  # most often an option the constructor does not take
                raise UserError(
                    f"{where}: bad options {sorted(variant.options)} (in "
                    f"methods/{variant.method}.yaml or method_overrides): {exc}"
                ) from exc
            except Exception as exc:  # anything else: still one line naming the variant
                raise UserError(
                    f"{where} cannot be built with its options: {type(exc).__name__}: {exc}"
                ) from exc
            built[variant.label] = method
    finally:
        torch.random.set_rng_state(rng)
    log.info(
        "checked %d method variant(s) in %.1fs: %s",
        len(variants),
        time.perf_counter() - start,
        ", ".join(v.label for v in variants),
    )
    return built


def probe_class_names(dataset, categories: Sequence[str]) -> tuple[str, ...]:
    """Class names of the first category with defect types (methods need at least one)."""
    from semclip_bench.data.types import NORMAL_LABEL

    for category in categories:
        types = dataset.defect_types(category)
        if types:
            return (NORMAL_LABEL, *types)
    return (NORMAL_LABEL, "defect")


def run_categories(requested: Sequence[str] | None, dataset) -> list[str]:
    """The categories a run covers: ``--categories`` (each one checked), else all of them."""
    available = dataset.categories()
    if not requested:
        return available
    unknown = [c for c in requested if c not in available]
    if unknown:
        raise UserError(
            f"--categories: unknown category '{unknown[0]}' in {dataset.name}; "
            f"available: {', '.join(available)}"
        )
    return list(requested)


def check_shots(shots_list: Sequence[int], dataset, categories: Sequence[str]) -> None:
    """A shot count that no category can serve is an option error, not a table of skips."""
    for shots in shots_list:
        fits = False
        for category in categories:
            normal = len(dataset.select(category=category, split="train", label=NORMAL_LABEL))
            if normal >= shots:
                fits = True
                break
        if not fits:
            most = max(
                len(dataset.select(category=c, split="train", label=NORMAL_LABEL))
                for c in categories
            )
            raise UserError(
                f"--shots: {shots} shots is more than the data allows "
                f"(at most {most} normal training images per category in {dataset.name})"
            )


__all__ = ["check_shots", "probe_class_names", "run_categories", "validate_variants"]
