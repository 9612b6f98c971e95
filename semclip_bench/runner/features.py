"""Feature cache: every frozen computation on an image is done at most once per process.

Methods split into a frozen ``extract`` and a per-episode head (see ``models/base.py``). The cache
keys extracted features by ``(method.feature_key(), image path)``, so the same image seen in
another shot count, seed or by another method with the same extraction is never recomputed.
Masks are cached by ``(path, size)``.

Precision: ``extract`` (the frozen backbone: nearly all the FLOPs) runs under :func:`autocast`
(bf16 on CUDA by default); its floating outputs are stored as float32 (a lossless upcast). So the
heads (memory banks, text similarities, trained layers, kNN distances, map upsampling and Gaussian
blur) run in float32 in both precisions and see the same dtypes as in the methods' own tests:
bf16 there would quantise cosine logits (resolution ~0.004 / temperature) and the blurred maps into
ties that move the pixel metrics, for little time (the heads are cheap next to the backbone).
Images are decoded by a small thread pool (OpenCV/numpy release the GIL) while the device
extracts the previous batch; no per-image device work happens on this path.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from semclip_bench.data.datamodule import SampleDataset
from semclip_bench.data.images import read_mask
from semclip_bench.data.types import Sample
from semclip_bench.models.base import Features, FewShotMethod

log = logging.getLogger(__name__)

#: Threads decoding images for extraction (bounded; 1 = decode in the calling thread).
DECODE_THREADS = max(1, min(8, (os.cpu_count() or 1) - 1))


def resolve_precision(precision: str, device: torch.device | str) -> str:
    """``"auto"`` -> ``"bf16"`` on CUDA, ``"fp32"`` elsewhere; other values are returned as is."""
    device_type = torch.device(device).type
    if precision == "auto":
        return "bf16" if device_type == "cuda" else "fp32"
    if precision not in {"fp32", "bf16"}:
        raise ValueError(f"unknown precision {precision!r}; choose from auto, fp32, bf16")
    return precision


def autocast(precision: str, device: torch.device | str) -> contextlib.AbstractContextManager:
    """The autocast context of a resolved precision: bf16 autocast, or nothing for fp32."""
    if resolve_precision(precision, device) == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16)


def trainer_precision(precision: str, device: torch.device | str) -> str:
    """Lightning ``precision`` for head training: ``"bf16-mixed"`` with bf16, else ``"32-true"``."""
    return "bf16-mixed" if resolve_precision(precision, device) == "bf16" else "32-true"


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


def _own_storage(value: Tensor) -> Tensor:
    """``value`` itself when it owns its storage, else a compact copy (no large base kept alive)."""
    if value.untyped_storage().nbytes() > value.numel() * value.element_size():
        return value.clone()
    return value


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    seconds: float = 0.0
    by_key: dict[str, list[int]] = field(default_factory=dict)  # key -> [hits, misses]

    def summary(self) -> str:
        total = self.hits + self.misses
        rate = 100.0 * self.hits / total if total else 0.0
        return (
            f"feature cache: {self.hits} hits, {self.misses} misses ({rate:.0f}% hits), "
            f"{len(self.by_key)} feature kinds, {self.seconds:.1f}s extracting"
        )


class FeatureCache:
    """In-memory cache of per-image frozen features and masks, on ``device``."""

    def __init__(self, device: torch.device, batch_size: int = 32, precision: str = "fp32") -> None:
        self.device = device
        self.batch_size = batch_size
        self.precision = resolve_precision(precision, device)
        self._features: dict[tuple[str, str], dict[str, Tensor]] = {}
        self._masks: dict[tuple[str, int], Tensor] = {}
        self.stats = CacheStats()

    def features(
        self, method: FewShotMethod, samples: Sequence[Sample], image_size: int, mean, std
    ) -> Features:
        """Stacked features of ``samples`` (in order), extracting only the missing ones."""
        import time

        key = method.feature_key()
        counts = self.stats.by_key.setdefault(key, [0, 0])
        missing = [s for s in dict.fromkeys(samples) if (key, s.key) not in self._features]
        counts[0] += len(samples) - len(missing)
        counts[1] += len(missing)
        self.stats.hits += len(samples) - len(missing)
        self.stats.misses += len(missing)
        if missing:
            start = time.perf_counter()
            dataset = SampleDataset(missing, ("good",), image_size, mean, std)
            begin = 0
            for images in self._batches(dataset):
                extracted = extract_features(method, images, self.precision, self.device)
                # Per-image entries are views of the batch's (own) storage: no copies, no kernels.
                extracted = {k: _own_storage(v) for k, v in extracted.items()}
                for row in range(images.shape[0]):
                    self._features[(key, missing[begin + row].key)] = {
                        name: value[row] for name, value in extracted.items()
                    }
                begin += images.shape[0]
            self.stats.seconds += time.perf_counter() - start
        if not samples:
            return {}
        per_image = [self._features[(key, s.key)] for s in samples]
        return {name: torch.stack([f[name] for f in per_image]) for name in per_image[0]}

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
        defect images without a mask (``mask_path is None``: image-level labels only)."""
        out = []
        for sample in samples:
            cache_key = (sample.key, size)
            if cache_key not in self._masks:
                self._masks[cache_key] = _load_mask(sample, size)
            out.append(self._masks[cache_key])
        if not out:
            return torch.zeros(0, size, size)
        return torch.stack(out)


def _load_mask(sample: Sample, size: int) -> Tensor:
    """A sample's mask at ``size`` x ``size`` with nearest-neighbour resizing."""
    import cv2

    if sample.mask_path is None:
        return torch.zeros(size, size)
    mask = read_mask(sample.mask_path).astype(np.uint8)
    resized = cv2.resize(mask, (size, size), interpolation=cv2.INTER_NEAREST)
    return torch.from_numpy(resized > 0).float()
