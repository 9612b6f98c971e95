"""Tests of sem-synth's own raster code: each operation against a definition it must meet."""

from __future__ import annotations

import zlib

import cv2
import numpy as np
import pytest
from scipy import ndimage

from semclip_bench.data.synth.font import _GLYPHS, ADVANCE, GLYPH_ROWS, draw_text, text_bitmap
from semclip_bench.data.synth.imaging import Imaging, draw_databar
from semclip_bench.data.synth.raster import (
    dilate3,
    encode_png,
    f32,
    gaussian_blur,
    gaussian_weights,
    nearest_zero,
    polyline_pixels,
    remap_bilinear,
    resize_cubic,
    sobel,
    zero_labels,
)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
@pytest.mark.parametrize("shape", [(1, 1), (7, 5), (300, 260)])
def test_png_decodes_to_the_same_pixels(dtype, shape) -> None:
    image = np.random.default_rng(0).integers(0, np.iinfo(dtype).max, shape, endpoint=True)
    image = image.astype(dtype)
    data = encode_png(image)
    decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    assert decoded.dtype == dtype and np.array_equal(decoded, image)
    # The deflate stream is valid for zlib too, and its bytes are fixed by the pixels.
    start = data.index(b"IDAT") + 4
    length = int.from_bytes(data[start - 8 : start - 4], "big")
    raw = zlib.decompress(data[start : start + length])
    assert len(raw) == shape[0] * (1 + shape[1] * image.itemsize)
    assert encode_png(image.copy()) == data


def test_png_refuses_colour_and_float() -> None:
    with pytest.raises(ValueError, match="2-D uint8 or uint16"):
        encode_png(np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(ValueError, match="2-D uint8 or uint16"):
        encode_png(np.zeros((4, 4), np.float32))


def test_gaussian_blur_matches_scipy_and_keeps_constants() -> None:
    rng = np.random.default_rng(1)
    image = rng.random((40, 33)).astype(np.float32)
    sigma = 1.3
    ours = gaussian_blur(image, sigma)
    radius = (len(gaussian_weights(sigma)) - 1) // 2
    ref = ndimage.gaussian_filter(
        image.astype(np.float64), sigma, mode="mirror", truncate=radius / sigma
    )
    assert ours.dtype == np.float32 and np.abs(ours - ref).max() < 1e-6
    flat = np.full((9, 9), 0.25, np.float32)
    assert np.allclose(gaussian_blur(flat, 2.0), 0.25, atol=1e-7)
    assert sum(gaussian_weights(0.7)) == pytest.approx(1.0, abs=1e-15)


def test_sobel_is_the_scaled_3x3_derivative() -> None:
    yy, xx = np.mgrid[0:12, 0:10].astype(np.float32)
    ramp = 3.0 * xx + 0.5 * yy
    gx, gy = sobel(ramp, axis=1), sobel(ramp, axis=0)
    # 1/8 of the Sobel kernel's gain (8 per unit slope) inside; mirrored borders give 0 there.
    assert np.allclose(gx[:, 1:-1], 3.0) and np.allclose(gx[:, [0, -1]], 0.0)
    assert np.allclose(gy[1:-1], 0.5) and np.allclose(gy[[0, -1]], 0.0)
    image = np.random.default_rng(2).random((8, 8)).astype(np.float32)
    ref = ndimage.sobel(image.astype(np.float64), axis=1, mode="mirror") / 8
    assert np.abs(sobel(image, axis=1) - ref).max() < 1e-6


def test_cubic_resize_interpolates_and_is_smooth() -> None:
    coarse = np.random.default_rng(3).standard_normal((6, 6)).astype(np.float32)
    # Upsampling by an odd factor puts output pixel centres on the lattice points.
    up = resize_cubic(coarse, 18)
    assert np.allclose(up[1::3, 1::3], coarse, atol=1e-6)
    assert up.dtype == np.float32 and up.shape == (18, 18)
    assert np.allclose(resize_cubic(np.full((4, 4), 2.0, np.float32), 16), 2.0)


def test_remap_identity_and_half_pixel_shift() -> None:
    image = np.random.default_rng(4).random((10, 12)).astype(np.float32)
    yy, xx = np.mgrid[0:10, 0:12].astype(np.float32)
    assert np.array_equal(remap_bilinear(image, xx, yy), image)
    shifted = remap_bilinear(image, xx + 0.5, yy)
    assert np.allclose(shifted[:, :-1], (image[:, :-1] + image[:, 1:]) / 2, atol=1e-6)
    # Beyond the right edge the edge pixel repeats (mirror with the edge repeated).
    assert np.allclose(shifted[:, -1], image[:, -1])


def test_dilate3_matches_scipy() -> None:
    mask = np.random.default_rng(5).random((15, 17)) < 0.05
    assert np.array_equal(dilate3(mask), ndimage.binary_dilation(mask, np.ones((3, 3), bool)))


def test_polyline_is_connected_and_hits_its_vertices() -> None:
    points = np.array([[2, 3], [20, 9], [21, 30], [5, 31]])
    pixels = polyline_pixels(points)
    assert {tuple(p) for p in points} <= {tuple(p) for p in pixels}
    steps = np.abs(np.diff(pixels, axis=0)).max(axis=1)
    assert steps.max() <= 1  # 8-connected, no gaps


def test_distance_and_labels_are_exact_nearest_zero() -> None:
    rng = np.random.default_rng(6)
    image = np.ones((30, 25), np.uint8)
    seeds = rng.integers(0, [30, 25], size=(12, 2))
    image[seeds[:, 0], seeds[:, 1]] = 0
    dist, rows, cols = nearest_zero(image)
    labels = zero_labels(image)
    zy, zx = np.nonzero(image == 0)  # scan order: label k + 1 is the k-th zero pixel
    yy, xx = np.mgrid[0:30, 0:25]
    brute = np.sqrt((yy[..., None] - zy) ** 2 + (xx[..., None] - zx) ** 2)
    assert np.allclose(dist, brute.min(axis=-1), atol=1e-6)
    chosen = brute[yy, xx, labels - 1]
    assert np.allclose(chosen, brute.min(axis=-1), atol=1e-6)
    assert np.array_equal(image[rows, cols], np.zeros_like(image))


def test_f32_rounds_a_float64_evaluation() -> None:
    x = np.linspace(-3, 3, 101, dtype=np.float32)
    assert np.array_equal(f32(np.sin, x), np.sin(x.astype(np.float64)).astype(np.float32))


def test_font_covers_every_databar_character() -> None:
    """Every character the data bar can print has a glyph (texts built as imaging does)."""
    needed = set("0123456789.x=kKVmnu SE(UL)InLensEHTWDMagX")
    assert needed <= set(_GLYPHS)
    assert all(
        len(rows) == GLYPH_ROWS and all(len(r) == 5 for r in rows) for rows in _GLYPHS.values()
    )
    with pytest.raises(ValueError, match="no glyph"):
        text_bitmap("?")
    assert text_bitmap("kV").shape == (GLYPH_ROWS, 2 * ADVANCE - 1)


def test_draw_text_antialiases_with_integer_blending() -> None:
    canvas = np.zeros((12, 40), np.uint8)
    draw_text(canvas, "E", 2, 10, 1.25, 255)
    values = set(np.unique(canvas).tolist())
    assert 255 in values and any(0 < v < 255 for v in values)  # full ink and partial cover
    # Coverage comes in sixteenths: every value is round(255 * n / 16) for some n.
    assert values <= {(255 * n + 8) // 16 for n in range(17)}
    again = np.zeros((12, 40), np.uint8)
    draw_text(again, "E", 2, 10, 1.25, 255)
    assert np.array_equal(canvas, again)
    assert canvas[:, 12:].max() == 0  # nothing beyond the glyph's box


def test_databar_text_fits_the_bar() -> None:
    imaging = Imaging(
        kv=1.5,
        working_distance_mm=4.0,
        magnification=150000.0,
        dose=5.0,
        blur_sigma=0.5,
        edge_gain=0.6,
        halo_gain=0.2,
        shading_gain=0.1,
        detector_azimuth=0.0,
        databar=True,
        databar_rows=18,
        bar_style=1,
        detector="InLens",
    )
    image = np.full((256, 256), 128, np.uint8)
    draw_databar(image, imaging, pixel_nm=4.0)
    assert np.array_equal(image[:-18], np.full((238, 256), 128, np.uint8))
    bar = image[-18:]
    assert bar.min() == 0 and bar.max() == 255  # background and ink of style 1


def test_generator_code_imports_no_opencv_at_module_level() -> None:
    """No generator source file imports OpenCV when loaded (only the contact sheet does, inside
    the function that draws it), so no OpenCV version can change the data."""
    import ast

    from semclip_bench.data.synth.identity import source_files

    files = source_files()
    assert any(f.name == "raster.py" for f in files)
    for path in files:
        tree = ast.parse(path.read_text())
        for node in tree.body:  # module level only
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            assert not any(n.split(".")[0] == "cv2" for n in names), path


def test_percentile_linear_matches_the_linear_definition() -> None:
    from semclip_bench.data.synth.raster import percentile_linear

    values = np.random.default_rng(7).random((17, 13)).astype(np.float32)
    for q in (0.0, 37.5, 99.0, 100.0):
        ref = np.percentile(values.astype(np.float64), q, method="linear")
        assert percentile_linear(values, q) == pytest.approx(float(ref), rel=0, abs=1e-15)
