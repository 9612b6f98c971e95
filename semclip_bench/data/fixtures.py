"""Tiny generated datasets for tests in any sub-package (seconds to write, a few hundred KB).

Use from a test::

    from semclip_bench.data.fixtures import write_tiny_mvtec
    root = write_tiny_mvtec(tmp_path / "ds")
    dataset = load_dataset(root)
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from semclip_bench.data.synth import SynthConfig

#: Defaults of the tiny dataset: one category, two defect types, 32 px images.
TINY_CATEGORIES: tuple[str, ...] = ("line_space",)
TINY_DEFECT_TYPES: tuple[str, ...] = ("bridge", "particle")


def tiny_synth_config(
    bit_depth: int = 8,
    image_size: int = 32,
    seed: int = 0,
    categories: tuple[str, ...] = TINY_CATEGORIES,
    defect_types: tuple[str, ...] = TINY_DEFECT_TYPES,
    n_train_good: int = 4,
    n_test_good: int = 3,
    n_per_defect: int = 3,
) -> SynthConfig:
    """A generator configuration small enough for unit tests."""
    from semclip_bench.data.synth import SynthConfig

    return SynthConfig(
        seed=seed,
        categories=tuple(categories),
        defect_types=tuple(defect_types),
        image_size=image_size,
        n_train_good=n_train_good,
        n_test_good=n_test_good,
        n_per_defect=n_per_defect,
        bit_depth=bit_depth,
    )


def write_tiny_mvtec(root: str | Path, **config: object) -> Path:
    """Generate a tiny sem-synth dataset in MVTec AD layout at ``root`` and return ``root``.

    Keyword arguments are those of :func:`tiny_synth_config` (bit depth, size, counts ...).
    ``root`` must not exist or be empty. Defaults: 1 category x (4 train/good, 3 test/good,
    3 per defect type x 2 types) of 32 x 32 pixels = 13 images.
    """
    from semclip_bench.data.dataset import generate_into

    root = Path(root)
    generate_into(root, tiny_synth_config(**config), workers=1)  # type: ignore[arg-type]
    return root


#: Images per (cell type, probability) of :func:`write_tiny_elpv`: every split gets each class.
TINY_ELPV_COUNTS: dict[tuple[str, str], int] = {
    ("mono", "0.0"): 16,
    ("mono", "1.0"): 9,
    ("mono", "0.3333333333333333"): 6,
    ("mono", "0.6666666666666666"): 6,
    ("poly", "0.0"): 16,
    ("poly", "1.0"): 9,
    ("poly", "0.3333333333333333"): 6,
    ("poly", "0.6666666666666666"): 6,
}


def write_tiny_elpv(
    root: str | Path,
    counts: dict[tuple[str, str], int] | None = None,
    size: int = 32,
) -> Path:
    """Write a folder in the ``elpv-dataset`` package's data layout (``labels.csv`` and
    ``images/cellNNNN.png``, 8-bit grey) with random images, and return it.

    Point the loader at it with ``$SEMCLIP_BENCH_ELPV_ROOT``; tests need no 90 MB package.
    Defect images get a bright stripe so that a method can tell them apart.
    """
    import cv2
    import numpy as np

    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    lines = []
    number = 0
    for (cell_type, probability), n in (counts or TINY_ELPV_COUNTS).items():
        for _ in range(n):
            number += 1
            image = rng.integers(60, 120, size=(size, size), dtype=np.uint8)
            if float(probability) > 0:
                image[size // 3 : size // 3 + 3, :] = 230
            name = f"images/cell{number:04d}.png"
            cv2.imwrite(str(root / name), image)
            lines.append(f"{name}  {probability:<19} {cell_type}")
    (root / "labels.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root
