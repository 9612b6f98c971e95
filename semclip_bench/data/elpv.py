"""``elpv``: real electroluminescence images of solar cells, from the ``elpv-dataset`` package.

The package (CC BY-NC-SA 4.0, an optional extra: ``pip install "semclip_bench[elpv]"``) holds
2,624 300x300 8-bit cell images and ``data/labels.csv``: one whitespace-separated line per image
(``images/cellNNNN.png  <defect probability>  <mono|poly>``), probabilities 0, 1/3, 2/3 or 1.
This module maps it onto the benchmark's splits (``docs/PROTOCOL.md``, "Real images: elpv"); the
images are read in place from the installed package, never copied.

Specs: ``elpv`` (test), ``elpv:val`` (validation), and ``elpv-soft`` / ``elpv-soft:val``, which
add the 1/3 and 2/3 images as two more defect types. Partition, per category (cell type):

1. Each probability class is ordered by ``default_rng(split_seed(category, class))``; its first
   third (rounded down) goes to validation, the rest to test. This does not depend on the spec, so
   no image is in the validation split of one spec and the test split of another.
2. Within a split, each defect type's query size is its count minus its support pool
   (:func:`~semclip_bench.data.episodes.pool_capacity`); the query gets as many normal images as
   all defect query images together (balanced), the first ones in the normal order; the other
   normal images of the split are its ``train/good``.

``$SEMCLIP_BENCH_ELPV_ROOT`` (a folder with ``labels.csv`` and ``images/``) replaces the package,
e.g. for a clone of the dataset's repository or the test fixture.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from pathlib import Path

import numpy as np

from semclip_bench.data.episodes import POOL_SIZE, pool_capacity
from semclip_bench.data.types import NORMAL_LABEL, Sample
from semclip_bench.errors import UserError

#: Dataset names: ``elpv`` leaves the 1/3 and 2/3 images out, ``elpv-soft`` keeps them.
ELPV_NAME = "elpv"
ELPV_SOFT_NAME = "elpv-soft"
#: Split variants (``elpv:<variant>``); ``test`` is plain ``elpv``.
VARIANTS: tuple[str, ...] = ("test", "val")
#: Environment variable naming a folder with ``labels.csv`` and ``images/`` (overrides the package).
ROOT_ENV = "SEMCLIP_BENCH_ELPV_ROOT"
#: Import name of the registry package ``elpv-dataset``.
PACKAGE = "elpv_dataset"
INSTALL_HINT = 'pip install "semclip_bench[elpv]"'
#: Defect type of probability-1 images, and of the 2/3 and 1/3 images under ``elpv-soft``.
DEFECTIVE = "defective"
SOFT_TYPES: dict[str, str] = {"2/3": "uncertain_2of3", "1/3": "uncertain_1of3"}
#: Fixed seed of the val/test partition (part of the protocol; changing it changes every split).
SPLIT_SEED = 20_261_206
#: Fraction of every probability class that goes to validation.
VAL_FRACTION = 1 / 3


def parse_elpv_spec(spec: object) -> tuple[bool, str] | None:
    """``(soft, variant)`` of an ``elpv[-soft][:test|:val]`` spec, or None for other specs."""
    if not isinstance(spec, str):
        return None
    name, _, variant = spec.partition(":")
    if name not in (ELPV_NAME, ELPV_SOFT_NAME):
        return None
    variant = variant or "test"
    if variant not in VARIANTS:
        raise UserError(
            f"dataset '{spec}': unknown {name} variant '{variant}' (use '{name}' for the test "
            f"split or '{name}:val' for validation)"
        )
    return name == ELPV_SOFT_NAME, variant


def elpv_dataset_name(soft: bool, variant: str) -> str:
    """Name shown in tables: ``elpv``, ``elpv:val``, ``elpv-soft``, ``elpv-soft:val``."""
    name = ELPV_SOFT_NAME if soft else ELPV_NAME
    return name if variant == "test" else f"{name}:{variant}"


def elpv_root() -> Path:
    """Folder holding ``labels.csv`` and ``images/``: ``$SEMCLIP_BENCH_ELPV_ROOT`` or the
    installed package's ``data`` folder (found without importing it). One-line error if neither."""
    env = os.environ.get(ROOT_ENV)
    if env:
        root = Path(env).expanduser()
        if not (root / "labels.csv").is_file():
            raise UserError(f"{root}: no labels.csv (${ROOT_ENV} must name the ELPV data folder)")
        return root.resolve()
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"the elpv dataset needs the elpv-dataset package: {INSTALL_HINT}")
    root = Path(next(iter(spec.submodule_search_locations))) / "data"
    if not (root / "labels.csv").is_file():
        raise UserError(f"{root}: elpv-dataset has no data/labels.csv (reinstall: {INSTALL_HINT})")
    return root.resolve()


def _probability_class(value: float) -> str:
    """``"0"``, ``"1/3"``, ``"2/3"`` or ``"1"`` for a labels.csv probability."""
    for name, target in (("0", 0.0), ("1/3", 1 / 3), ("2/3", 2 / 3), ("1", 1.0)):
        if abs(value - target) < 1e-3:
            return name
    raise ValueError(value)


def read_labels(root: Path) -> list[tuple[Path, str, str]]:
    """(image path, probability class, cell type) of each ``labels.csv`` line, checked."""
    path = root / "labels.csv"
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        where = f"{path}:{number}"
        if len(fields) != 3:
            raise UserError(f"{where}: expected 'image probability type', got {line.strip()!r}")
        try:
            probability = _probability_class(float(fields[1]))
        except ValueError:
            raise UserError(f"{where}: probability {fields[1]!r} is not 0, 1/3, 2/3 or 1") from None
        image = root / fields[0]
        if not image.is_file():
            raise UserError(f"{where}: image file not found: {image}")
        rows.append((image, probability, fields[2]))
    if not rows:
        raise UserError(f"{path}: no images listed")
    return rows


def split_seed(category: str, probability: str) -> int:
    """Stable 64-bit seed of a (cell type, probability class) order (sha256, not ``hash``)."""
    text = f"{SPLIT_SEED}\0{category}\0{probability}".encode()
    return int.from_bytes(hashlib.sha256(text).digest()[:8], "little")


def _ordered(images: list[Path], category: str, probability: str) -> list[Path]:
    images = sorted(images)
    order = np.random.default_rng(split_seed(category, probability)).permutation(len(images))
    return [images[i] for i in order]


def elpv_samples(root: Path, soft: bool, variant: str) -> list[Sample]:
    """Samples of one split of the dataset at ``root`` (see the module docstring)."""
    types = {"1": DEFECTIVE, **(SOFT_TYPES if soft else {})}
    by_class: dict[tuple[str, str], list[Path]] = {}
    for image, probability, category in read_labels(root):
        by_class.setdefault((category, probability), []).append(image)
    samples: list[Sample] = []
    for category in sorted({c for c, _ in by_class}):
        mine: dict[str, list[Path]] = {}
        for probability in ("0", "1", "2/3", "1/3"):
            ordered = _ordered(by_class.get((category, probability), []), category, probability)
            n_val = int(len(ordered) * VAL_FRACTION)
            mine[probability] = ordered[:n_val] if variant == "val" else ordered[n_val:]
        n_query = 0
        for probability, label in types.items():
            images = mine[probability]
            n_query += len(images) - pool_capacity(len(images), POOL_SIZE)
            samples.extend(Sample(p, category, "test", label) for p in images)
        normal = mine["0"]
        if len(normal) < n_query:
            raise UserError(
                f"{root}: {category} has {len(normal)} normal {variant} images, fewer than the "
                f"{n_query} a balanced query needs"
            )
        samples.extend(Sample(p, category, "test", NORMAL_LABEL) for p in normal[:n_query])
        samples.extend(Sample(p, category, "train", NORMAL_LABEL) for p in normal[n_query:])
    return samples
