"""The units of a run: one episode (category, K, seed) of one variant, and how they are named.

The plan makes every :class:`Unit` once, in run order (:func:`plan_units`); the schedule groups
them into work items and the execution and the rows take them as they are. The spelling of K
(``k5``) in episode ids, support keys, W&B names and map files lives here alone
(:func:`shots_tag`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from semclip_bench.runner.plan.config import Variant


def shots_tag(shots: int | str) -> str:
    """K as episode ids, support keys, W&B runs and map files spell it: ``k5`` (``"*"``: the
    glob of any K)."""
    return f"k{shots}"


def episode_id(category: str, variant: str, shots: int, seed: int) -> str:
    """The id of one episode of one variant, the key of its row: ``category/variant/k5/s0``."""
    return f"{category}/{variant}/{shots_tag(shots)}/s{seed}"


@dataclass(frozen=True)
class Unit:
    """One episode (``category``, ``shots``, ``seed``) of one ``variant``: one row of the run."""

    category: str
    variant: Variant
    shots: int
    seed: int

    @property
    def id(self) -> str:
        """The episode id of the unit's row (:func:`episode_id`)."""
        return episode_id(self.category, self.variant.label, self.shots, self.seed)

    @property
    def episode_key(self) -> tuple[str, int, int]:
        """(category, shots, seed): the episode, shared by every variant."""
        return (self.category, self.shots, self.seed)

    @property
    def support_key(self) -> str:
        """The key of the episode's support files in ``supports.jsonl``: ``category/k5/s0``."""
        return f"{self.category}/{shots_tag(self.shots)}/s{self.seed}"


def plan_units(
    categories: Sequence[str],
    shots: Sequence[int],
    seeds: Sequence[int],
    variants: Sequence[Variant],
) -> list[Unit]:
    """Every unit of a run in run order: by category, then K, then seed, then variant."""
    return [
        Unit(category, variant, k, seed)
        for category in categories
        for k in shots
        for seed in seeds
        for variant in variants
    ]


class EpisodeBook:
    """The episodes of a run, each formed once (``make_episode``) and shared by every variant,
    by the up-front feature pass and the episode loop alike."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset
        self._episodes: dict[tuple[str, int, int], Any] = {}

    def __call__(self, unit: Unit) -> Any:
        """The episode of ``unit`` (:attr:`Unit.episode_key`)."""
        from semclip_bench.data.episodes import make_episode

        key = unit.episode_key
        if key not in self._episodes:
            self._episodes[key] = make_episode(self.dataset, *key)
        return self._episodes[key]
