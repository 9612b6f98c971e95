"""Formula-driven supervised pretraining data: FractalDB-style renders of random IFS classes.

After FractalDB (Kataoka et al., ACCV 2020 / IJCV 2022), written from its description: class ``c``
of a :class:`FormulaConfig` is an iterated function system (IFS) of 2-4 random contractive 2-D
affine maps ``x -> A x + b`` (entries uniform in [-1, 1], each map redrawn until its largest
singular value is below ``max_contraction``; map ``k`` is chosen with probability proportional to
``|det A_k|``), drawn from a generator seeded by ``(seed, c)`` and redrawn whole until its
attractor, scaled (aspect kept) into the canvas, covers at least ``fill_threshold`` of the cells of
a ``fill_grid`` x ``fill_grid`` grid (FractalDB's filling-rate criterion). The draw is
deterministic: the same (seed, c) always gives the same maps.

Instance ``i`` of class ``c`` varies as FractalDB's instances do: the parameters of one map are
scaled by a factor in [1 - jitter, 1 + jitter] each, points are drawn as a random small patch
(1x1 to 3x3 pattern), and the brightness and the contrast between dense and sparse parts of the
attractor vary. The chaos game runs ``chains`` points in parallel (numpy, one vectorised update per
iteration) and records every point after ``burn_in`` iterations. The render is an 8-bit gray
(``render_size``, ``render_size``) image and a pure function of (config, class, instance).

:func:`formula_digest` identifies the data: the sha256 of the generator's code (this file), the
NumPy version and the config, as :func:`semclip_bench.data.synth_cache.synth_cache_key` does for
sem-synth. :class:`FormulaStream` feeds the classification stage and :class:`MixedStream` pairs it
with the caption stream for the mixed objective.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import IterableDataset

from semclip_bench.errors import UserError
from semclip_bench.pretrain.data import (
    random_dihedral,
    shard_indices,
    shard_share,
    unit_tensor,
)

# Keys that separate the random streams drawn from one seed.
_CLASS_KEY, _INSTANCE_KEY, _PLAN_KEY, _VIEW_KEY = 31, 37, 41, 43
#: Largest number of IFS draws tried for one class before giving up.
MAX_DRAWS = 10_000


@dataclass(frozen=True)
class FormulaConfig:
    """Everything that decides the formula images (besides the code and NumPy)."""

    seed: int = 0
    classes: int = 1000
    render_size: int = 256
    min_maps: int = 2
    max_maps: int = 4
    max_contraction: float = 0.98
    fill_threshold: float = 0.2
    fill_grid: int = 32
    chains: int = 2048
    burn_in: int = 12
    iterations: int = 32
    jitter: float = 0.1
    margin: float = 0.06

    def __post_init__(self) -> None:
        checks = [
            ("seed", self.seed >= 0, ">= 0"),
            ("classes", self.classes >= 1, ">= 1"),
            ("render_size", 16 <= self.render_size <= 4096, "16..4096"),
            ("min_maps", 1 <= self.min_maps <= self.max_maps, "1..max_maps"),
            ("max_contraction", 0.0 < self.max_contraction < 1.0, "in (0, 1)"),
            ("fill_threshold", 0.0 <= self.fill_threshold < 1.0, "in [0, 1)"),
            ("fill_grid", self.fill_grid >= 2, ">= 2"),
            ("chains", self.chains >= 1, ">= 1"),
            ("burn_in", self.burn_in >= 0, ">= 0"),
            ("iterations", self.iterations >= 1, ">= 1"),
            ("jitter", 0.0 <= self.jitter < 1.0, "in [0, 1)"),
            ("margin", 0.0 <= self.margin < 0.5, "in [0, 0.5)"),
        ]
        for name, ok, rule in checks:
            if not ok:
                raise UserError(f"formula config: {name} must be {rule}, got {getattr(self, name)}")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict."""
        return dataclasses.asdict(self)


# ------------------------------------------------------------------------------------ identity
def generator_files() -> list[Path]:
    """Source files that decide the rendered pixels."""
    return [Path(__file__).resolve()]


def generator_identity() -> dict[str, str]:
    """Everything besides the config that decides the rendered bytes."""
    from semclip_bench.data.synth.identity import source_digest

    return {"sources": source_digest(generator_files()), "numpy": np.__version__}


def formula_digest(config: FormulaConfig) -> str:
    """sha256 (hex) of (generator identity, config): names the formula data of a run."""
    payload = {"generator": generator_identity(), "config": config.to_dict()}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode("utf-8")).hexdigest()


# ----------------------------------------------------------------------------------------- IFS
@dataclass(frozen=True)
class Ifs:
    """An IFS: maps ``x -> A[k] x + b[k]`` chosen with probabilities ``p[k]``."""

    A: np.ndarray  # (n, 2, 2)
    b: np.ndarray  # (n, 2)
    p: np.ndarray  # (n,)

    @property
    def coefficients(self) -> np.ndarray:
        """(n, 6): a11, a12, a21, a22, b1, b2 of each map."""
        return np.concatenate([self.A.reshape(-1, 4), self.b], axis=1)


def _spectral_norm(A: np.ndarray) -> np.ndarray:
    return np.linalg.norm(A, ord=2, axis=(-2, -1))


def _probabilities(A: np.ndarray) -> np.ndarray:
    det = np.abs(np.linalg.det(A)) + 1e-3  # a singular map keeps a small chance
    return det / det.sum()


def draw_ifs(rng: np.random.Generator, config: FormulaConfig) -> Ifs:
    """One random IFS (no filling-rate check): 2-4 maps, each redrawn until contractive."""
    n = int(rng.integers(config.min_maps, config.max_maps + 1))
    A = np.empty((n, 2, 2))
    b = np.empty((n, 2))
    for k in range(n):
        while True:
            m = rng.uniform(-1.0, 1.0, size=6)
            if _spectral_norm(m[:4].reshape(2, 2)) < config.max_contraction:
                break
        A[k], b[k] = m[:4].reshape(2, 2), m[4:]
    return Ifs(A, b, _probabilities(A))


def chaos_game(
    ifs: Ifs, rng: np.random.Generator, chains: int, burn_in: int, iterations: int
) -> np.ndarray:
    """(2, iterations * chains) coordinates of attractor points: ``chains`` points iterated in
    parallel, each iteration after ``burn_in`` recorded."""
    coef = ifs.coefficients.T.copy()  # (6, n): one row per coefficient
    cum = np.cumsum(ifs.p)
    steps = burn_in + iterations
    u = rng.random((steps, chains))
    choice = np.zeros((steps, chains), np.intp)  # map k where cum[k-1] <= u < cum[k]
    for threshold in cum[:-1] / cum[-1]:  # n - 1 comparisons beat searchsorted for n <= 4
        choice += u >= threshold
    x = rng.uniform(-1.0, 1.0, size=chains)
    y = rng.uniform(-1.0, 1.0, size=chains)
    out = np.empty((2, iterations, chains))
    for t in range(steps):
        a11, a12, a21, a22, b1, b2 = coef[:, choice[t]]
        x, y = a11 * x + a12 * y + b1, a21 * x + a22 * y + b2
        if t >= burn_in:
            out[0, t - burn_in], out[1, t - burn_in] = x, y
    return out.reshape(2, -1)


def canvas_index(points: np.ndarray, size: int, margin: float) -> np.ndarray | None:
    """Flat pixel index (row * size + col) of each of the (2, N) ``points`` scaled into a
    ``size`` canvas (aspect kept, centred, ``margin`` of the side left free; the second
    coordinate gives the row); None when the points are not finite. A point-like set (span below
    1e-6 of its coordinates' size: rounding noise around a fixed point) stays a point."""
    lo, hi = points.min(axis=1), points.max(axis=1)
    if not (np.isfinite(lo).all() and np.isfinite(hi).all()):
        return None
    span = float((hi - lo).max())
    if span <= 1e-6 * max(1.0, float(np.abs(lo).max()), float(np.abs(hi).max())):
        scale = 0.0  # do not blow rounding noise up to the canvas
    else:
        scale = (size - 1) * (1.0 - 2.0 * margin) / span
    offset = (size - 1) / 2.0 - (lo + hi) / 2.0 * scale
    col = np.clip(np.rint(points[0] * scale + offset[0]), 0, size - 1).astype(np.int64)
    row = np.clip(np.rint(points[1] * scale + offset[1]), 0, size - 1).astype(np.int64)
    return row * size + col


def filling_rate(points: np.ndarray, grid: int, margin: float) -> float:
    """Fraction of the cells of a ``grid`` x ``grid`` canvas that the normalised (2, N) points
    hit."""
    index = canvas_index(points, grid, margin)
    if index is None:
        return 0.0
    return int(np.count_nonzero(np.bincount(index, minlength=grid * grid))) / grid**2


@functools.cache
def class_ifs(config: FormulaConfig, c: int) -> Ifs:
    """The IFS of class ``c``: redrawn (same generator) until the filling rate is reached."""
    if not 0 <= c < config.classes:
        raise ValueError(f"class {c} outside 0..{config.classes - 1}")
    rng = np.random.default_rng([config.seed, c, _CLASS_KEY])
    chains = min(config.chains, 1024)
    for _ in range(MAX_DRAWS):
        ifs = draw_ifs(rng, config)
        points = chaos_game(ifs, rng, chains, config.burn_in, 16)
        if filling_rate(points, config.fill_grid, config.margin) >= config.fill_threshold:
            return ifs
    raise RuntimeError(  # pragma: no cover - the thresholds in use accept a draw in a few tries
        f"no IFS of class {c} reached filling rate {config.fill_threshold} in {MAX_DRAWS} draws"
    )


# ------------------------------------------------------------------------------------- render
def instance_ifs(ifs: Ifs, rng: np.random.Generator, config: FormulaConfig) -> Ifs:
    """``ifs`` with the parameters of one random map scaled by factors in 1 +- jitter."""
    k = int(rng.integers(len(ifs.p)))
    factor = rng.uniform(1.0 - config.jitter, 1.0 + config.jitter, size=6)
    A, b = ifs.A.copy(), ifs.b.copy()
    A[k] *= factor[:4].reshape(2, 2)
    b[k] *= factor[4:]
    norm = float(_spectral_norm(A[k]))
    if norm >= config.max_contraction:  # keep it contractive
        A[k] *= config.max_contraction / norm
    return Ifs(A, b, _probabilities(A))


def _dilate(image: np.ndarray, pattern: np.ndarray) -> np.ndarray:
    """Gray dilation of ``image`` by the boolean ``pattern`` (k x k, anchored at its centre)."""
    k = pattern.shape[0]
    r = k // 2
    padded = np.pad(image, ((r, k - 1 - r), (r, k - 1 - r)))
    h, w = image.shape
    out = np.zeros_like(image)
    for dy, dx in zip(*np.nonzero(pattern), strict=True):
        np.maximum(out, padded[dy : dy + h, dx : dx + w], out=out)
    return out


def render_formula(config: FormulaConfig, c: int, instance: int) -> np.ndarray:
    """Instance ``instance`` of class ``c``: uint8 gray image (render_size, render_size)."""
    rng = np.random.default_rng([config.seed, c, instance, _INSTANCE_KEY])
    ifs = instance_ifs(class_ifs(config, c), rng, config)
    patch = int(rng.integers(1, 4))
    pattern = rng.random((patch, patch)) < 0.5
    pattern[patch // 2, patch // 2] = True
    brightness = rng.uniform(0.55, 1.0)
    floor = rng.uniform(0.35, 1.0)  # gray level of a pixel hit once, relative to the densest
    points = chaos_game(ifs, rng, config.chains, config.burn_in, config.iterations)
    size = config.render_size
    index = canvas_index(points, size, config.margin)
    if index is None:  # pragma: no cover - contractive maps stay finite
        return np.zeros((size, size), np.uint8)
    hits = np.bincount(index, minlength=size * size).reshape(size, size)
    density = np.log1p(hits.astype(np.float32))
    level = floor + (1.0 - floor) * density / max(float(density.max()), 1e-6)
    image = np.where(hits > 0, level * (255.0 * brightness), 0.0)
    image = np.rint(image).astype(np.uint8)
    return _dilate(image, pattern) if patch > 1 else image


# ------------------------------------------------------------------------------------ streams
class FormulaStream(IterableDataset):
    """Endless (or ``length``-long) stream of formula renders for classification.

    Item ``i`` (:meth:`item`) is {"image": float16 (1, S, S) in [0, 1] (see
    :func:`~semclip_bench.pretrain.data.unit_tensor`), "label": its class, "index": i}: class
    drawn uniformly from a generator seeded by (seed, i), instance ``i`` of that class, then with
    ``augment`` a random dihedral view (rot90 x flip) as the caption stream uses. Sharded by
    (rank, worker) like :class:`~semclip_bench.pretrain.data.SynthCaptionStream`.
    """

    def __init__(
        self,
        config: FormulaConfig,
        image_size: int,
        *,
        augment: bool = True,
        start: int = 0,
        length: int | None = None,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        super().__init__()
        self.config = config
        self.image_size = image_size
        self.augment = augment
        self.start = start
        self.length = length
        self.rank, self.world_size = rank, world_size

    def label(self, i: int) -> int:
        """Class of sample ``i``."""
        rng = np.random.default_rng([self.config.seed, i, _PLAN_KEY])
        return int(rng.integers(self.config.classes))

    def item(self, i: int) -> dict[str, Any]:
        """Sample ``i`` (pure function of config, augment and i)."""
        c = self.label(i)
        image = render_formula(self.config, c, i)
        if self.augment:
            rng = np.random.default_rng([self.config.seed, i, _VIEW_KEY])
            image = random_dihedral(image, rng)[0]
        return {"image": unit_tensor(image, self.image_size), "label": c, "index": i}

    def __iter__(self) -> Iterator[dict[str, Any]]:
        share = shard_share(self.length, self.rank, self.world_size)
        for emitted, i in enumerate(shard_indices(self.start, self.rank, self.world_size)):
            if emitted >= share:
                return
            yield self.item(i)


class MixedStream(IterableDataset):
    """Items of ``primary`` (the caption stream) with a formula sample added to each, under
    "formula_image" / "formula_label" (both streams shard by the same (rank, worker))."""

    def __init__(self, primary: Iterable[dict[str, Any]], formula: FormulaStream) -> None:
        super().__init__()
        self.primary = primary
        self.formula = formula

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for item, extra in zip(self.primary, self.formula, strict=False):
            yield {**item, "formula_image": extra["image"], "formula_label": extra["label"]}


__all__ = [
    "FormulaConfig",
    "FormulaStream",
    "Ifs",
    "MixedStream",
    "canvas_index",
    "chaos_game",
    "class_ifs",
    "draw_ifs",
    "filling_rate",
    "formula_digest",
    "generator_identity",
    "render_formula",
]
