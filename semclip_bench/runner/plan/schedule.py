"""Which process runs which episode: estimated costs and a claim board shared by the ranks.

The ranks of a ``--devices N`` run (several processes, see ``engine._launch``) pull units from
one list ordered longest estimated first (:func:`by_estimated_cost`), and each unit is run by
whichever rank claims it first (:class:`ClaimBoard`): the greedy "longest job first" rule keeps the
ranks within about one episode of each other whatever the methods cost, where a fixed round-robin
split can give one rank every episode of the costliest variant. Which rank runs a unit never
changes its row: an episode's features do not depend on the process (fixed extraction batches,
``runner/execute/features.py``) and its training is seeded by the episode alone.

Work items: the episodes of one (variant, K) whose method allows stacked fits
(``models/stacked.py``) and whose support sets have the same size (the same number of defect
types) form one item, every seed of every category, trained as one stacked module and claimed as
one, up to :data:`STACK_SUPPORT_BYTES` of support features per item (a larger group is split, in
run order); every other unit is an item of its own (:func:`work_items`). An item always trains
all its members, also when only some of their rows are still to be written (resume, ``verify``),
so an episode's numbers never depend on which of its group's rows were already on disk.

``--shard i/n`` (job arrays) keeps its static rule, ``index % n == i`` over the work items, so the
shards of an array are fixed before any job starts.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from collections.abc import Callable, Collection, Hashable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from semclip_bench.models.base import FewShotMethod
from semclip_bench.models.lightning import TrainingConfig
from semclip_bench.runner.plan.units import Unit

#: Relative cost of an episode whose method does not train (memory banks, zero-shot prompts):
#: one prediction over the query set, next to one optimiser step of a trained head.
UNTRAINED_COST = 1.0
#: Support features (bytes, all members together) that one stacked fit may hold. A group larger
#: than this is split into consecutive stacks (:func:`work_items`), decided by the backbone's
#: feature size and K alone, never by the machine or the process count, so the stacks, and with
#: them the rows, are the same wherever the run goes. The compact default backbone's largest
#: group (SEM-CLIP, K = 20, 9 episodes: 1.9 GB) stays one stack; on ViT-B-16-plus-240 one
#: SEM-CLIP K = 20 support holds 0.9 GB, and nine of them stacked, with their training
#: intermediates, do not fit eight processes sharing one H200.
STACK_SUPPORT_BYTES = 2 * 2**30

_Item = TypeVar("_Item")


def support_images(shots: int, n_defect_types: int, method_cls: type[FewShotMethod]) -> int:
    """Images in an episode's support set: K normal, plus K per defect type for methods that
    train on defects."""
    return shots * (1 + n_defect_types if method_cls.draws_defects() else 1)


def members_per_stack(support_bytes: int, budget: int = STACK_SUPPORT_BYTES) -> int:
    """Most episodes of ``support_bytes`` support features each that one stack may hold (>= 1)."""
    return max(1, budget // max(1, int(support_bytes)))


def unit_cost(
    shots: int, n_defect_types: int, variant: Any, method_cls: type[FewShotMethod]
) -> float:
    """Estimated cost of one episode: optimiser steps of its fit (+ one unit of prediction).

    Steps follow the budget rule of ``TrainingConfig``: ``epochs`` passes over the support set
    in batches of ``batch_size`` (full batch when None), at least ``min_steps``; the support set
    has K normal images, plus K per defect type for methods that train on defects.
    """
    if not method_cls.trains_at(shots):
        return UNTRAINED_COST
    support = support_images(shots, n_defect_types, method_cls)
    training = TrainingConfig(**(variant.training or {}))
    return UNTRAINED_COST + training.epochs_for(support) * training.steps_per_epoch(support)


def by_estimated_cost(items: Sequence[_Item], costs: Sequence[float]) -> list[_Item]:
    """``items`` longest estimated first; ties keep the run order (stable)."""
    order = sorted(range(len(items)), key=lambda i: -costs[i])
    return [items[i] for i in order]


@dataclass(frozen=True)
class WorkItem:
    """Units fitted as one (one unit, or a stacked group's episodes), and the rows to write."""

    #: Claim id: the first member's episode id (unique: a unit is in exactly one item).
    key: str
    #: Every unit the item trains, in run order.
    units: tuple[Unit, ...]
    #: Episode ids of the members whose rows this run writes (the others are trained only).
    writes: frozenset[str] = frozenset()


def work_items(
    units: Sequence[Unit],
    group: Callable[[Unit], Hashable | None] | None = None,
    limit: Callable[[Hashable], int] | None = None,
) -> list[WorkItem]:
    """Group ``units`` into work items: units with the same ``group(unit)`` key form one item,
    at the position of its first member; a unit whose key is None (every unit, without
    ``group``) is an item of its own.
    ``limit(key)`` caps the members of one item: a larger group becomes consecutive items of at
    most that many (in run order). ``writes`` is every member (narrow it with
    ``dataclasses.replace``)."""
    groups: dict[Hashable, list[Unit]] = {}
    for unit in units:
        key = None if group is None else group(unit)
        groups.setdefault(("alone", unit.id) if key is None else ("group", key), []).append(unit)
    items = []
    for (kind, key), members in groups.items():
        size = len(members) if kind == "alone" or limit is None else max(1, int(limit(key)))
        for begin in range(0, len(members), size):
            part = members[begin : begin + size]
            items.append(WorkItem(part[0].id, tuple(part), frozenset(u.id for u in part)))
    return items


def stack_group(
    classes: dict[str, type[FewShotMethod]], n_defect_types: Callable[[str], int]
) -> Callable[[Unit], tuple | None]:
    """``group`` of :func:`work_items` for a stacked run: the episodes of one (variant, K,
    support size) of a method that trains together form one stack; the others train alone."""

    def group(unit: Unit) -> tuple | None:
        if not (classes[unit.variant.method].trains_stacked and unit.shots > 0):
            return None
        return (unit.variant.label, unit.shots, n_defect_types(unit.category))

    return group


def shard_items(items: Sequence[WorkItem], shard: tuple[int, int]) -> list[WorkItem]:
    """The items of ``--shard s/n``: those whose index ``i`` satisfies ``i % n == s``."""
    index, count = shard
    return [item for i, item in enumerate(items) if i % count == index]


def left_to_write(
    items: Sequence[WorkItem], done: Collection[str], select: Collection[str] | None = None
) -> list[WorkItem]:
    """What a (resumed) run still has to do: the items with rows not ``done`` (and among
    ``select`` when given), each narrowed to those rows; its other members still train with it."""
    wanted = None if select is None else set(select)
    todo = []
    for item in items:
        writes = {i for i in item.writes if i not in done and (wanted is None or i in wanted)}
        if writes:
            todo.append(dataclasses.replace(item, writes=frozenset(writes)))
    return todo


def item_cost(
    item: WorkItem,
    n_defect_types: Callable[[str], int],
    classes: dict[str, type[FewShotMethod]],
) -> float:
    """Estimated cost of a work item: the sum of its units' (:func:`unit_cost`)."""
    return sum(
        unit_cost(u.shots, n_defect_types(u.category), u.variant, classes[u.variant.method])
        for u in item.units
    )


class ClaimBoard:
    """First-come claims on unit ids, shared by the processes of one run through the file system.

    A claim is a file created with ``O_CREAT | O_EXCL`` (atomic on local and network file systems
    alike), so exactly one process wins each unit. ``token`` names this invocation (rank 0 picks
    it, every rank receives it): claims of an interrupted earlier invocation are ignored, and the
    finished rows, not the claims, decide what a resumed run still has to do.
    """

    def __init__(self, folder: Path, token: str) -> None:
        self.root = Path(folder) / ".claims"
        self.folder = self.root / token
        self.folder.mkdir(parents=True, exist_ok=True)

    def claim(self, unit_id: str) -> bool:
        """True for the one process that claims ``unit_id`` first."""
        path = self.folder / unit_id.replace("/", "__")
        try:
            os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
        except FileExistsError:
            return False
        return True

    def remove(self) -> None:
        """Delete every invocation's claims (rank 0, once all ranks are done)."""
        shutil.rmtree(self.root, ignore_errors=True)
