"""Fixtures of the data tests: tiny hand-written datasets and a tiny generated one."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

import cv2
import numpy as np
import pytest

from semclip_bench.data.fixtures import write_tiny_mvtec

#: Default layout of a hand-written category: (split, label) -> number of images.
DEFAULT_LAYOUT: dict[tuple[str, str], int] = {
    ("train", "good"): 4,
    ("test", "good"): 3,
    ("test", "bridge"): 3,
    ("test", "particle"): 2,
}


def write_image(path: Path, image: np.ndarray) -> Path:
    """Write an image with OpenCV (channels given in RGB order, as read_image returns them)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if image.ndim == 3 and image.shape[2] == 3:
        image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    elif image.ndim == 3 and image.shape[2] == 4:
        image = cv2.cvtColor(image, cv2.COLOR_RGBA2BGRA)
    assert cv2.imwrite(str(path), image), path
    return path


def write_handmade(
    root: Path,
    layout: Mapping[tuple[str, str], int] | None = None,
    categories: tuple[str, ...] = ("cat_a",),
    size_hw: tuple[int, int] = (24, 32),
    dtype: type = np.uint8,
    suffix: str = ".png",
    seed: int = 0,
) -> Path:
    """Write a small MVTec-layout dataset of random grayscale images with rectangle masks.

    Each defect mask marks rows 2..9 and columns 4..19 (asymmetric, to catch transposes).
    """
    rng = np.random.default_rng(seed)
    layout = DEFAULT_LAYOUT if layout is None else layout
    high = np.iinfo(dtype).max
    for category in categories:
        for (split, label), count in layout.items():
            for i in range(count):
                image = rng.integers(0, high, size=size_hw, endpoint=True).astype(dtype)
                write_image(root / category / split / label / f"{i:03d}{suffix}", image)
                if label != "good":
                    mask = np.zeros(size_hw, np.uint8)
                    mask[2:10, 4:20] = 255
                    gt_dir = root / category / "ground_truth" / label
                    write_image(gt_dir / f"{i:03d}_mask.png", mask)
    return root


@pytest.fixture
def write_img() -> Callable[[Path, np.ndarray], Path]:
    """The :func:`write_image` helper (test modules cannot import conftest)."""
    return write_image


@pytest.fixture
def handmade(tmp_path: Path) -> Callable[..., Path]:
    """Factory writing a hand-made dataset under a fresh temporary folder."""

    def make(**kwargs: object) -> Path:
        return write_handmade(tmp_path / "ds", **kwargs)  # type: ignore[arg-type]

    return make


@pytest.fixture(scope="session")
def tiny_synth_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny generated sem-synth dataset (8-bit), written once per test session."""
    return write_tiny_mvtec(tmp_path_factory.mktemp("synth8") / "ds", bit_depth=8)


@pytest.fixture(scope="session")
def tiny_synth_root_16(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same tiny dataset in 16-bit."""
    return write_tiny_mvtec(tmp_path_factory.mktemp("synth16") / "ds", bit_depth=16)
