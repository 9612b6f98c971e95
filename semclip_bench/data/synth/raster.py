"""The generator's own raster operations: filters, resampling, drawing, distance maps, PNG.

sem-synth's content digest must not depend on the version of a drawing library, so every
operation that decides a pixel is written here in NumPy (and SciPy's exact Euclidean distance
transform), with arithmetic that IEEE 754 fixes bit for bit:

* filters and interpolation accumulate their taps in float64 in a fixed order (no BLAS, no
  library SIMD reductions) and round to float32 once;
* transcendental functions of arrays run in float64 and are rounded to float32 (:func:`f32`), so a
  last-bit difference between NumPy's versions or CPUs almost never survives the rounding;
* PNG files are written with stored (uncompressed) deflate blocks, whose bytes are fixed by the
  pixels alone, whatever zlib, libpng or OpenCV the machine has.
"""

from __future__ import annotations

import math
import struct
import zlib
from collections.abc import Callable
from functools import lru_cache

import numpy as np


def f32(function: Callable[[np.ndarray], np.ndarray], x: np.ndarray | float) -> np.ndarray:
    """``function`` (a NumPy ufunc such as ``np.sin``) of ``x`` evaluated in float64, as float32."""
    return function(np.asarray(x, dtype=np.float64)).astype(np.float32)


def percentile_linear(values: np.ndarray, q: float) -> float:
    """The ``q``-th percentile of ``values`` by linear interpolation between order statistics,
    in float64 (NumPy's ``percentile`` of float32 data rounds differently between versions)."""
    ordered = np.sort(np.asarray(values, np.float64), axis=None)
    position = (ordered.size - 1) * (q / 100.0)
    low = math.floor(position)
    high = min(low + 1, ordered.size - 1)
    fraction = position - low
    return float(ordered[low] + (ordered[high] - ordered[low]) * fraction)


def _reflect101(index: np.ndarray, n: int) -> np.ndarray:
    """Indices mirrored at the borders without repeating the edge (``dcb|abcd|cba``)."""
    if n == 1:
        return np.zeros_like(index)
    period = 2 * n - 2
    j = np.mod(index, period)
    return np.where(j >= n, period - j, j)


def _reflect(index: np.ndarray, n: int) -> np.ndarray:
    """Indices mirrored at the borders, repeating the edge (``cba|abcd|dcb``)."""
    period = 2 * n
    j = np.mod(index, period)
    return np.where(j >= n, period - 1 - j, j)


def _correlate_axis(image: np.ndarray, weights: np.ndarray, axis: int) -> np.ndarray:
    """float64 correlation of ``image`` with the odd-length ``weights`` along ``axis``, borders
    mirrored without repeating the edge; taps are added in order (a fixed sum)."""
    radius = len(weights) // 2
    n = image.shape[axis]
    offsets = np.arange(-radius, radius + 1)
    index = _reflect101(np.arange(n)[:, None] + offsets[None, :], n)  # (n, taps)
    out = np.zeros(image.shape, np.float64)
    for tap, weight in enumerate(weights):
        if weight != 0.0:
            out += weight * np.take(image, index[:, tap], axis=axis)
    return out


def sobel(image: np.ndarray, axis: int) -> np.ndarray:
    """3x3 Sobel derivative along ``axis`` (1 = x, 0 = y) scaled by 1/8, as float32."""
    data = np.asarray(image, np.float64)
    derivative = _correlate_axis(data, np.array([-1.0, 0.0, 1.0]), axis)
    return (_correlate_axis(derivative, np.array([1.0, 2.0, 1.0]), 1 - axis) * 0.125).astype(
        np.float32
    )


@lru_cache(maxsize=256)
def gaussian_weights(sigma: float) -> tuple[float, ...]:
    """Normalised Gaussian taps of std ``sigma`` over +-ceil(4 sigma) (at least +-1)."""
    radius = max(math.ceil(4.0 * sigma), 1)
    taps = [math.exp(-(k * k) / (2.0 * sigma * sigma)) for k in range(-radius, radius + 1)]
    total = math.fsum(taps)
    return tuple(t / total for t in taps)


def gaussian_blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of a 2-D image (borders mirrored), as float32."""
    weights = np.array(gaussian_weights(float(sigma)))
    rows = _correlate_axis(np.asarray(image, np.float64), weights, 0)
    return _correlate_axis(rows, weights, 1).astype(np.float32)


@lru_cache(maxsize=64)
def _cubic_taps(cells: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(indices, weights), each (size, 4): cubic convolution (Keys, a = -0.5) from ``cells``
    samples to ``size`` pixels with pixel centres aligned, borders clamped."""
    x = (np.arange(size, dtype=np.float64) + 0.5) * (cells / size) - 0.5
    left = np.floor(x)
    t = x - left
    a = -0.5
    d = np.stack([1.0 + t, t, 1.0 - t, 2.0 - t], axis=1)  # distances to the 4 taps
    near = ((a + 2.0) * d - (a + 3.0)) * d * d + 1.0  # |d| <= 1
    far = ((a * d - 5.0 * a) * d + 8.0 * a) * d - 4.0 * a  # 1 < |d| < 2
    weights = np.where(d <= 1.0, near, far)
    index = np.clip(left[:, None].astype(np.int64) + np.arange(-1, 3)[None, :], 0, cells - 1)
    index.flags.writeable = False
    weights.flags.writeable = False
    return index, weights


def resize_cubic(coarse: np.ndarray, size: int) -> np.ndarray:
    """Cubic-convolution upsampling of a square ``cells`` x ``cells`` lattice to ``size`` px."""
    cells = coarse.shape[0]
    index, weights = _cubic_taps(cells, size)
    data = np.asarray(coarse, np.float64)
    rows = np.zeros((size, cells), np.float64)
    for tap in range(4):
        rows += weights[:, tap, None] * data[index[:, tap], :]
    out = np.zeros((size, size), np.float64)
    for tap in range(4):
        out += weights[None, :, tap] * rows[:, index[:, tap]]
    return out.astype(np.float32)


def remap_bilinear(image: np.ndarray, map_x: np.ndarray, map_y: np.ndarray) -> np.ndarray:
    """``image`` sampled at (``map_y``, ``map_x``) with bilinear interpolation, borders mirrored
    with the edge repeated, as float32."""
    h, w = image.shape
    data = np.asarray(image, np.float64)
    x = np.asarray(map_x, np.float64)
    y = np.asarray(map_y, np.float64)
    x0, y0 = np.floor(x), np.floor(y)
    fx, fy = x - x0, y - y0
    x0i, y0i = x0.astype(np.int64), y0.astype(np.int64)
    xa, xb = _reflect(x0i, w), _reflect(x0i + 1, w)
    ya, yb = _reflect(y0i, h), _reflect(y0i + 1, h)
    top = (1.0 - fx) * data[ya, xa] + fx * data[ya, xb]
    bottom = (1.0 - fx) * data[yb, xa] + fx * data[yb, xb]
    return ((1.0 - fy) * top + fy * bottom).astype(np.float32)


def dilate3(mask: np.ndarray) -> np.ndarray:
    """Binary dilation by a 3x3 square (pixels outside the image count as off)."""
    padded = np.pad(np.asarray(mask, bool), 1)
    h, w = mask.shape
    out = np.zeros((h, w), bool)
    for dy in range(3):
        for dx in range(3):
            out |= padded[dy : dy + h, dx : dx + w]
    return out


def polyline_pixels(points_xy: np.ndarray) -> np.ndarray:
    """(N, 2) integer (x, y) pixels of the 1-pixel polyline through ``points_xy`` (integers):
    each segment steps one pixel along its longer axis and rounds the other (half to even)."""
    points = np.asarray(points_xy, np.int64)
    start, end = points[:-1], points[1:]
    delta = end - start
    steps = np.maximum(np.abs(delta).max(axis=1), 1)
    segment = np.repeat(np.arange(len(steps)), steps + 1)
    k = np.arange(len(segment)) - np.repeat(np.cumsum(steps + 1) - (steps + 1), steps + 1)
    frac = k / steps[segment]
    xy = start[segment] + np.rint(delta[segment] * frac[:, None]).astype(np.int64)
    return xy


def nearest_zero(image: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(Euclidean distance as float32, row, column) of every pixel's nearest zero pixel.

    SciPy's exact Euclidean distance transform: integer arithmetic, so the same on every
    machine (not a chamfer approximation)."""
    from scipy.ndimage import distance_transform_edt

    dist, (rows, cols) = distance_transform_edt(
        np.asarray(image) != 0, return_distances=True, return_indices=True
    )
    return dist.astype(np.float32), rows, cols


def zero_labels(image: np.ndarray) -> np.ndarray:
    """int32 label of every pixel's nearest zero pixel: zero pixels are numbered 1, 2, ... in
    scan order (the Voronoi cells of the zero pixels)."""
    zero = np.asarray(image) == 0
    rank = np.cumsum(zero.ravel(), dtype=np.int64).reshape(zero.shape).astype(np.int32)
    _, rows, cols = nearest_zero(image)
    return rank[rows, cols]


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def encode_png(image: np.ndarray) -> bytes:
    """PNG bytes of a 2-D uint8 or uint16 grayscale image, with stored (uncompressed) deflate
    blocks: the bytes depend on the pixels alone, never on a compression library's version."""
    if image.ndim != 2 or image.dtype not in (np.uint8, np.uint16):
        raise ValueError(
            f"encode_png takes 2-D uint8 or uint16 images, got {image.dtype} {image.shape}"
        )
    h, w = image.shape
    depth = 8 if image.dtype == np.uint8 else 16
    rows = np.ascontiguousarray(image.astype(">u2") if depth == 16 else image).view(np.uint8)
    raw = np.concatenate([np.zeros((h, 1), np.uint8), rows.reshape(h, -1)], axis=1).tobytes()
    blocks = []
    limit = 65535
    for start in range(0, max(len(raw), 1), limit):
        piece = raw[start : start + limit]
        final = 1 if start + limit >= len(raw) else 0
        blocks.append(bytes([final]) + struct.pack("<HH", len(piece), 0xFFFF ^ len(piece)) + piece)
    stream = b"\x78\x01" + b"".join(blocks) + struct.pack(">I", zlib.adler32(raw))
    header = struct.pack(">IIBBBBB", w, h, depth, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", stream)
        + _png_chunk(b"IEND", b"")
    )
