"""Few-shot episodes: which images are support and which are query (``PROTOCOL.md``).

Draw order, fixed so that the same ``(dataset, category, shots, seed)`` always gives the same
episode on any machine:

1. ``rng = numpy.random.default_rng(seed)``.
2. Normal support: the category's ``train/good`` images sorted by path; ``order =
   rng.permutation(n)``; the support is the images at ``order[:K]``.
3. Defect support: for each defect type in sorted name order, the category's ``test/<type>``
   images sorted by path; ``order = rng.permutation(n)``; the support is ``order[:K]``.
4. Query: every ``test`` image of the category (sorted by path) that is not a support image.

Each class draws a full permutation whatever K is, so the random stream each class sees does not
depend on K and the K-shot support of a seed is the first K of a fixed order: the 5-shot support
contains the 1-shot support of the same seed (nested shots make shot sweeps less noisy). Support
tuples keep the draw order. Drawing is without replacement, so no image appears twice.

If a class is too small (``train/good`` fewer than K images, or a defect type fewer than K + 1 so
that at least one is left for the query), the episode is returned with ``skipped`` set to the
reason and empty sets -- never silently shrunk. K = 0 is a zero-shot episode (no support).
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from semclip_bench.data.types import NORMAL_LABEL, DefectDataset, Episode, Sample
from semclip_bench.errors import UserError


def _draw(rng: np.random.Generator, pool: list[Sample], shots: int) -> tuple[Sample, ...]:
    """First ``shots`` images of a seeded permutation of ``pool`` (without replacement)."""
    order = rng.permutation(len(pool))
    return tuple(pool[i] for i in order[:shots])


def make_episode(dataset: DefectDataset, category: str, shots: int, seed: int) -> Episode:
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
    defect_types = dataset.defect_types(category)
    class_names = (NORMAL_LABEL, *defect_types)
    rng = np.random.default_rng(seed)

    reasons: list[str] = []
    normal_pool = dataset.select(category, "train", NORMAL_LABEL)
    if len(normal_pool) < shots:
        reasons.append(
            f"train/{NORMAL_LABEL} has {len(normal_pool)} image(s), {shots}-shot needs {shots}"
        )
    normal_support = _draw(rng, normal_pool, shots)

    defect_support: dict[str, tuple[Sample, ...]] = {}
    too_small: dict[int, list[str]] = {}  # image count -> defect types with that count
    for defect_type in defect_types:
        pool = dataset.select(category, "test", defect_type)
        if shots > 0 and len(pool) < shots + 1:
            too_small.setdefault(len(pool), []).append(defect_type)
        chosen = _draw(rng, pool, shots)
        if shots > 0:
            defect_support[defect_type] = chosen
    for count, names in sorted(too_small.items()):
        which = f"test/{names[0]} has" if len(names) == 1 else f"test/{{{','.join(names)}}} have"
        reasons.append(
            f"{which} {count} image(s), {shots}-shot needs {shots + 1} ({shots} support + 1 query)"
        )

    support_keys = {s.key for s in normal_support} | {
        s.key for chosen in defect_support.values() for s in chosen
    }
    query = tuple(s for s in dataset.select(category, "test") if s.key not in support_keys)
    if not query and not reasons:
        reasons.append("no test images left for the query")

    if reasons:
        return Episode(
            dataset=dataset.name,
            category=category,
            shots=shots,
            seed=seed,
            class_names=class_names,
            skipped=f"{category}: " + "; ".join(reasons),
        )
    return Episode(
        dataset=dataset.name,
        category=category,
        shots=shots,
        seed=seed,
        class_names=class_names,
        normal_support=normal_support,
        defect_support=defect_support,
        query=query,
    )


def support_manifest(episode: Episode, include_query: bool = False) -> list[dict[str, str]]:
    """Rows (role, class, path) naming the episode's support files (and query files if asked).

    Roles: ``normal_support``, ``defect_support`` and ``query``. Written next to the results so
    that every number can be traced to the exact images used.
    """
    rows = [
        {"role": "normal_support", "class": s.label, "path": str(s.image_path)}
        for s in episode.normal_support
    ]
    rows += [
        {"role": "defect_support", "class": s.label, "path": str(s.image_path)}
        for s in episode.defect_support_flat
    ]
    if include_query:
        rows += [
            {"role": "query", "class": s.label, "path": str(s.image_path)} for s in episode.query
        ]
    return rows


def write_support_manifest(episode: Episode, path: str | Path, include_query: bool = False) -> Path:
    """Write :func:`support_manifest` as a CSV file (columns role, class, path)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["role", "class", "path"])
        writer.writeheader()
        writer.writerows(support_manifest(episode, include_query))
    return path
