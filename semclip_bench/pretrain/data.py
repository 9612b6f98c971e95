"""Image-caption data for contrastive pretraining: on-the-fly sem-synth renders or a captions CSV.

sem-synth stream: sample ``i`` of data seed ``s`` is the image ``render_image(SynthConfig(seed=s),
category, split, label, i)`` with ``(category, label)`` drawn from a generator seeded by ``(s, i)``
(label mix: :data:`NORMAL_FRACTION` normal, the rest spread evenly over :data:`SEEN_TYPES`), so
every sample is a pure function of ``(s, i)``. Seeds below :data:`MIN_PRETRAIN_SEED` are refused:
the benchmark's sem-synth data uses seed 0, and pretraining must never see it. Rendering happens
in the DataLoader workers, each worker taking every ``n``-th index of the stream.

Captions CSV: columns ``image_path`` (absolute, or relative to the CSV's folder) and ``caption``.
"""

from __future__ import annotations

import csv
import itertools
import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset, IterableDataset, get_worker_info

from semclip_bench.data.labels import EXCLUDED_TYPES, SEEN_TYPES
from semclip_bench.data.synth import FAMILIES, SynthConfig, render_image
from semclip_bench.data.types import NORMAL_LABEL
from semclip_bench.errors import UserError
from semclip_bench.pretrain.captions import caption_from_meta

#: Smallest sem-synth seed allowed for pretraining data (benchmark data uses seed 0).
MIN_PRETRAIN_SEED = 100_000
#: Default seed of the pretraining images.
DEFAULT_PRETRAIN_SEED = 100_000
#: Seed of the held-out retrieval images (disjoint from training and benchmark data).
RETRIEVAL_SEED = 900_000
#: Fraction of normal images in the sem-synth stream.
NORMAL_FRACTION = 0.4

#: CLIP's image normalisation (open_clip's OPENAI_DATASET_MEAN / STD).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def check_pretrain_seed(seed: int, option: str = "--synth-seed") -> int:
    """Return ``seed`` if it is a valid pretraining data seed, else raise UserError."""
    if not isinstance(seed, int) or seed < MIN_PRETRAIN_SEED:
        raise UserError(
            f"option {option} must be >= {MIN_PRETRAIN_SEED} (seeds below are reserved for "
            f"benchmark data), got {seed!r}"
        )
    return seed


def sample_plan(seed: int, i: int) -> tuple[str, str, str]:
    """(category, split, label) of sample ``i`` of the sem-synth stream with data seed ``seed``."""
    rng = np.random.default_rng([seed, i, 7])
    category = FAMILIES[int(rng.integers(len(FAMILIES)))]
    if rng.random() < NORMAL_FRACTION:
        return category, "train", NORMAL_LABEL
    label = SEEN_TYPES[int(rng.integers(len(SEEN_TYPES)))]
    if label in EXCLUDED_TYPES:  # pragma: no cover - the held-out protocol, see captions.py
        raise RuntimeError(f"held-out defect type {label} drawn for pretraining")
    return category, "test", label


def render_sample(config: SynthConfig, i: int) -> tuple[np.ndarray, dict[str, Any]]:
    """Render sample ``i`` of the stream of ``config.seed``: (gray image, meta)."""
    category, split, label = sample_plan(config.seed, i)
    if label in EXCLUDED_TYPES:  # pragma: no cover - sample_plan never draws them
        raise RuntimeError(f"held-out defect type {label} drawn for pretraining")
    result = render_image(config, category, split, label, i)
    return result.image, result.meta


def to_unit_float(image: np.ndarray) -> np.ndarray:
    """uint8 / uint16 / float image -> float32 in [0, 1]."""
    if image.dtype == np.uint8:
        return image.astype(np.float32) / 255.0
    if image.dtype == np.uint16:
        return image.astype(np.float32) / 65535.0
    return np.clip(image.astype(np.float32), 0.0, 1.0)


def dihedral_meta(meta: dict[str, Any], k: int, flip: bool, size: int) -> dict[str, Any]:
    """Meta after ``np.rot90(image, k)`` then an optional left-right flip.

    Updates what the caption reads: line orientation and the defect centroid.
    """
    out = dict(meta)
    theta = float(meta.get("orientation_deg", 0.0))
    cy, cx = meta["centroid_yx"] if meta.get("centroid_yx") is not None else (None, None)
    for _ in range(k % 4):  # rot90 counter-clockwise: (y, x) -> (size-1-x, y); lines turn 90 deg
        theta += 90.0
        if cy is not None:
            cy, cx = size - 1 - cx, cy
    if flip:
        theta = 180.0 - theta
        if cx is not None:
            cx = size - 1 - cx
    out["orientation_deg"] = theta % 180.0
    if cy is not None:
        out["centroid_yx"] = [cy, cx]
    return out


def resize_unit(image: np.ndarray, size: int) -> np.ndarray:
    """Gray (H, W) or (H, W, C) image -> float32 in [0, 1] resized to (size, size[, C]).

    Area interpolation when shrinking and bilinear when enlarging (as the data module does).
    """
    img = to_unit_float(np.ascontiguousarray(image))
    h, w = img.shape[:2]
    if (h, w) != (size, size):
        shrink = size < h or size < w
        img = cv2.resize(
            img, (size, size), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
        )
    return img


def unit_tensor(image: np.ndarray, size: int) -> torch.Tensor:
    """Compact model input before normalisation: float16 (C, size, size) in [0, 1], C in {1, 3}.

    Workers send this (one gray channel, half precision: 6x less than normalised RGB float32)
    and :func:`normalise_batch` finishes on the training device.
    """
    img = resize_unit(image, size)
    t = torch.from_numpy(img)
    t = t.unsqueeze(0) if t.ndim == 2 else t.permute(2, 0, 1)[:3]
    if t.shape[0] == 2:
        t = t[:1]
    return t.to(torch.float16).contiguous()


def normalise_batch(
    x: torch.Tensor, mean: Sequence[float] = CLIP_MEAN, std: Sequence[float] = CLIP_STD
) -> torch.Tensor:
    """(B, 1 or 3, S, S) values in [0, 1] -> float32 (B, 3, S, S) normalised with mean / std."""
    x = x.float()
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x - m) / s


def prepare_image(
    image: np.ndarray, size: int, mean: Sequence[float] = CLIP_MEAN, std: Sequence[float] = CLIP_STD
) -> torch.Tensor:
    """Gray (H, W) or (H, W, C) image -> normalised float32 tensor (3, size, size)."""
    img = resize_unit(image, size)
    t = torch.from_numpy(img)
    t = t.unsqueeze(0) if t.ndim == 2 else t.permute(2, 0, 1)[:3]
    if t.shape[0] != 3:
        t = t[:1]
    return normalise_batch(t.unsqueeze(0), mean, std)[0]


def random_dihedral(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, int, bool]:
    """``np.rot90(image, k)`` then a left-right flip with probability 1/2 (k, flip drawn from
    ``rng`` in that order); returns (view, k, flip). The augmentation of the pretraining streams."""
    k, flip = int(rng.integers(4)), bool(rng.random() < 0.5)
    image = np.rot90(image, k)
    if flip:
        image = image[:, ::-1]
    return image, k, flip


def worker_slot() -> tuple[int, int]:
    """(worker id, number of workers) of the calling DataLoader worker; (0, 1) in the main
    process."""
    info = get_worker_info()
    return (info.id, info.num_workers) if info is not None else (0, 1)


def shard_indices(start: int, rank: int, world_size: int) -> Iterator[int]:
    """Endless sample indices of this (rank, worker): index ``j`` of worker ``w`` on rank ``r``
    of ``R`` ranks with ``W`` workers is ``start + (j * R + r) * W + w`` (disjoint shards)."""
    w, n_workers = worker_slot()
    j = 0
    while True:
        yield start + (j * world_size + rank) * n_workers + w
        j += 1


def shard_share(length: int | None, rank: int, world_size: int) -> float:
    """How many of a ``length``-long stream's items this (rank, worker) yields (inf if endless)."""
    if length is None:
        return math.inf
    w, n_workers = worker_slot()
    return len(range(rank * n_workers + w, int(length), world_size * n_workers))


class _Tokenize:
    """Lazily built open_clip tokenizer (built in each worker, not pickled)."""

    def __init__(self, arch: str) -> None:
        self.arch = arch
        self._tok = None

    def __call__(self, text: str) -> torch.Tensor:
        if self._tok is None:
            import open_clip

            import semclip_bench.backbones  # noqa: F401 - registers the project's model configs

            self._tok = open_clip.get_tokenizer(self.arch)
        return self._tok([text])[0]

    def __getstate__(self) -> dict[str, Any]:
        return {"arch": self.arch, "_tok": None}


class SynthCaptionStream(IterableDataset):
    """Endless (or ``length``-long) stream of rendered sem-synth images with fresh captions.

    Items are dicts {"image": float16 (1, S, S) in [0, 1] (see :func:`unit_tensor`), "text":
    (context,) token ids, "caption": str, "index": int (the render index)}. With ``augment`` a
    random dihedral transform (rot90 x flip) is applied and the caption follows it (orientation,
    location). Renders are sharded by (rank, worker): render ``j`` of worker ``w`` on rank ``r``
    of ``R`` ranks with ``W`` workers is index ``start + (j * R + r) * W + w``.

    ``reuse`` > 1 (renderer-bound GPU runs): each worker keeps a buffer of ``buffer_size``
    renders, yields them in a random permutation (so a worker's batch of ``buffer_size`` holds
    each image once) with fresh augmentation and caption phrasing, then replaces
    ``buffer_size / reuse`` random slots with new renders; each image is used ``reuse`` times on
    average. ``reuse`` = 1: every item is a new render, item ``i`` = :meth:`item` (i).
    """

    def __init__(
        self,
        arch: str,
        image_size: int,
        *,
        seed: int = DEFAULT_PRETRAIN_SEED,
        render_size: int = 256,
        augment: bool = True,
        start: int = 0,
        length: int | None = None,
        rank: int = 0,
        world_size: int = 1,
        reuse: int = 1,
        buffer_size: int = 256,
    ) -> None:
        super().__init__()
        check_pretrain_seed(seed)
        if reuse < 1 or buffer_size < 1:
            raise UserError("pretrain options --reuse and --buffer-size must be >= 1")
        self.config = SynthConfig(seed=seed, image_size=render_size)
        self.image_size = image_size
        self.augment = augment
        self.start = start
        self.length = length
        self.rank, self.world_size = rank, world_size
        self.reuse, self.buffer_size = reuse, buffer_size
        self.tokenize = _Tokenize(arch)

    def view(
        self, image: np.ndarray, meta: dict[str, Any], rng: np.random.Generator, index: int
    ) -> dict[str, Any]:
        """One training item of a render: augmentation, caption, tokens (randomness from rng)."""
        if self.augment:
            image, k, flip = random_dihedral(image, rng)
            meta = dihedral_meta(meta, k, flip, self.config.image_size)
        caption = caption_from_meta(meta, rng)
        return {
            "image": unit_tensor(image, self.image_size),
            "text": self.tokenize(caption),
            "caption": caption,
            "index": index,
        }

    def item(self, i: int) -> dict[str, Any]:
        """Sample ``i`` of the stream without reuse (pure function of seed, i, augment)."""
        image, meta = render_sample(self.config, i)
        return self.view(image, meta, np.random.default_rng([self.config.seed, i, 11]), i)

    def _render_indices(self) -> Iterator[int]:
        return shard_indices(self.start, self.rank, self.world_size)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        w = worker_slot()[0]
        share = shard_share(self.length, self.rank, self.world_size)
        indices = self._render_indices()
        emitted = 0
        if self.reuse == 1:
            for i in indices:
                if emitted >= share:
                    return
                yield self.item(i)
                emitted += 1
        rng = np.random.default_rng([self.config.seed, self.start, self.rank, w, 13])
        buffer = [
            (i, *render_sample(self.config, i)) for i in itertools.islice(indices, self.buffer_size)
        ]
        n_new = max(1, round(self.buffer_size / self.reuse))
        while True:
            for slot in rng.permutation(len(buffer)):
                if emitted >= share:
                    return
                i, image, meta = buffer[slot]
                yield self.view(image, meta, rng, i)
                emitted += 1
            for slot in rng.choice(len(buffer), size=min(n_new, len(buffer)), replace=False):
                i = next(indices)
                buffer[slot] = (i, *render_sample(self.config, i))


def read_captions_csv(path: str | Path) -> list[tuple[Path, str]]:
    """Rows (image path, caption) of a captions CSV; UserError naming the file or image."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"captions CSV {path} does not exist")
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        fields = reader.fieldnames or []
        missing = [c for c in ("image_path", "caption") if c not in fields]
        if missing:
            raise UserError(
                f"captions CSV {path} lacks column(s) {', '.join(missing)} "
                f"(needs image_path,caption; has {', '.join(fields) or 'none'})"
            )
        rows = []
        for line, row in enumerate(reader, start=2):
            image = Path((row.get("image_path") or "").strip())
            caption = (row.get("caption") or "").strip()
            if not str(image) or str(image) == "." or not caption:
                raise UserError(f"captions CSV {path} line {line}: empty image_path or caption")
            if not image.is_absolute():
                image = path.parent / image
            if not image.is_file():
                raise UserError(f"captions CSV {path} line {line}: image {image} does not exist")
            rows.append((image, caption))
    if not rows:
        raise UserError(f"captions CSV {path} has no rows")
    return rows


class CaptionCsvDataset(Dataset):
    """Map-style dataset over a captions CSV (same item dicts as :class:`SynthCaptionStream`).

    Augmentation is a random flip / 90-degree rotation of the image only (the captions of a
    fab's archive are not assumed to describe orientation).
    """

    def __init__(self, path: str | Path, arch: str, image_size: int, augment: bool = True) -> None:
        self.rows = read_captions_csv(path)
        self.image_size = image_size
        self.augment = augment
        self.tokenize = _Tokenize(arch)
        self.epoch_seed = 0

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, Any]:
        from semclip_bench.data.images import read_image

        path, caption = self.rows[i]
        try:
            image = read_image(path)
        except UserError:
            raise
        except Exception as exc:  # unreadable file: name it
            raise UserError(f"captions CSV image {path} cannot be read ({exc})") from exc
        if image.ndim == 3:  # SEM archives are gray: one channel keeps batches stackable
            image = image[..., :3].mean(axis=2)
        if self.augment:
            k, flip = int(torch.randint(4, ())), bool(torch.rand(()) < 0.5)
            image = np.rot90(image, k)
            if flip:
                image = image[:, ::-1]
        return {
            "image": unit_tensor(image, self.image_size),
            "text": self.tokenize(caption),
            "caption": caption,
            "index": i,
        }


__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "DEFAULT_PRETRAIN_SEED",
    "MIN_PRETRAIN_SEED",
    "NORMAL_FRACTION",
    "RETRIEVAL_SEED",
    "CaptionCsvDataset",
    "SynthCaptionStream",
    "check_pretrain_seed",
    "dihedral_meta",
    "normalise_batch",
    "prepare_image",
    "random_dihedral",
    "read_captions_csv",
    "render_sample",
    "resize_unit",
    "sample_plan",
    "shard_indices",
    "shard_share",
    "unit_tensor",
    "worker_slot",
]
