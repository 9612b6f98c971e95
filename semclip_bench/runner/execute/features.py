"""Feature cache: every frozen computation on an image is done at most once per process.

Methods split into a frozen ``extract`` and a per-episode head (see ``models/base.py``). The cache
keys extracted features by ``(method.feature_key(), image path)``, so the same image seen in
another shot count, seed or by another method with the same extraction is never recomputed.
Masks are cached by ``(path, size)``. Across processes and runs, a :class:`FeatureStore` on disk
(``runner/execute/feature_store.py``, keyed by the image's content digest) serves what memory lacks.

Precision: ``extract`` (the frozen backbone: nearly all the FLOPs) runs under :func:`autocast`
(with ``--precision bf16``); its floating outputs are stored as float32 (a lossless upcast). So the
heads (memory banks, text similarities, trained layers, kNN distances, map upsampling and Gaussian
blur) run in float32 in both precisions, when they train as when they predict, and see the same
dtypes as in the methods' own tests: bf16 there would quantise cosine logits (resolution
~0.004 / temperature) and the blurred maps into ties that move the pixel metrics, for little time
(the heads are cheap next to the backbone). With bf16 on CUDA, prediction's float32 matmuls use
TF32 (:func:`prediction_math`: rounded inputs, float32 outputs, no ties); training stays IEEE.
Images are decoded by a small thread pool (OpenCV/numpy release the GIL) while the device
extracts the previous batch; no per-image device work happens on this path.

Batch invariance: every extraction batch has exactly ``batch_size`` rows (a short last batch is
padded with zero images, whose outputs are dropped). Math libraries pick kernels, blockings and
reduction orders by a matrix's shape, so an image encoded in a batch of 7 can differ in the last
bits from the same image in a batch of 32; with one fixed shape, an image's features depend only on
the image, never on which images shared its batch. That makes the disk store, resumed runs,
``--devices N`` and ``verify`` all see exactly the features of a fresh single-process run
(``tests/runner/test_batch_invariance.py``).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import time
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from semclip_bench.data.datamodule import SampleDataset
from semclip_bench.data.images import read_mask
from semclip_bench.data.labels import NORMAL_LABEL
from semclip_bench.data.types import Sample
from semclip_bench.metrics.pixel import PixelTruth, pixel_truth
from semclip_bench.models.base import Features, FewShotMethod, InputGeometry
from semclip_bench.runner.execute.feature_store import FeatureStore, StoreKey, image_digests
from semclip_bench.runner.plan.units import EpisodeBook, Unit

log = logging.getLogger(__name__)

#: Threads decoding images for extraction (bounded; 1 = decode in the calling thread).
DECODE_THREADS = max(1, min(8, (os.cpu_count() or 1) - 1))


def resolve_precision(precision: str, device: torch.device | str) -> str:
    """``"auto"`` -> ``"fp32"`` on every device; other values are returned as is.

    Not bf16 on CUDA: bf16 moves training-free metrics by more than PROTOCOL.md's 0.5 points and
    makes the default sweep no faster, since the heads' training, not the backbone, dominates
    (results/performance.md, section "bf16 vs fp32, 1 x H200").
    """
    torch.device(device)  # validates the device name
    if precision == "auto":
        return "fp32"
    if precision not in {"fp32", "bf16"}:
        raise ValueError(f"unknown precision {precision!r}; choose from auto, fp32, bf16")
    return precision


def autocast(precision: str, device: torch.device | str) -> contextlib.AbstractContextManager:
    """The autocast context of a resolved precision: bf16 autocast, or nothing for fp32."""
    if resolve_precision(precision, device) == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16)


@contextlib.contextmanager
def prediction_math(precision: str, device: torch.device | str) -> Iterator[None]:
    """Float32 matmul mode of the heads' prediction: TF32 with bf16 on CUDA, else IEEE float32.

    TF32 rounds a float32 matmul's inputs to 10 mantissa bits (finer than the 7 of the bf16
    features they derive from) and accumulates and returns float32, so its outputs stay
    continuous: none of the quantisation into ties that keeps the heads out of bf16 (see the
    module docstring). It runs the heads' large products (SEM-CLIP's Transformation Layers,
    kNN distances) on tensor cores. fp32 runs and the CPU keep IEEE float32 matmuls (the exact
    rows). The flag is process-wide while the context is open; nothing else in a run does
    float32 matmuls meanwhile (the scoring thread sorts and counts).

    Training never uses it (:data:`HEAD_TRAINING_PRECISION`): TF32 speeds a stacked fit up but
    puts stacked and alone parameters far further apart than IEEE float32 does
    (results/performance.md, section "stack_bench | NVIDIA H200 | ViT-B-16-plus-240 | S=3 | bf16
    run, TF32 head training (ebcefe7, not adopted)"); stacking's bound (PROTOCOL.md) needs IEEE
    training.
    """
    if resolve_precision(precision, device) != "bf16" or torch.device(device).type != "cuda":
        yield
        return
    before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before


#: Lightning ``precision`` of head training in every run precision: IEEE float32, never bf16-mixed.
#: bf16-mixed fits are no faster, take more memory stacked, and let stacked and alone parameters
#: drift apart beyond stacking's bound (results/performance.md, section "stack_bench | NVIDIA
#: H200 | ViT-B-16-plus-240 | S=3 | bf16", next to its "fp32" twin). So ``--precision bf16``
#: changes the frozen extraction (and prediction's matmul mode) only: given the same features, a
#: head trains to the same parameters in both precisions.
HEAD_TRAINING_PRECISION = "32-true"


def extract_features(
    method: FewShotMethod, images: Tensor, precision: str, device: torch.device
) -> Features:
    """``method.extract(images)`` without gradients under the precision's autocast; floating
    outputs as float32 (what the heads consume in either precision)."""
    with torch.no_grad(), autocast(precision, device):
        extracted = method.extract(images.to(device, non_blocking=True))
    return {
        name: value.detach().float() if value.is_floating_point() else value.detach()
        for name, value in extracted.items()
    }


def feature_bytes(method: FewShotMethod, backbone, device: torch.device) -> int:
    """Bytes one image's features take in the cache (floating outputs as float32), measured by
    extracting one blank image at the method's input size."""
    size = method.input_geometry(backbone).size
    with torch.no_grad():
        extracted = method.extract(torch.zeros(1, 3, size, size, device=device))
    return sum(
        v.numel() * (4 if v.is_floating_point() else v.element_size()) for v in extracted.values()
    )


def _own_storage(value: Tensor) -> Tensor:
    """``value`` itself when it owns its storage, else a compact copy (no large base kept alive)."""
    if value.untyped_storage().nbytes() > value.numel() * value.element_size():
        return value.clone()
    return value


@dataclass
class CacheStats:
    hits: int = 0  # served from memory
    misses: int = 0  # not in memory: loaded from the disk store or extracted
    loaded: int = 0  # misses served by the disk store
    seconds: float = 0.0  # all of the misses' time: digests + disk loads + extraction
    digest_seconds: float = 0.0  # content digests of the missing images' files (disk store)
    load_seconds: float = 0.0  # reads from the disk store
    by_key: dict[str, list[int]] = field(default_factory=dict)  # key -> [hits, misses]

    def summary(self, disk: bool = False) -> str:
        """One line; with ``disk`` it says how many misses the disk store served."""
        total = self.hits + self.misses
        rate = 100.0 * self.hits / total if total else 0.0
        served = f"; {self.loaded} loaded from disk, {self.misses - self.loaded} extracted"
        return (
            f"feature cache: {self.hits} hits, {self.misses} misses ({rate:.0f}% hits"
            f"{served if disk else ''}), {len(self.by_key)} feature kinds, "
            f"{self.seconds:.1f}s extracting{'/loading' if disk else ''}"
            + (
                f" (of which {self.digest_seconds:.1f}s file digests, "
                f"{self.load_seconds:.1f}s disk loads)"
                if disk
                else ""
            )
        )


#: Images read from the disk store per step (threads read them; one device copy per name).
LOAD_CHUNK = 64


def _place(per_image: list[Features], device: torch.device) -> list[Features]:
    """Move the features of several images to ``device``: per name one stacked, pinned,
    non-blocking copy, then per-image views of it (as extraction stores them). On the CPU, or
    where the images' names, shapes or dtypes differ, each tensor moves as it is (same values)."""
    first = per_image[0] if per_image else {}
    uniform = device.type != "cpu" and all(
        f.keys() == first.keys()
        and all(f[n].shape == first[n].shape and f[n].dtype == first[n].dtype for n in first)
        for f in per_image
    )
    if not uniform:
        return [{n: v.to(device) for n, v in f.items()} for f in per_image]
    out: list[Features] = [{} for _ in per_image]
    for name in first:
        batch = torch.stack([f[name] for f in per_image]).pin_memory().to(device, non_blocking=True)
        for features, row in zip(out, batch.unbind(0), strict=True):
            features[name] = row
    return out


#: Extractions of at least this many images show a progress bar with ETA.
PROGRESS_MIN_IMAGES = 64


class FeatureCache:
    """In-memory cache of per-image frozen features and masks, on ``device``.

    With a :class:`FeatureStore`, images missing from memory are looked up on disk by the content
    digest of their file before being extracted, and freshly extracted features are written there
    (see ``runner/execute/feature_store.py``). ``progress``: show a progress bar when many images
    are extracted at once.
    """

    def __init__(
        self,
        device: torch.device,
        batch_size: int = 32,
        precision: str = "fp32",
        store: FeatureStore | None = None,
        progress: bool = True,
        fixed_batch: bool = True,
    ) -> None:
        self.device = device
        self.batch_size = batch_size
        self.fixed_batch = fixed_batch  # pad short batches to batch_size (see the module doc)
        self.precision = resolve_precision(precision, device)
        self.store = store
        self.progress = progress
        self._features: dict[tuple[str, str], dict[str, Tensor]] = {}
        self._masks: dict[tuple[str, int], Tensor] = {}
        self._stacked_masks: OrderedDict[tuple, Tensor] = OrderedDict()
        self._truths: OrderedDict[tuple, PixelTruth] = OrderedDict()
        self.stats = CacheStats()

    def summary(self) -> str:
        """The cache line of the run log and the provenance (memory and disk)."""
        if self.store is None:
            return self.stats.summary()
        return f"{self.stats.summary(disk=True)}; {self.store.summary()}"

    def features(
        self, method: FewShotMethod, samples: Sequence[Sample], image_size: int, mean, std
    ) -> Features:
        """Stacked features of ``samples`` (in order), extracting only the missing ones."""
        key = method.feature_key()
        self._fill(method, key, samples, image_size, mean, std)
        if not samples:
            return {}
        per_image = [self._features[(key, s.key)] for s in samples]
        return {name: torch.stack([f[name] for f in per_image]) for name in per_image[0]}

    def prefetch(
        self, method: FewShotMethod, samples: Sequence[Sample], image_size: int, mean, std
    ) -> None:
        """Load or extract the features of ``samples`` into memory (and the disk store)."""
        self._fill(method, method.feature_key(), samples, image_size, mean, std)

    def _fill(
        self, method: FewShotMethod, key: str, samples: Sequence[Sample], image_size: int, mean, std
    ) -> None:
        """Count hits and misses of ``samples``; load or extract the missing ones into memory."""
        counts = self.stats.by_key.setdefault(key, [0, 0])
        missing = [s for s in dict.fromkeys(samples) if (key, s.key) not in self._features]
        counts[0] += len(samples) - len(missing)
        counts[1] += len(missing)
        self.stats.hits += len(samples) - len(missing)
        self.stats.misses += len(missing)
        if not missing:
            return
        start = time.perf_counter()
        store_key = None
        digests: list[str | None] = [None] * len(missing)
        if self.store is not None:
            store_key = StoreKey(
                kind=method.name,
                feature_key=key,
                image_size=int(image_size),
                mean=tuple(float(v) for v in mean),
                std=tuple(float(v) for v in std),
                precision=self.precision,
                device_type=self.device.type,
            )
            digests = list(image_digests([s.image_path for s in missing]))
            loading = time.perf_counter()
            self.stats.digest_seconds += loading - start
            missing, digests = self._load_stored(key, store_key, missing, digests)
            self.stats.load_seconds += time.perf_counter() - loading
        if missing:
            self._extract(method, key, missing, digests, store_key, image_size, mean, std)
        self.stats.seconds += time.perf_counter() - start

    def _load_stored(
        self, key: str, store_key: StoreKey, samples: list[Sample], digests: list
    ) -> tuple[list[Sample], list]:
        """Fill the memory cache from the disk store; returns the samples (and digests) left.

        Files are read and unpacked by a few threads (file reads and ``torch.load`` release the
        GIL), :data:`LOAD_CHUNK` images at a time (bounds the host memory), and each chunk goes to
        the device as one pinned, non-blocking copy per feature name (:func:`_place`) -- not one
        pageable copy per tensor, each of which waits for the GPU work already queued.
        """
        store = self.store
        assert store is not None
        left: list[Sample] = []
        left_digests: list = []
        threads = min(DECODE_THREADS, len(digests))
        pool = ThreadPoolExecutor(max_workers=threads) if threads > 1 else None
        try:
            for begin in range(0, len(samples), LOAD_CHUNK):
                chunk = digests[begin : begin + LOAD_CHUNK]
                load = functools.partial(store.load, store_key)
                records = list(pool.map(load, chunk) if pool else map(load, chunk))
                found = []
                for sample, digest, stored in zip(
                    samples[begin : begin + LOAD_CHUNK], chunk, records, strict=True
                ):
                    if stored is None:
                        left.append(sample)
                        left_digests.append(digest)
                    else:
                        found.append((sample, stored))
                placed = _place([stored for _, stored in found], self.device)
                for (sample, _), features in zip(found, placed, strict=True):
                    self._features[(key, sample.key)] = features
                self.stats.loaded += len(found)
        finally:
            if pool is not None:
                pool.shutdown(wait=True)
        return left, left_digests

    def _extract(
        self,
        method: FewShotMethod,
        key: str,
        samples: list[Sample],
        digests: list,
        store_key: StoreKey | None,
        image_size: int,
        mean,
        std,
    ) -> None:
        """Extract ``samples`` in batches into memory (and queue them for the disk store)."""
        dataset = SampleDataset(samples, (NORMAL_LABEL,), image_size, mean, std)
        bar = tqdm(
            total=len(samples),
            desc=f"features {method.name}",
            unit="img",
            leave=False,
            dynamic_ncols=True,
            disable=not self.progress or len(samples) < PROGRESS_MIN_IMAGES,
        )
        begin = 0
        for images in self._batches(dataset):
            count = images.shape[0]
            if self.fixed_batch and count < self.batch_size:
                padding = images.new_zeros(self.batch_size - count, *images.shape[1:])
                images = torch.cat([images, padding])
            extracted = extract_features(method, images, self.precision, self.device)
            if images.shape[0] != count:
                extracted = {k: v[:count] for k, v in extracted.items()}
            # Per-image entries are views of the batch's (own) storage: no copies, no kernels.
            extracted = {k: _own_storage(v) for k, v in extracted.items()}
            on_host = None
            if store_key is not None:  # one device-to-host copy per batch, not per image
                on_host = {k: v.cpu() for k, v in extracted.items()}
            for row in range(count):
                sample = samples[begin + row]
                self._features[(key, sample.key)] = {
                    name: value[row] for name, value in extracted.items()
                }
                if on_host is not None and self.store is not None:
                    self.store.save(
                        store_key, digests[begin + row], {n: v[row] for n, v in on_host.items()}
                    )
            begin += count
            bar.update(count)
        bar.close()

    def _batches(self, dataset: SampleDataset) -> Iterator[Tensor]:
        """Stacked (B, 3, S, S) images of ``dataset`` in order; decoding runs ahead in threads."""
        n = len(dataset)
        pin = self.device.type == "cuda"

        def stack(items: list[Tensor]) -> Tensor:
            images = torch.stack(items)
            return images.pin_memory() if pin else images

        if DECODE_THREADS == 1 or n <= 1:
            for begin in range(0, n, self.batch_size):
                chunk = range(begin, min(begin + self.batch_size, n))
                yield stack([dataset[i]["image"] for i in chunk])
            return
        ahead = 2 * self.batch_size  # bounded read-ahead: at most ~3 batches decoded at once
        with ThreadPoolExecutor(max_workers=DECODE_THREADS) as pool:
            pending = [pool.submit(dataset.__getitem__, i) for i in range(min(n, ahead))]
            submitted = len(pending)
            for begin in range(0, n, self.batch_size):
                count = min(self.batch_size, n - begin)
                done, pending = pending[:count], pending[count:]
                more = range(submitted, min(n, submitted + count))
                pending += [pool.submit(dataset.__getitem__, i) for i in more]
                submitted += len(more)
                yield stack([future.result()["image"] for future in done])

    def masks(self, samples: Sequence[Sample], size: int) -> Tensor:
        """(N, size, size) float {0, 1} masks, nearest-resized; zeros for normal images and for
        defect images without a mask (``mask_path is None``: image-level labels only).

        The stacked result of a recent request is returned again (every method of an episode
        asks for the same query masks): treat it as read-only.
        """
        request = (tuple(s.key for s in samples), size)
        stacked = self._recent(self._stacked_masks, request)
        if stacked is not None:
            return stacked
        out = []
        for sample in samples:
            cache_key = (sample.key, size)
            if cache_key not in self._masks:
                self._masks[cache_key] = _load_mask(sample, size)
            out.append(self._masks[cache_key])
        stacked = torch.stack(out) if out else torch.zeros(0, size, size)
        self._remember(self._stacked_masks, request, stacked)
        return stacked

    def pixel_truth(
        self, samples: Sequence[Sample], size: int, map_shape: tuple[int, int]
    ) -> PixelTruth:
        """The masks' side of the pixel metrics for ``samples`` scored by (H, W) maps.

        Built once per query set (mask stacking, resizing, region labelling) and shared by every
        method scored on it; its device copies are made once too.
        """
        request = (tuple(s.key for s in samples), size, tuple(map_shape))
        truth = self._recent(self._truths, request)
        if truth is None:
            masks = self.masks(samples, size).numpy()
            truth = pixel_truth(masks, [tuple(map_shape)] * len(samples), with_regions=True)
            self._remember(self._truths, request, truth)
        return truth

    @staticmethod
    def _recent(store: OrderedDict, request: tuple):
        value = store.get(request)
        if value is not None:
            store.move_to_end(request)
        return value

    @staticmethod
    def _remember(store: OrderedDict, request: tuple, value, keep: int = 2) -> None:
        store[request] = value
        while len(store) > keep:
            store.popitem(last=False)

    def batches(
        self,
        method: FewShotMethod,
        samples: Sequence[Sample],
        image_size: int,
        mean,
        std,
        batch_size: int,
    ) -> Iterator[Features]:
        """Features of ``samples`` stacked ``batch_size`` images at a time (in order).

        Missing features are extracted (or loaded) first, at the call; the batches are then
        built one by one, so no stacked copy of the whole set is ever made.
        """
        key = method.feature_key()
        self._fill(method, key, samples, image_size, mean, std)

        def generate() -> Iterator[Features]:
            for begin in range(0, len(samples), batch_size):
                chunk = [self._features[(key, s.key)] for s in samples[begin : begin + batch_size]]
                yield {name: torch.stack([f[name] for f in chunk]) for name in chunk[0]}

        return generate()


def _load_mask(sample: Sample, size: int) -> Tensor:
    """A sample's mask at ``size`` x ``size`` with nearest-neighbour resizing."""
    import cv2

    if sample.mask_path is None:
        return torch.zeros(size, size)
    mask = read_mask(sample.mask_path).astype(np.uint8)
    resized = cv2.resize(mask, (size, size), interpolation=cv2.INTER_NEAREST)
    return torch.from_numpy(resized > 0).float()


@dataclass
class _FeatureNeed:
    """The images one feature kind is needed for, and a method that extracts it."""

    method: FewShotMethod
    geometry: InputGeometry
    #: By sample key, in the order the units first need them.
    samples: dict[str, Sample] = field(default_factory=dict)


def prefetch_units(
    units: Sequence[Unit],
    episodes: EpisodeBook,
    classes: dict[str, type[FewShotMethod]],
    backbone,
    cache: FeatureCache,
    device,
    rank: int = 0,
    world: int = 1,
) -> None:
    """Load or extract, up front, the features ``units`` need: one pass per feature kind.

    ``world == 1``: every image the units need, in full batches before the first episode (the
    episodes then only hit memory). Several processes: each (feature kind, image) is assigned to
    one rank (round robin over a list every rank builds alike); each rank extracts its share into
    the shared on-disk store, and after a barrier loads the others' shares from disk instead of
    extracting them again.
    """
    needs: dict[str, _FeatureNeed] = {}
    built: dict[tuple[str, str], FewShotMethod] = {}
    for unit in units:
        episode = episodes(unit)
        variant = unit.variant
        method_cls = classes[variant.method]
        if episode.skipped or not method_cls.runs_at(unit.shots):
            continue
        if (variant.label, unit.category) not in built:
            built[(variant.label, unit.category)] = (
                method_cls(backbone, episode.class_names, **variant.options).to(device).eval()
            )
        method = built[(variant.label, unit.category)]
        samples = method_cls.support_of(episode.normal_support, episode.defect_support_flat)
        samples += list(episode.query)
        need = needs.setdefault(
            method.feature_key(), _FeatureNeed(method, method.input_geometry(backbone))
        )
        need.samples.update((s.key, s) for s in samples)
    for need in needs.values():
        geometry = need.geometry
        mine = list(need.samples.values())[rank::world]
        cache.prefetch(need.method, mine, geometry.size, geometry.mean, geometry.std)
