"""Memory of the pixel metrics per pixel: the 33 M-pixel case must fit in 2 GB."""

from __future__ import annotations

import tracemalloc

import numpy as np

from semclip_bench.metrics import evaluate

# 2 GiB for 500 maps of 256 x 256 = 65 bytes per pixel, of which the inputs (float32 maps and
# bool masks) take 5. The working memory measured at full size is ~40 bytes per pixel
# (python -m benchmarks.metrics_bench); small inputs carry some fixed overhead on top.
BYTES_PER_PIXEL_LIMIT = 60


def test_evaluate_working_memory_per_pixel() -> None:
    rng = np.random.default_rng(0)
    masks = np.zeros((20, 128, 128), dtype=bool)
    masks[1::2, 30:60, 40:90] = True
    masks[1::4, 5:7, 5:6] = True
    maps = rng.standard_normal(masks.shape, dtype=np.float32) + masks
    scores = maps.reshape(20, -1).max(axis=1)
    labels = masks.reshape(20, -1).any(axis=1)
    tracemalloc.start()
    try:
        result = evaluate(scores, labels, maps=maps, masks=masks)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert 0.0 < result["AUPRO"] < 1.0
    assert peak / maps.size < BYTES_PER_PIXEL_LIMIT
