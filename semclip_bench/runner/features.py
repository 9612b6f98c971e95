"""Feature cache: every frozen computation on an image is done at most once per process.

Methods split into a frozen ``extract`` and a per-episode head (see ``models/base.py``). The cache
keys extracted features by ``(method.feature_key(), image path)``, so the same image seen in
another shot count, seed or by another method with the same extraction is never recomputed.
Masks are cached by ``(path, size)``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from semclip_bench.data.datamodule import SampleDataset
from semclip_bench.data.images import read_mask
from semclip_bench.data.types import Sample
from semclip_bench.models.base import Features, FewShotMethod

log = logging.getLogger(__name__)


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

    def __init__(self, device: torch.device, batch_size: int = 32) -> None:
        self.device = device
        self.batch_size = batch_size
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
            for begin in range(0, len(missing), self.batch_size):
                chunk = range(begin, min(begin + self.batch_size, len(missing)))
                images = torch.stack([dataset[i]["image"] for i in chunk]).to(self.device)
                with torch.no_grad():
                    extracted = method.extract(images)
                for row, i in enumerate(chunk):
                    self._features[(key, missing[i].key)] = {
                        name: value[row].detach().clone() for name, value in extracted.items()
                    }
            self.stats.seconds += time.perf_counter() - start
        if not samples:
            return {}
        per_image = [self._features[(key, s.key)] for s in samples]
        return {name: torch.stack([f[name] for f in per_image]) for name in per_image[0]}

    def masks(self, samples: Sequence[Sample], size: int) -> Tensor:
        """(N, size, size) float {0, 1} masks, nearest-resized; zeros for normal images."""
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
