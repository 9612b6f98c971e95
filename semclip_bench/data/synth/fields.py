"""Small vectorised building blocks shared by the pattern, defect and imaging code."""

from __future__ import annotations

from functools import lru_cache

import cv2
import numpy as np


@lru_cache(maxsize=8)
def pixel_grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Read-only (y, x) float32 pixel-centre coordinate maps of a ``size`` x ``size`` image."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    yy.flags.writeable = False
    xx.flags.writeable = False
    return yy, xx


def smooth_noise(rng: np.random.Generator, size: int, corr_px: float) -> np.ndarray:
    """Zero-mean Gaussian random field (std about 1) with correlation length ``corr_px`` pixels.

    Drawn on a coarse lattice and upsampled with cubic interpolation (one ``cv2.resize``), which
    is far cheaper than filtering a full-resolution white noise image.
    """
    corr_px = max(float(corr_px), 1.0)
    if corr_px <= 1.0:
        return rng.standard_normal((size, size), dtype=np.float32)
    cells = int(np.ceil(size / corr_px)) + 1
    coarse = rng.standard_normal((cells, cells), dtype=np.float32)
    field = cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC)
    # Cubic upsampling shrinks the variance; rescale with the std of a fixed subsample.
    sub = field[:: max(size // 32, 1), :: max(size // 32, 1)]
    return field * np.float32(1.0 / max(float(sub.std()), 1e-3))


def smoothstep(signed_distance: np.ndarray, softness: float) -> np.ndarray:
    """Soft indicator of ``signed_distance > 0`` with a linear ramp of ``softness`` pixels."""
    return np.clip(0.5 + signed_distance / max(softness, 1e-3), 0.0, 1.0).astype(np.float32)


def rotate(yy: np.ndarray, xx: np.ndarray, degrees: float, cy: float, cx: float):
    """Coordinates (u across, v along) of a frame rotated by ``degrees`` about (cy, cx)."""
    t = np.deg2rad(degrees)
    c, s = np.float32(np.cos(t)), np.float32(np.sin(t))
    dx, dy = xx - np.float32(cx), yy - np.float32(cy)
    return dx * c + dy * s, -dx * s + dy * c


def log_uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    """One draw, uniform in log space between ``lo`` and ``hi``."""
    return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))
