"""A small bundled 5 x 7 bitmap font for the data bar, drawn with supersampled anti-aliasing.

The glyphs are this project's own (``#`` = ink). Rendering is integer arithmetic on a fixed
supersampling grid, so the same text gives the same pixels on every machine.
"""

from __future__ import annotations

from functools import cache

import numpy as np

GLYPH_ROWS = 7
GLYPH_COLS = 5
#: Columns from one glyph's left edge to the next one's (one blank column between glyphs).
ADVANCE = GLYPH_COLS + 1
#: Subsamples per output pixel along each axis (coverage in steps of 1 / SUPERSAMPLE**2).
SUPERSAMPLE = 4

_GLYPHS: dict[str, tuple[str, ...]] = {
    " ": (".....", ".....", ".....", ".....", ".....", ".....", "....."),
    ".": (".....", ".....", ".....", ".....", ".....", ".##..", ".##.."),
    "=": (".....", ".....", "#####", ".....", "#####", ".....", "....."),
    "(": ("...#.", "..#..", ".#...", ".#...", ".#...", "..#..", "...#."),
    ")": (".#...", "..#..", "...#.", "...#.", "...#.", "..#..", ".#..."),
    "-": (".....", ".....", ".....", "#####", ".....", ".....", "....."),
    "0": (".###.", "#...#", "#..##", "#.#.#", "##..#", "#...#", ".###."),
    "1": ("..#..", ".##..", "..#..", "..#..", "..#..", "..#..", ".###."),
    "2": (".###.", "#...#", "....#", "...#.", "..#..", ".#...", "#####"),
    "3": ("####.", "....#", "....#", ".###.", "....#", "....#", "####."),
    "4": ("...#.", "..##.", ".#.#.", "#..#.", "#####", "...#.", "...#."),
    "5": ("#####", "#....", "####.", "....#", "....#", "#...#", ".###."),
    "6": ("..##.", ".#...", "#....", "####.", "#...#", "#...#", ".###."),
    "7": ("#####", "....#", "...#.", "..#..", ".#...", ".#...", ".#..."),
    "8": (".###.", "#...#", "#...#", ".###.", "#...#", "#...#", ".###."),
    "9": (".###.", "#...#", "#...#", ".####", "....#", "...#.", ".##.."),
    "A": (".###.", "#...#", "#...#", "#####", "#...#", "#...#", "#...#"),
    "B": ("####.", "#...#", "#...#", "####.", "#...#", "#...#", "####."),
    "C": (".###.", "#...#", "#....", "#....", "#....", "#...#", ".###."),
    "D": ("####.", "#...#", "#...#", "#...#", "#...#", "#...#", "####."),
    "E": ("#####", "#....", "#....", "####.", "#....", "#....", "#####"),
    "F": ("#####", "#....", "#....", "####.", "#....", "#....", "#...."),
    "G": (".###.", "#...#", "#....", "#.###", "#...#", "#...#", ".####"),
    "H": ("#...#", "#...#", "#...#", "#####", "#...#", "#...#", "#...#"),
    "I": (".###.", "..#..", "..#..", "..#..", "..#..", "..#..", ".###."),
    "J": ("..###", "...#.", "...#.", "...#.", "...#.", "#..#.", ".##.."),
    "K": ("#...#", "#..#.", "#.#..", "##...", "#.#..", "#..#.", "#...#"),
    "L": ("#....", "#....", "#....", "#....", "#....", "#....", "#####"),
    "M": ("#...#", "##.##", "#.#.#", "#.#.#", "#...#", "#...#", "#...#"),
    "N": ("#...#", "#...#", "##..#", "#.#.#", "#..##", "#...#", "#...#"),
    "O": (".###.", "#...#", "#...#", "#...#", "#...#", "#...#", ".###."),
    "P": ("####.", "#...#", "#...#", "####.", "#....", "#....", "#...."),
    "Q": (".###.", "#...#", "#...#", "#...#", "#.#.#", "#..#.", ".##.#"),
    "R": ("####.", "#...#", "#...#", "####.", "#.#..", "#..#.", "#...#"),
    "S": (".####", "#....", "#....", ".###.", "....#", "....#", "####."),
    "T": ("#####", "..#..", "..#..", "..#..", "..#..", "..#..", "..#.."),
    "U": ("#...#", "#...#", "#...#", "#...#", "#...#", "#...#", ".###."),
    "V": ("#...#", "#...#", "#...#", "#...#", "#...#", ".#.#.", "..#.."),
    "W": ("#...#", "#...#", "#...#", "#.#.#", "#.#.#", "#.#.#", ".#.#."),
    "X": ("#...#", "#...#", ".#.#.", "..#..", ".#.#.", "#...#", "#...#"),
    "Y": ("#...#", "#...#", ".#.#.", "..#..", "..#..", "..#..", "..#.."),
    "Z": ("#####", "....#", "...#.", "..#..", ".#...", "#....", "#####"),
    "a": (".....", ".....", ".###.", "....#", ".####", "#...#", ".####"),
    "e": (".....", ".....", ".###.", "#...#", "#####", "#....", ".###."),
    "g": (".....", ".####", "#...#", "#...#", ".####", "....#", ".###."),
    "k": ("#....", "#....", "#..#.", "#.#..", "##...", "#.#..", "#..#."),
    "m": (".....", ".....", "##.#.", "#.#.#", "#.#.#", "#...#", "#...#"),
    "n": (".....", ".....", "#.##.", "##..#", "#...#", "#...#", "#...#"),
    "s": (".....", ".....", ".####", "#....", ".###.", "....#", "####."),
    "u": (".....", ".....", "#...#", "#...#", "#...#", "#..##", ".##.#"),
    "x": (".....", ".....", "#...#", ".#.#.", "..#..", ".#.#.", "#...#"),
}


@cache
def _glyph(char: str) -> np.ndarray:
    try:
        rows = _GLYPHS[char]
    except KeyError:
        raise ValueError(f"the data-bar font has no glyph for {char!r}") from None
    return np.array([[c == "#" for c in row] for row in rows], dtype=bool)


def text_bitmap(text: str) -> np.ndarray:
    """Boolean ink bitmap (7 rows) of ``text``, one blank column between glyphs."""
    if not text:
        return np.zeros((GLYPH_ROWS, 0), bool)
    out = np.zeros((GLYPH_ROWS, ADVANCE * len(text) - 1), bool)
    for i, char in enumerate(text):
        out[:, i * ADVANCE : i * ADVANCE + GLYPH_COLS] = _glyph(char)
    return out


def text_width(text: str, pixel: float) -> float:
    """Width in image pixels of ``text`` drawn with font pixels ``pixel`` image pixels wide."""
    return max(ADVANCE * len(text) - 1, 0) * pixel


def draw_text(
    canvas: np.ndarray, text: str, left: int, bottom: int, pixel: float, ink: int
) -> None:
    """Draw ``text`` on the uint8 ``canvas`` in place: glyph cells ``pixel`` image pixels wide,
    the glyphs' bottom edge on row ``bottom`` (exclusive), starting at column ``left``.

    Each output pixel takes the share of its SUPERSAMPLE x SUPERSAMPLE subsamples that fall on ink
    and blends the canvas towards ``ink`` by it, with integer rounding.
    """
    bitmap = text_bitmap(text)
    if bitmap.size == 0 or pixel <= 0:
        return
    h, w = canvas.shape
    top = bottom - GLYPH_ROWS * pixel
    y0, y1 = max(int(np.floor(top)), 0), min(bottom, h)
    x0, x1 = max(left, 0), min(int(np.ceil(left + text_width(text, pixel))), w)
    if y1 <= y0 or x1 <= x0:
        return
    sub = (np.arange(SUPERSAMPLE) + 0.5) / SUPERSAMPLE
    ys = (np.arange(y0, y1)[:, None] + sub[None, :]).ravel()  # subsample centres
    xs = (np.arange(x0, x1)[:, None] + sub[None, :]).ravel()
    gy = np.floor((ys - top) / pixel).astype(np.int64)
    gx = np.floor((xs - left) / pixel).astype(np.int64)
    ok_y = (gy >= 0) & (gy < bitmap.shape[0])
    ok_x = (gx >= 0) & (gx < bitmap.shape[1])
    ink_sub = bitmap[np.clip(gy, 0, bitmap.shape[0] - 1)][:, np.clip(gx, 0, bitmap.shape[1] - 1)]
    ink_sub &= ok_y[:, None] & ok_x[None, :]
    count = ink_sub.reshape(y1 - y0, SUPERSAMPLE, x1 - x0, SUPERSAMPLE).sum(axis=(1, 3))
    total = SUPERSAMPLE * SUPERSAMPLE
    region = canvas[y0:y1, x0:x1].astype(np.int64)
    blended = (region * (total - count) + int(ink) * count + total // 2) // total
    canvas[y0:y1, x0:x1] = np.where(count > 0, blended, region).astype(canvas.dtype)
