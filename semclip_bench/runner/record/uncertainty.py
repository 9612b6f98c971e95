"""Intervals and paired comparisons of a report, from the episodes' stored per-image statistics.

For every finished episode with a ``scores/<episode>.npz`` (``runner/record/row_store.py``),
each metric gets R bootstrap replicates (``metrics/bootstrap.py``): images resampled by label,
with the weights of its category (the same for every method, K and seed: paired). A table cell, a
mean over seeds and categories, gets replicates by the hierarchical resample: each replicate draws
the seeds with replacement (the same draw for every cell), and within them the images. Pixel
replicates are shifted by (exact - binned) of their episode, so the interval sits around the exact
point.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from semclip_bench.data.labels import NORMAL_LABEL
from semclip_bench.metrics.bootstrap import (
    EpisodeScores,
    chance_classification,
    classification_replicates,
    defect_type_predictions,
    hierarchical,
    image_replicates,
    image_weights,
    per_type_replicates,
    percentile_interval,
    pixel_replicates,
    seed_weights,
)
from semclip_bench.metrics.classification import type_scores
from semclip_bench.runner.record.row_store import scores_path

#: Pixel metrics: replicates from binned histograms, shifted to the exact point.
PIXEL = ("pAUROC", "pF1max", "AUPRO")
#: Prefix of the chance-level replicates of an episode's query (constant score / map).
CHANCE = "chance:"


@dataclass
class Replicates:
    """Replicates per (category, variant, shots, seed) episode and metric, and what lacks them."""

    resamples: int
    values: dict[tuple, dict[str, np.ndarray]] = field(default_factory=dict)
    #: Point values of the metrics no row column holds (chance rows of the pixel metrics).
    points: dict[tuple, dict[str, float]] = field(default_factory=dict)
    missing: set[tuple[str, int]] = field(default_factory=set)  # (variant, shots)
    #: Defect-type (true, predicted) ids over the union of type names, per episode.
    types: dict[tuple, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    type_names: list[str] = field(default_factory=list)
    _seed_weights_made: dict[int, np.ndarray] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def has(self, variant: str, shots: int) -> bool:
        return self.resamples > 0 and (variant, shots) not in self.missing

    def cell(
        self,
        frame: pd.DataFrame,
        metric: str,
        seeds: Sequence[int] | None = None,
    ) -> np.ndarray | None:
        """Replicates of the table's value of ``metric`` over the rows of ``frame`` (one variant
        and K): mean over categories of the seed-resampled means; None when any episode lacks
        them."""
        if self.resamples == 0 or frame.empty:
            return None
        episodes = _episodes(frame)
        seeds = sorted(int(s) for s in dict.fromkeys(episodes.seeds)) if seeds is None else seeds
        weights = self._seed_weights(len(seeds))
        per_category = []
        for category, first in episodes.first.items():
            series = []
            for seed in seeds:
                key = first.get(seed)
                if key is None:
                    return None
                values = self.values.get((category, key[0], key[1], seed), {}).get(metric)
                if values is None:
                    return None
                series.append(values)
            per_category.append(hierarchical(series, weights))
        return np.mean(per_category, axis=0)

    def _seed_weights(self, n_seeds: int) -> np.ndarray:
        """:func:`seed_weights` of ``n_seeds`` (the same draw for every cell), made once."""
        if n_seeds not in self._seed_weights_made:
            self._seed_weights_made[n_seeds] = seed_weights(n_seeds, self.resamples)
        return self._seed_weights_made[n_seeds]

    def point(self, frame: pd.DataFrame, metric: str) -> float:
        """Mean over categories of the seed means of a stored point value (NaN if missing)."""
        means = [
            np.mean([self.points.get(key, {}).get(metric, math.nan) for key in keys])
            for keys in _episodes(frame).keys.values()
        ]
        return float(np.mean(means)) if means else math.nan


@dataclass
class _Episodes:
    """The episode keys of a frame's rows by category (sorted, as ``groupby`` orders them), in
    row order (``keys``), and the (variant, shots) of the first row of each seed (``first``)."""

    seeds: list
    keys: dict[str, list[tuple]]
    first: dict[str, dict[int, tuple[str, int]]]


def _episodes(frame: pd.DataFrame) -> _Episodes:
    """One pass over the four key columns of ``frame`` as Python lists: no boolean masks."""
    categories = frame["category"].tolist()
    variants = frame["variant"].tolist()
    shots = frame["shots"].tolist()
    seeds = frame["seed"].tolist()
    keys: dict[str, list[tuple]] = {c: [] for c in sorted(set(categories))}
    first: dict[str, dict[int, tuple[str, int]]] = {c: {} for c in keys}
    for category, variant, k, seed in zip(categories, variants, shots, seeds, strict=True):
        keys[category].append((category, variant, int(k), int(seed)))
        first[category].setdefault(seed, (variant, int(k)))
    return _Episodes(seeds, keys, first)


def _key(row) -> tuple:
    return (row["category"], row["variant"], int(row["shots"]), int(row["seed"]))


def episode_replicates(ok: pd.DataFrame, resamples: int) -> Replicates:
    """Replicates of every episode of ``ok`` with stored statistics (``resamples`` 0: none)."""
    result = Replicates(resamples)
    if resamples <= 0:
        return result
    paths: dict[tuple, Path] = {}
    names = set()
    for _, row in ok.iterrows():
        path = scores_path(Path(row["source"]), row["episode_id"])
        if not path.exists():
            result.missing.add((row["variant"], int(row["shots"])))
            continue
        paths[_key(row)] = path
        with np.load(path, allow_pickle=False) as data:  # lazy: reads these two arrays only
            if "class_logits" in data.files:
                names.update(str(c) for c in data["class_names"] if c != NORMAL_LABEL)
    result.type_names = sorted(names)
    weights_cache: dict[tuple, np.ndarray] = {}
    exact = {_key(r): r for _, r in ok.iterrows()}
    for key, path in paths.items():  # one episode's statistics in memory at a time
        stats = EpisodeScores.load(path)
        category = key[0]
        label_key = (category, stats.label.tobytes())
        if label_key not in weights_cache:
            weights_cache[label_key] = image_weights(stats.label, resamples, category)
        weights = weights_cache[label_key]
        unit = np.vstack([np.ones((1, stats.label.size)), weights])  # row 0: the point
        labels = stats.label.astype(np.int64)
        values = dict(image_replicates(stats.image_score, labels, weights))
        for name, reps in per_type_replicates(
            stats.image_score, stats.types, labels, weights
        ).items():
            values[f"iAUROC/{name}"] = reps
        fraction = labels.mean()
        values[CHANCE + "iAUROC"] = np.full(resamples, 0.5)
        values[CHANCE + "iAP"] = np.full(resamples, fraction)
        values[CHANCE + "iF1max"] = np.full(resamples, 2 * fraction / (1 + fraction))
        row = exact[key]
        if stats.has_pixels:
            binned = pixel_replicates(stats, unit)
            for metric in PIXEL:
                point = float(row[metric])
                if math.isfinite(point):
                    values[metric] = binned[metric][1:] + (point - binned[metric][0])
            for metric, reps in pixel_replicates(stats, unit, one_bin=True).items():
                values[CHANCE + metric] = reps[1:]
                result.points.setdefault(key, {})[CHANCE + metric] = float(reps[0])
        if stats.class_logits is not None:
            _classification(result, key, stats, weights, values)
        result.values[key] = values
    return result


def _classification(
    result: Replicates, key: tuple, stats: EpisodeScores, weights: np.ndarray, values: dict
) -> None:
    """Defect-type replicates (defect query images only) and their chance rows, in place."""
    target, pred, names = defect_type_predictions(stats)
    defect = stats.label == 1
    if target.size == 0 or (target < 0).any():
        return
    n_classes = len(names)
    sub = weights[:, defect]
    unit = np.vstack([np.ones((1, target.size)), sub])
    points = result.points.setdefault(key, {})
    for metric, array in classification_replicates(target, pred, n_classes, sub).items():
        if metric in {"type_accuracy", "type_f1"}:
            values[metric] = array
    # The N-way decision (normal + types) on every query image, as the rows' cls_* columns.
    index = {name: i for i, name in enumerate(stats.class_names)}
    every = np.array([index.get(t, -1) for t in stats.types])
    if (every >= 0).all():
        guess = np.asarray(stats.class_logits).argmax(axis=1)
        n_way = classification_replicates(every, guess, len(index), weights)
        for metric, array in n_way.items():
            values["cls_" + metric.split("_", 1)[1]] = array
    exact = type_scores(pred, target, n_classes)  # torchmetrics: the point estimates
    points["type_accuracy"], points["type_f1"] = exact["accuracy"], exact["f1"]
    for name, reps in chance_classification(target, n_classes, unit).items():
        for metric, array in reps.items():
            values[f"{CHANCE}{name}:{metric}"] = array[1:]
            points[f"{CHANCE}{name}:{metric}"] = float(array[0])
    lookup = {n: result.type_names.index(n) for n in names}
    global_ids = np.array([lookup[n] for n in names])
    result.types[key] = (global_ids[target], global_ids[pred])


def interval_text(mean: float, replicates: np.ndarray | None, scale: float = 100.0) -> str:
    """'mean [low, high]' in percent (the mean is the exact point estimate); the mean alone
    without replicates."""
    if replicates is None:
        return f"{mean:.1f}"
    low, high = percentile_interval(replicates)
    if math.isnan(low):
        return f"{mean:.1f} [n/a]"
    return f"{mean:.1f} [{low * scale:.1f}, {high * scale:.1f}]"


@dataclass
class Comparison:
    """The best row of a column against one other row: paired difference and its interval."""

    difference: float
    low: float
    high: float
    share_ahead: float  # share of resamples in which the best is ahead

    @property
    def separated(self) -> bool:
        return self.low > 0


def compare(best: np.ndarray, other: np.ndarray) -> Comparison:
    """Paired comparison of two cells' replicates (same resamples), in percent points."""
    diff = (best - other) * 100
    low, high = percentile_interval(diff)
    finite = diff[np.isfinite(diff)]
    ahead = float((finite > 0).mean()) if finite.size else math.nan
    return Comparison(float(np.nanmean(diff)), low, high, ahead)
