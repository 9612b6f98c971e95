"""Bootstrap over query images: per-image sufficient statistics, resample weights, replicates.

Why: the seed std of a table says nothing about how the numbers would move on another query set of
the same size. Here a replicate resamples whole query images (stratified by label: as many normal
and as many defect images as the query has), and every metric is recomputed from per-image
statistics kept next to the rows:

- image metrics (iAUROC, iAP, iF1-max, per-type iAUROC): from the image scores, exactly;
- pixel metrics: from per-image histograms of the pixel scores on fixed bins (edges: quantiles of
  the episode's pooled pixel scores), normal pixels per image and defect pixels per connected
  defect region. Summing the histograms of a resample's images (with multiplicity) gives its
  pAUROC (ties within a bin count one half), pF1-max (thresholds at the bin edges) and AUPRO (PRO
  and FPR at the bin edges, regions weighted by their image's multiplicity). The binned value
  differs from the exact one by at most :func:`auroc_binning_bound` for pAUROC; tests measure the
  others. Tables keep the exact point estimate and shift the interval by (exact - binned);
- classification (defect query images only): from the class logits.

A resample is a row of a weight matrix (R, n): how often each image is drawn. Every replicate is a
vectorised function of such a matrix, so 1,000 replicates cost a few matrix products. The weights
of a category depend only on a fixed protocol seed, the category name and the query labels, never
on the method: every method of a category sees the same resamples (paired comparisons).
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from semclip_bench.data.labels import NORMAL_LABEL

__all__ = [
    "BOOTSTRAP_SEED",
    "DEFAULT_BINS",
    "DEFAULT_RESAMPLES",
    "EpisodeScores",
    "auroc_binning_bound",
    "classification_replicates",
    "delong_test",
    "image_replicates",
    "image_weights",
    "percentile_interval",
    "pixel_replicates",
    "pixel_statistics",
    "seed_weights",
]

#: Fixed protocol seed of the resamples (with the category name): never the episode's seed.
BOOTSTRAP_SEED = 20240
#: Replicates of a table's intervals unless ``--bootstrap N`` says otherwise.
DEFAULT_RESAMPLES = 1000
#: Histogram bins of the pixel scores per episode.
DEFAULT_BINS = 128


@dataclass
class EpisodeScores:
    """Per-image statistics of one episode's query predictions (the ``scores/*.npz`` sidecar).

    ``normal_hist`` (n, B): normal-pixel counts of each image per bin; ``region_hist`` (K, B):
    pixel counts of each defect region per bin, ``region_image`` (K,) the image of each region.
    The pixel fields are None for a method without maps or a query without masks.
    """

    image_score: np.ndarray  # (n,) float64
    label: np.ndarray  # (n,) int8, 1 = defect
    types: np.ndarray  # (n,) str, the normal name for normal images
    class_names: list[str] = field(default_factory=list)
    class_logits: np.ndarray | None = None  # (n, C) float32
    edges: np.ndarray | None = None  # (B + 1,) float64
    normal_hist: np.ndarray | None = None  # (n, B) uint32
    region_hist: np.ndarray | None = None  # (K, B) uint32
    region_image: np.ndarray | None = None  # (K,) int32

    @property
    def has_pixels(self) -> bool:
        return self.normal_hist is not None and self.region_hist is not None

    def save(self, path: Path) -> None:
        """Write the statistics as one compressed ``.npz`` (written whole, then renamed)."""
        arrays: dict[str, Any] = dict(
            image_score=self.image_score,
            label=self.label,
            types=np.asarray(self.types, dtype=str),
            class_names=np.asarray(self.class_names, dtype=str),
        )
        for name in ("class_logits", "edges", "normal_hist", "region_hist", "region_image"):
            value = getattr(self, name)
            if value is not None and name.endswith("_hist") and value.size and value.max() < 65536:
                value = value.astype(np.uint16)  # counts of one image's pixels: half the bytes
            if value is not None:
                arrays[name] = value
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(path.name + ".part")
        with temporary.open("wb") as handle:
            np.savez_compressed(handle, **arrays)
        temporary.replace(path)

    @classmethod
    def load(cls, path: Path) -> EpisodeScores:
        with np.load(path, allow_pickle=False) as data:
            get = {k: data[k] for k in data.files}
        return cls(
            image_score=get["image_score"].astype(np.float64),
            label=get["label"].astype(np.int8),
            types=get["types"].astype(str),
            class_names=[str(x) for x in get.get("class_names", np.zeros(0, dtype=str))],
            class_logits=get.get("class_logits"),
            edges=get.get("edges"),
            normal_hist=_counts_array(get.get("normal_hist")),
            region_hist=_counts_array(get.get("region_hist")),
            region_image=get.get("region_image"),
        )


def _counts_array(value: np.ndarray | None) -> np.ndarray | None:
    """Stored histogram counts (uint16 where they fit) as uint32, as they were computed."""
    return None if value is None else value.astype(np.uint32)


def _quantiles(values: Any, count: int) -> Any:
    """``count + 1`` evenly spaced order statistics (float64) of at most ~1M evenly strided
    ``values``: each is one of the float32 scores."""
    import torch

    stride = max(1, values.numel() // (1 << 20))
    sample = values[::stride].double().sort().values
    levels = torch.linspace(0, 1, count + 1, dtype=torch.float64, device=sample.device)
    return sample[(levels * (sample.numel() - 1)).round().long()]


def pixel_statistics(
    maps: Any, truth: Any, bins: int = DEFAULT_BINS
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Bin edges, per-image normal-pixel histograms, per-region histograms and region images.

    ``maps``: (n, H, W) numpy array or tensor (a CUDA tensor is binned on its GPU);
    ``truth``: the query's :class:`~semclip_bench.metrics.pixel.PixelTruth` with regions. Edges
    are quantiles of the pooled scores for half the bins and of the defect pixels' scores for
    the other half (from at most ~1M evenly strided pixels each), plus the min and max. A pixel
    is in bin b when edges[b] <= s < edges[b+1] (the last bin also holds the max), so
    "score >= edges[b]" is "bin >= b".
    """
    import torch

    flat = (
        maps.reshape(-1)
        if isinstance(maps, torch.Tensor)
        else torch.from_numpy(np.ascontiguousarray(maps).reshape(-1))
    )
    flat = flat.float()
    defect = torch.from_numpy(np.asarray(truth.defect, dtype=bool)).to(flat.device)
    defect_scores = flat[defect]
    # Half the edges follow the pooled scores, half the defect pixels' scores: defect pixels are
    # a few percent of all, and pF1-max and AUPRO are decided in their score range.
    pooled_bins = bins if defect_scores.numel() == 0 else bins - bins // 2
    parts = [_quantiles(flat, pooled_bins)]
    if defect_scores.numel():
        parts.append(_quantiles(defect_scores, bins // 2))
    edges = torch.cat(parts)
    edges[0] = flat.min().double()
    edges = torch.cat([edges, flat.max().double().reshape(1)])
    edges = torch.unique(edges)  # sorted, distinct
    if edges.numel() < 2:  # a constant map: one bin
        edges = torch.cat([edges, edges + 1.0])
    n_bins = edges.numel() - 1
    # float32 comparisons are exact here: every edge is one of the float32 scores
    index = torch.bucketize(flat, edges.float(), right=True).sub_(1).clamp_(0, n_bins - 1)
    sizes = np.array([h * w for h, w in truth.shapes], dtype=np.int64)
    n = len(sizes)
    # One key per pixel: image i's normal pixels -> row i, region r's pixels -> row n + r - 1.
    rows = np.repeat(np.arange(n, dtype=np.int64), sizes)
    regions = truth.regions.astype(np.int64, copy=False)
    rows = np.where(truth.defect, n - 1 + regions, rows)
    keys = torch.from_numpy(rows).to(index.device).mul_(n_bins).add_(index)
    counts = torch.bincount(keys, minlength=(n + truth.n_regions) * n_bins).cpu().numpy()
    counts = counts.reshape(n + truth.n_regions, n_bins)
    normal_hist, region_hist = counts[:n], counts[n:]
    region_image = np.zeros(truth.n_regions + 1, dtype=np.int32)
    region_image[regions] = np.repeat(np.arange(n, dtype=np.int32), sizes)
    return (
        edges.cpu().numpy(),
        normal_hist.astype(np.uint32),
        region_hist.astype(np.uint32),
        region_image[1:],
    )


# ---------------------------------------------------------------- resample weights


def _rng(*keys: int | str) -> np.random.Generator:
    words = [zlib.crc32(k.encode()) if isinstance(k, str) else int(k) for k in keys]
    return np.random.default_rng([BOOTSTRAP_SEED, *words])


def _counts(rng: np.random.Generator, resamples: int, size: int) -> np.ndarray:
    """(R, size) multiplicities of ``size`` draws with replacement per row."""
    if size == 0:
        return np.zeros((resamples, 0))
    draws = rng.integers(0, size, size=(resamples, size))
    draws += np.arange(resamples)[:, None] * size
    return np.bincount(draws.ravel(), minlength=resamples * size).reshape(resamples, size)


def image_weights(labels: np.ndarray, resamples: int, category: str) -> np.ndarray:
    """(R, n) image multiplicities, stratified by label, seeded by the protocol seed and the
    category only (the same for every method, K and seed of the category's query)."""
    labels = np.asarray(labels)
    rng = _rng("images", category, labels.size, int(labels.sum()))
    weights = np.zeros((resamples, labels.size))
    for value in (0, 1):
        where = np.flatnonzero(labels == value)
        weights[:, where] = _counts(rng, resamples, where.size)
    return weights


def seed_weights(n_seeds: int, resamples: int) -> np.ndarray:
    """(R, n_seeds) multiplicities of the seeds (the first stage of the hierarchical resample)."""
    return _counts(_rng("seeds", n_seeds), resamples, n_seeds).astype(np.float64)


def percentile_interval(replicates: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of the replicates (NaN replicates, e.g. a resample without a type's
    images, are left out; both ends NaN when none is left)."""
    finite = replicates[np.isfinite(replicates)]
    if finite.size == 0:
        return math.nan, math.nan
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(finite, [tail, 100 - tail])
    return float(low), float(high)


# ---------------------------------------------------------------- replicate metrics


def _auroc_pairs(scores: np.ndarray, labels: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Weighted AUROC from the (positive, negative) pairs' win matrix."""
    pos, neg = labels == 1, labels == 0
    sp, sn = scores[pos], scores[neg]
    wins = (sp[:, None] > sn[None, :]) + 0.5 * (sp[:, None] == sn[None, :])
    wp, wn = weights[:, pos], weights[:, neg]
    with np.errstate(invalid="ignore", divide="ignore"):
        return ((wp @ wins) * wn).sum(axis=1) / (wp.sum(axis=1) * wn.sum(axis=1))


def _counted(scores: np.ndarray, weights: np.ndarray) -> bool:
    """Whether every sum of an AUROC's numerator is exact, so that any order of summing gives
    the floats of :func:`_auroc_pairs`: finite scores and whole multiplicities (every term is a
    multiple of 0.5, every sum at most the square of a row's total, far below 2**52)."""
    if weights.size == 0:
        return False
    total = float(np.abs(weights).sum(axis=1).max())
    return bool(
        np.isfinite(scores).all() and (weights == np.floor(weights)).all() and total**2 < 2.0**50
    )


def _weighted_placements(scores: np.ndarray, labels: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """(R, n_pos): per resample, the weight of the negatives below each positive plus half of
    those tied with it, from one sort and cumulative sum of the negatives' weights."""
    pos, neg = labels == 1, labels == 0
    order = np.argsort(scores[neg], kind="stable")
    sn = scores[neg][order]
    cumulative = np.zeros((weights.shape[0], sn.size + 1))
    np.cumsum(weights[:, neg][:, order], axis=1, out=cumulative[:, 1:])
    below = cumulative[:, np.searchsorted(sn, scores[pos], side="left")]
    upto = cumulative[:, np.searchsorted(sn, scores[pos], side="right")]
    return below + 0.5 * (upto - below)


def _auroc_weighted(scores: np.ndarray, labels: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """AUROC of each resample (rows of ``weights``). With whole multiplicities (resamples) every
    sum is exact, and the placements of the positives (one sort, no pair matrix) give the same
    floats as the pairs; otherwise the pairs."""
    if not _counted(scores, weights):
        return _auroc_pairs(scores, labels, weights)
    wp, wn = weights[:, labels == 1], weights[:, labels == 0]
    with np.errstate(invalid="ignore", divide="ignore"):
        return (wp * _weighted_placements(scores, labels, weights)).sum(axis=1) / (
            wp.sum(axis=1) * wn.sum(axis=1)
        )


def image_replicates(
    scores: np.ndarray, labels: np.ndarray, weights: np.ndarray
) -> dict[str, np.ndarray]:
    """iAUROC, iAP and iF1-max of each resample (rows of ``weights``), as the exact functions
    define them (ties form one threshold)."""
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels).astype(np.int64)
    order = np.argsort(-scores, kind="stable")
    s = scores[order]
    w = weights[:, order]
    y = labels[order]
    ends = np.flatnonzero(np.r_[s[1:] != s[:-1], True])  # last index of each tie group
    tp = np.cumsum(w * y, axis=1)[:, ends]
    fp = np.cumsum(w * (1 - y), axis=1)[:, ends]
    n_pos = tp[:, -1:]
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(tp + fp > 0, tp / np.maximum(tp + fp, 1e-300), 1.0)
        dtp = np.diff(tp, axis=1, prepend=0)
        ap = (dtp * precision).sum(axis=1) / n_pos[:, 0]
        f1 = (2 * tp / (tp + fp + n_pos)).max(axis=1)
    return {"iAUROC": _auroc_weighted(scores, labels, weights), "iAP": ap, "iF1max": f1}


def per_type_replicates(
    scores: np.ndarray, types: np.ndarray, labels: np.ndarray, weights: np.ndarray
) -> dict[str, np.ndarray]:
    """iAUROC of each defect type against the normal images, per resample (NaN where a resample
    drew no image of the type)."""
    types = np.asarray(types).astype(str)
    names = sorted(set(types[labels == 1].tolist()))
    if not _counted(scores, weights):
        out = {}
        for name in names:
            keep = (labels == 0) | (types == name)
            out[name] = _auroc_pairs(scores[keep], labels[keep], weights[:, keep])
        return out
    # the negatives are every type's: their placements of all positives serve each type's
    placements = _weighted_placements(scores, labels, weights)
    wp, negatives = weights[:, labels == 1], weights[:, labels == 0].sum(axis=1)
    of_type = types[labels == 1]
    out = {}
    with np.errstate(invalid="ignore", divide="ignore"):
        for name in names:
            mine = of_type == name
            w = wp[:, mine]
            out[name] = (w * placements[:, mine]).sum(axis=1) / (w.sum(axis=1) * negatives)
    return out


def _tail(hist: np.ndarray) -> np.ndarray:
    """Counts with bin >= b (i.e. score >= edges[b]) for every b, along the last axis."""
    return np.flip(np.cumsum(np.flip(hist, axis=-1), axis=-1), axis=-1)


def hist_auroc(pos: np.ndarray, neg: np.ndarray) -> np.ndarray:
    """ROC AUC of binned scores (ties within a bin count one half), along the last axis."""
    below = np.cumsum(neg, axis=-1) - neg
    with np.errstate(invalid="ignore", divide="ignore"):
        return (pos * (below + 0.5 * neg)).sum(-1) / (pos.sum(-1) * neg.sum(-1))


def hist_f1max(pos: np.ndarray, neg: np.ndarray) -> np.ndarray:
    """Max F1 over the thresholds at the bin edges, along the last axis."""
    tp, fp = _tail(pos), _tail(neg)
    total = pos.sum(-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (2 * tp / (tp + fp + total)).max(-1)


def auroc_binning_bound(pos: np.ndarray, neg: np.ndarray) -> np.ndarray:
    """Largest possible |binned - exact| AUROC: half the share of (defect, normal) pixel pairs
    that fall in one bin (only their order inside the bin is unknown)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return 0.5 * (pos * neg).sum(-1) / (pos.sum(-1) * neg.sum(-1))


def curve_aupro(fpr: np.ndarray, pro: np.ndarray, limit: float) -> np.ndarray:
    """Trapezoid area under PRO(FPR) up to ``limit`` / limit, for rows of ascending FPR that
    start at (0, 0) (vectorised form of ``aupro_from_curve``)."""
    x0, x1 = fpr[:, :-1], fpr[:, 1:]
    y0, y1 = pro[:, :-1], pro[:, 1:]
    right = np.minimum(x1, limit)
    with np.errstate(invalid="ignore", divide="ignore"):
        y_right = np.where(x1 > limit, y0 + (y1 - y0) * (limit - x0) / (x1 - x0), y1)
    width = np.clip(right - x0, 0, None)
    return (width * (y0 + y_right) / 2).sum(axis=1) / limit


def pixel_replicates(
    stats: EpisodeScores, weights: np.ndarray, fpr_limit: float = 0.3, one_bin: bool = False
) -> dict[str, np.ndarray]:
    """pAUROC, pF1-max and AUPRO of each resample from the summed histograms. ``one_bin``
    merges every bin: the metrics of a constant map (the chance row), from the same data."""
    normal, regions = stats.normal_hist.astype(np.float64), stats.region_hist.astype(np.float64)
    if one_bin:
        normal, regions = normal.sum(1, keepdims=True), regions.sum(1, keepdims=True)
    region_w = weights[:, stats.region_image]  # (R, K)
    neg = weights @ normal  # (R, B)
    pos = region_w @ regions
    # PRO at each bin edge, thresholds descending: FPR ascending from (0, 0).
    sizes = regions.sum(1, keepdims=True)
    overlap = _tail(regions) / np.maximum(sizes, 1)  # (K, B)
    with np.errstate(invalid="ignore", divide="ignore"):
        pro = (region_w @ overlap) / region_w.sum(1, keepdims=True)
        fpr = _tail(neg) / neg.sum(1, keepdims=True)
    zeros = np.zeros((weights.shape[0], 1))
    fpr = np.concatenate([zeros, np.flip(fpr, 1)], axis=1)
    pro = np.concatenate([zeros, np.flip(pro, 1)], axis=1)
    return {
        "pAUROC": hist_auroc(pos, neg),
        "pF1max": hist_f1max(pos, neg),
        "AUPRO": curve_aupro(fpr, pro, fpr_limit),
    }


def defect_type_predictions(
    stats: EpisodeScores, normal: str = NORMAL_LABEL
) -> tuple[np.ndarray, ...]:
    """For the defect query images: true type ids, predicted type ids (arg-max over the defect
    types' logits only: "given it is a defect, which type?") and the defect type names."""
    names = [c for c in stats.class_names if c != normal]
    columns = [stats.class_names.index(c) for c in names]
    defect = stats.label == 1
    logits = np.asarray(stats.class_logits)[defect][:, columns]
    lookup = {name: i for i, name in enumerate(names)}
    target = np.array([lookup.get(t, -1) for t in stats.types[defect]], dtype=np.int64)
    return target, logits.argmax(axis=1), np.asarray(names)


def classification_replicates(
    target: np.ndarray, pred: np.ndarray, n_classes: int, weights: np.ndarray
) -> dict[str, np.ndarray]:
    """Accuracy and macro precision, recall and F1 (over the classes present in target or
    prediction, as the exact functions do) of each resample; ``weights`` (R, n) over these
    images."""
    onehot = np.zeros((target.size, n_classes * n_classes))
    onehot[np.arange(target.size), target * n_classes + pred] = 1
    confusion = (weights @ onehot).reshape(-1, n_classes, n_classes)
    tp = np.diagonal(confusion, axis1=1, axis2=2)
    predicted, actual = confusion.sum(1), confusion.sum(2)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(predicted > 0, tp / predicted, 0.0)
        recall = np.where(actual > 0, tp / actual, 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0)
        present = (predicted > 0) | (actual > 0)
        count = present.sum(1)
        return {
            "type_accuracy": tp.sum(1) / weights.sum(1),
            "type_precision": (precision * present).sum(1) / count,
            "type_recall": (recall * present).sum(1) / count,
            "type_f1": (f1 * present).sum(1) / count,
        }


def chance_classification(target: np.ndarray, n_classes: int, weights: np.ndarray) -> dict:
    """Chance rows of the defect-type question per resample: ``majority`` (always the most
    frequent type of the query) and ``uniform`` (the expected confusion matrix of a uniform
    random guess, n_t / C in every cell of row t; its plug-in accuracy and macro-F1)."""
    counts = np.bincount(target, minlength=n_classes).astype(np.float64)
    majority = int(np.argmax(counts))
    out = {
        "majority": classification_replicates(
            target, np.full_like(target, majority), n_classes, weights
        )
    }
    actual = np.stack([weights[:, target == c].sum(1) for c in range(n_classes)], axis=1)
    confusion = actual[:, :, None] / n_classes * np.ones((1, 1, n_classes))
    tp = np.diagonal(confusion, axis1=1, axis2=2)
    predicted = confusion.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(predicted > 0, tp / predicted, 0.0)
        recall = np.where(actual > 0, tp / actual, 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0)
        present = (predicted > 0) | (actual > 0)
        out["uniform"] = {
            "type_accuracy": tp.sum(1) / weights.sum(1),
            "type_f1": (f1 * present).sum(1) / present.sum(1),
        }
    return out


# ---------------------------------------------------------------- DeLong


def _placements(pos: np.ndarray, neg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """DeLong's structural components: V10 per positive, V01 per negative."""
    wins = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
    return wins.mean(axis=1), wins.mean(axis=0)


def delong_test(scores_a: np.ndarray, scores_b: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """DeLong et al. (1988) test of two correlated AUROCs on the same images: both AUROCs,
    their difference, its standard error and the two-sided normal p-value."""
    from scipy.stats import norm

    labels = np.asarray(labels).astype(bool)
    components = []
    aucs = []
    for scores in (np.asarray(scores_a, float), np.asarray(scores_b, float)):
        v10, v01 = _placements(scores[labels], scores[~labels])
        components.append((v10, v01))
        aucs.append(float(v10.mean()))
    s10 = np.cov(np.stack([c[0] for c in components]))
    s01 = np.cov(np.stack([c[1] for c in components]))
    n1, n0 = int(labels.sum()), int((~labels).sum())
    cov = s10 / n1 + s01 / n0
    var_diff = float(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    diff = aucs[0] - aucs[1]
    se = math.sqrt(max(var_diff, 0.0))
    z = diff / se if se > 0 else math.nan
    p = float(2 * norm.sf(abs(z))) if se > 0 else math.nan
    return {
        "auroc_a": aucs[0],
        "auroc_b": aucs[1],
        "difference": diff,
        "se": se,
        "se_a": math.sqrt(cov[0, 0]),
        "se_b": math.sqrt(cov[1, 1]),
        "p_value": p,
    }


def hierarchical(per_seed: Sequence[np.ndarray], seeds: np.ndarray) -> np.ndarray:
    """Replicates of a mean over seeds: each replicate's seed multiplicities (``seeds``, (R, S))
    weight the per-seed replicates (S arrays of (R,))."""
    stacked = np.stack(per_seed, axis=1)  # (R, S)
    return (stacked * seeds).sum(1) / seeds.sum(1)
