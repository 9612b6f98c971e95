"""Few-shot episodes: which images are support and which are query (``PROTOCOL.md`` v2).

Defect support pools, reserved once per category and defect type, whatever the episode:

1. The type's ``test/<type>`` images sorted by path (``n`` of them); the pool size is
   ``p = pool_size`` (P, default :data:`POOL_SIZE` = 20, the largest K of the protocol) if
   ``n >= P + MIN_QUERY_PER_TYPE``, else ``p = max(n - MIN_QUERY_PER_TYPE, 1)`` (0 if ``n < 2``) so
   that at least :data:`MIN_QUERY_PER_TYPE` images stay in the query; such a smaller pool is
   recorded in ``Episode.pool_sizes`` and in ``Episode.notes``.
2. ``order = default_rng(pool_seed(category, type)).permutation(n)``, where :func:`pool_seed`
   is a sha256 of :data:`PROTOCOL_SEED` and the two names (not Python's salted ``hash``); the
   pool is the images at ``order[:p]``, sorted by path. It does not depend on the episode seed
   or on K, so the query does not either.

Query: every ``test`` image of the category (sorted by path) that is in no pool. It is the same
for every K, seed and method of a category (zero-shot included).

Support of the episode ``(dataset, category, shots=K, seed)``, drawn in this order:

1. ``rng = numpy.random.default_rng(seed)``.
2. Normal support: the category's ``train/good`` images sorted by path; ``order =
   rng.permutation(n)``; the support is the images at ``order[:K]``.
3. Defect support: for each defect type in sorted name order, its pool (sorted by path);
   ``order = rng.permutation(p)``; the support is the pool images at ``order[:K]``.

Each class draws a full permutation whatever K is, so the random stream each class sees does not
depend on K and the K-shot support of a seed is the first K of a fixed order: the 5-shot support
contains the 1-shot support of the same seed (nested shots make shot sweeps less noisy). Support
tuples keep the draw order. Drawing is without replacement, so no image appears twice.

If a class is too small (``train/good`` fewer than K images, or a defect pool fewer than K), the
episode is returned with ``skipped`` set to the reason and empty support and query -- never
silently shrunk. K = 0 is a zero-shot episode (no support, the same query).
"""

from __future__ import annotations

import csv
import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from semclip_bench.data.types import NORMAL_LABEL, DefectDataset, Episode, Sample
from semclip_bench.errors import UserError

#: Defect support pool size P per (category, type): the largest K of the protocol.
POOL_SIZE = 20
#: Test images of a defect type that always stay in the query (a smaller pool otherwise).
MIN_QUERY_PER_TYPE = 5
#: Fixed seed of the pool permutations (part of the protocol; changing it changes every query).
PROTOCOL_SEED = 20_240_601


def pool_seed(category: str, defect_type: str) -> int:
    """Stable 64-bit seed of a (category, type) pool: the same in every process and machine."""
    text = f"{PROTOCOL_SEED}\0{category}\0{defect_type}".encode()
    return int.from_bytes(hashlib.sha256(text).digest()[:8], "little")


def pool_capacity(n_images: int, pool_size: int = POOL_SIZE) -> int:
    """Pool size of a type with ``n_images`` test images (see the module docstring)."""
    if n_images >= pool_size + MIN_QUERY_PER_TYPE:
        return pool_size
    if n_images < 2:
        return 0
    return min(pool_size, max(n_images - MIN_QUERY_PER_TYPE, 1))


def defect_pools(
    dataset: DefectDataset, category: str, pool_size: int = POOL_SIZE
) -> dict[str, tuple[Sample, ...]]:
    """Defect support pool of each defect type of ``category`` (sorted by path), by type name."""
    if isinstance(pool_size, bool) or not isinstance(pool_size, (int, np.integer)):
        raise UserError(f"pool_size must be a non-negative integer, got {pool_size!r}")
    if pool_size < 0:
        raise UserError(f"pool_size must be a non-negative integer, got {pool_size!r}")
    pools: dict[str, tuple[Sample, ...]] = {}
    for defect_type in dataset.defect_types(category):
        images = dataset.select(category, "test", defect_type)
        size = pool_capacity(len(images), int(pool_size))
        order = np.random.default_rng(pool_seed(category, defect_type)).permutation(len(images))
        chosen = sorted(int(i) for i in order[:size])
        pools[defect_type] = tuple(images[i] for i in chosen)
    return pools


def query_set(
    dataset: DefectDataset,
    category: str,
    pools: dict[str, tuple[Sample, ...]] | None = None,
    pool_size: int = POOL_SIZE,
) -> tuple[Sample, ...]:
    """The category's query: every test image in no defect pool, sorted by path."""
    pools = defect_pools(dataset, category, pool_size) if pools is None else pools
    reserved = {s.key for pool in pools.values() for s in pool}
    return tuple(s for s in dataset.select(category, "test") if s.key not in reserved)


def _pool_notes(
    dataset: DefectDataset, category: str, pools: dict[str, tuple[Sample, ...]], pool_size: int
) -> tuple[str, ...]:
    notes = []
    for name, pool in sorted(pools.items()):
        if len(pool) < pool_size:
            n = len(dataset.select(category, "test", name))
            notes.append(
                f"{category}/{name}: defect support pool {len(pool)} < {pool_size} "
                f"(only {n} test image(s); {n - len(pool)} kept for the query)"
            )
    return tuple(notes)


def _draw(rng: np.random.Generator, pool: Sequence[Sample], shots: int) -> tuple[Sample, ...]:
    """First ``shots`` images of a seeded permutation of ``pool`` (without replacement)."""
    order = rng.permutation(len(pool))
    return tuple(pool[i] for i in order[:shots])


def make_episode(
    dataset: DefectDataset, category: str, shots: int, seed: int, pool_size: int = POOL_SIZE
) -> Episode:
    """Form the episode ``(dataset, category, shots, seed)``; see the module docstring."""
    categories = dataset.categories()
    if category not in categories:
        raise UserError(
            f"category '{category}' is not in dataset {dataset.name} "
            f"(available: {', '.join(categories) or 'none'})"
        )
    if isinstance(shots, bool) or not isinstance(shots, (int, np.integer)) or shots < 0:
        raise UserError(f"shots must be a non-negative integer, got {shots!r}")
    shots = int(shots)
    pools = defect_pools(dataset, category, pool_size)
    class_names = (NORMAL_LABEL, *pools)
    common: dict[str, Any] = dict(
        dataset=dataset.name,
        category=category,
        shots=shots,
        seed=seed,
        class_names=class_names,
        defect_pools=pools,
        pool_sizes={name: len(pool) for name, pool in pools.items()},
        notes=_pool_notes(dataset, category, pools, int(pool_size)),
    )
    rng = np.random.default_rng(seed)

    reasons: list[str] = []
    normal_pool = dataset.select(category, "train", NORMAL_LABEL)
    if len(normal_pool) < shots:
        reasons.append(
            f"train/{NORMAL_LABEL} has {len(normal_pool)} image(s), {shots}-shot needs {shots}"
        )
    normal_support = _draw(rng, normal_pool, shots)

    defect_support: dict[str, tuple[Sample, ...]] = {}
    too_small: dict[int, list[str]] = {}  # pool size -> defect types with that pool size
    for defect_type, pool in pools.items():
        if shots > 0 and len(pool) < shots:
            too_small.setdefault(len(pool), []).append(defect_type)
        chosen = _draw(rng, pool, shots)
        if shots > 0:
            defect_support[defect_type] = chosen
    for size, names in sorted(too_small.items()):
        which = (
            f"defect support pool of {names[0]} has {size} image(s)"
            if len(names) == 1
            else f"defect support pools of {{{','.join(names)}}} have {size} image(s) each"
        )
        reasons.append(f"{which}, {shots}-shot needs {shots}")

    query = query_set(dataset, category, pools)
    if not query and not reasons:
        reasons.append("no test images left for the query")
    if reasons:
        return Episode(**common, skipped=f"{category}: " + "; ".join(reasons))
    return Episode(
        **common, normal_support=normal_support, defect_support=defect_support, query=query
    )


def support_manifest(
    episode: Episode, include_query: bool = False, include_pools: bool = False
) -> list[dict[str, str]]:
    """Rows (role, class, path) naming the episode's support files (and query files and the
    defect support pools if asked).

    Roles: ``normal_support``, ``defect_support``, ``query`` and ``defect_pool``. Written next to
    the results so that every number can be traced to the exact images used.
    """
    rows = [
        {"role": "normal_support", "class": s.label, "path": str(s.image_path)}
        for s in episode.normal_support
    ]
    rows += [
        {"role": "defect_support", "class": s.label, "path": str(s.image_path)}
        for s in episode.defect_support_flat
    ]
    if include_pools:
        rows += [
            {"role": "defect_pool", "class": s.label, "path": str(s.image_path)}
            for name in sorted(episode.defect_pools)
            for s in episode.defect_pools[name]
        ]
    if include_query:
        rows += [
            {"role": "query", "class": s.label, "path": str(s.image_path)} for s in episode.query
        ]
    return rows


def write_support_manifest(
    episode: Episode,
    path: str | Path,
    include_query: bool = False,
    include_pools: bool = False,
) -> Path:
    """Write :func:`support_manifest` as a CSV file (columns role, class, path)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["role", "class", "path"])
        writer.writeheader()
        writer.writerows(support_manifest(episode, include_query, include_pools))
    return path
