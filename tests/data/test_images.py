"""Image and mask reading: bit depths, channels, formats and broken files."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from semclip_bench.data.images import image_info, read_image, read_mask
from semclip_bench.errors import UserError

Writer = Callable[[Path, np.ndarray], Path]


def _ramp(dtype: type, shape: tuple[int, ...]) -> np.ndarray:
    high = np.iinfo(dtype).max
    n = int(np.prod(shape))
    return (np.arange(n) * (high // max(1, n - 1))).astype(dtype).reshape(shape)


@pytest.mark.parametrize("suffix", [".png", ".tif", ".bmp"])
def test_8bit_gray_scaled_by_255(write_img: Writer, tmp_path: Path, suffix: str) -> None:
    raw = _ramp(np.uint8, (5, 7))
    image = read_image(write_img(tmp_path / f"a{suffix}", raw))
    assert image.dtype == np.float32
    assert image.shape == (5, 7, 1)
    np.testing.assert_allclose(image[:, :, 0], raw / 255.0, atol=1e-6)


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_16bit_scaled_by_bit_depth_not_by_max(
    write_img: Writer, tmp_path: Path, suffix: str
) -> None:
    # 12-bit data stored in 16 bits: must stay dark (max 4095 / 65535), not stretched to 1.
    raw = np.linspace(0, 4095, 30).astype(np.uint16).reshape(5, 6)
    path = write_img(tmp_path / f"a{suffix}", raw)
    image = read_image(path)
    assert image.shape == (5, 6, 1)
    np.testing.assert_allclose(image[:, :, 0], raw / 65535.0, atol=1e-7)
    assert image.max() < 0.07
    info = image_info(path)
    assert (info.height, info.width, info.channels, info.bit_depth) == (5, 6, 1, 16)
    assert info.max_value == 4095


def test_rgb_channel_order_kept(write_img: Writer, tmp_path: Path) -> None:
    raw = np.zeros((4, 6, 3), np.uint8)
    raw[..., 0] = 200  # red
    raw[..., 2] = 10  # blue
    image = read_image(write_img(tmp_path / "rgb.png", raw))
    assert image.shape == (4, 6, 3)
    np.testing.assert_allclose(image[0, 0], [200 / 255, 0, 10 / 255], atol=1e-6)


def test_rgba_drops_alpha(write_img: Writer, tmp_path: Path) -> None:
    raw = np.zeros((4, 6, 4), np.uint16)
    raw[..., 0] = 65535
    raw[..., 3] = 1000  # alpha must not leak into the colour channels
    image = read_image(write_img(tmp_path / "rgba.png", raw))
    assert image.shape == (4, 6, 3)
    np.testing.assert_allclose(image[0, 0], [1.0, 0.0, 0.0], atol=1e-7)


def test_jpeg_reads_approximately(write_img: Writer, tmp_path: Path) -> None:
    raw = np.full((16, 16), 128, np.uint8)
    image = read_image(write_img(tmp_path / "a.jpg", raw))
    assert image.shape == (16, 16, 1)
    assert abs(float(image.mean()) - 128 / 255) < 0.02


def test_mask_any_nonzero(write_img: Writer, tmp_path: Path) -> None:
    raw = np.zeros((5, 8), np.uint8)
    raw[1, 2] = 1
    raw[3, 6] = 255
    mask = read_mask(write_img(tmp_path / "m.png", raw))
    assert mask.dtype == bool and mask.shape == (5, 8)
    assert mask.sum() == 2 and mask[1, 2] and mask[3, 6]
    rgb = np.zeros((5, 8, 3), np.uint8)
    rgb[0, 0, 2] = 7
    assert read_mask(write_img(tmp_path / "rgb_mask.png", rgb)).sum() == 1


def test_truncated_png_names_file(write_img: Writer, tmp_path: Path) -> None:
    path = write_img(tmp_path / "bad.png", _ramp(np.uint8, (32, 32)))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match=r"bad\.png"):
        read_image(path)
    with pytest.raises(UserError, match=r"bad\.png"):
        read_mask(path)


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("missing.png", None, "not found"),
        ("empty.png", b"", "empty"),
        ("text.png", b"this is not an image", "cannot decode"),
    ],
)
def test_broken_files_raise_user_error(
    tmp_path: Path, name: str, content: bytes | None, message: str
) -> None:
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(UserError, match=message) as info:
        read_image(path)
    assert name in str(info.value)


def test_float_tiff_rejected(write_img: Writer, tmp_path: Path) -> None:
    path = write_img(tmp_path / "float.tif", np.full((4, 4), 0.5, np.float32))
    with pytest.raises(UserError, match=r"float\.tif.*unsupported pixel type"):
        read_image(path)
