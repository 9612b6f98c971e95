"""Configuration of the procedural SEM defect simulator ``sem-synth``."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from semclip_bench.data.labels import DEFECT_TYPES, NORMAL_LABEL
from semclip_bench.errors import UserError

#: Data seed of each benchmark split of sem-synth (``--data sem-synth`` / ``sem-synth:val``).
#: Disjoint from each other and from pretraining seeds (``>= 100000``, see
#: :mod:`semclip_bench.pretrain.data`), so no image is shared. There is no generator version number:
#: caches are keyed by the generator's source code (:mod:`semclip_bench.data.synth.identity`).
DATA_SEEDS: dict[str, int] = {"test": 0, "val": 1}

#: Pattern families the simulator can draw; each is one category of the dataset.
FAMILIES: tuple[str, ...] = ("line_space", "contact_array", "metal_cmp")


@dataclass(frozen=True)
class SynthConfig:
    """What to generate: categories, defect types, image counts and the imaging ranges.

    Every length is given for a 256-pixel image and scaled with ``image_size`` so that a small
    test config looks like a down-sampled large one. Each image is a pure function of
    ``(seed, category, split, label, index)``; the other fields only change the ranges drawn from.

    Default sizes (protocol v2, per category): 40 test images per defect type = a support pool of
    P = 20 (the largest K) + 20 query images; 120 ``test/good`` = as many normal as defect query
    images with the six types (a balanced query); 50 ``train/good``, enough for K = 20 with three
    seeds drawing different supports. In all 3 x (50 + 120 + 6 x 40) = 1,230 images.
    """

    seed: int = 0
    categories: tuple[str, ...] = FAMILIES
    defect_types: tuple[str, ...] = DEFECT_TYPES
    image_size: int = 256
    n_train_good: int = 50
    n_test_good: int = 120
    n_per_defect: int = 40
    bit_depth: int = 8
    #: Fraction of images that carry the tool's text data bar along the bottom.
    databar_fraction: float = 0.85
    #: Height of the data bar as a fraction of the image height.
    databar_height: float = 0.085
    #: Defect size range in pixels (at 256 px): equivalent diameter of blobs, width of bridges.
    defect_size_px: tuple[float, float] = (4.0, 48.0)
    #: Fraction of defects drawn small and at low contrast (the hard cases).
    hard_fraction: float = 0.3
    #: Electron dose range (mean detected electrons per pixel at unit yield); sets shot noise.
    dose: tuple[float, float] = (20.0, 250.0)
    #: Largest in-plane rotation of the field of view, in degrees.
    max_rotation_deg: float = 2.0

    def __post_init__(self) -> None:
        # Accept lists (from JSON / YAML) but store tuples so the config stays hashable.
        for name in ("categories", "defect_types", "defect_size_px", "dose"):
            value = getattr(self, name)
            if isinstance(value, list):
                object.__setattr__(self, name, tuple(value))
        self.validate()

    def validate(self) -> None:
        """Raise :class:`UserError` naming the first option with an unusable value."""
        if not isinstance(self.seed, int) or self.seed < 0:
            raise UserError(
                f"synth option 'seed' must be a non-negative integer, got {self.seed!r}"
            )
        if not self.categories:
            raise UserError("synth option 'categories' is empty")
        for name in self.categories:
            if name not in FAMILIES:
                known = ", ".join(FAMILIES)
                raise UserError(
                    f"synth option 'categories': unknown family {name!r} (known: {known})"
                )
        if len(set(self.categories)) != len(self.categories):
            raise UserError("synth option 'categories' lists a family twice")
        for name in self.defect_types:
            if name not in DEFECT_TYPES:
                raise UserError(
                    f"synth option 'defect_types': unknown type {name!r} "
                    f"(known: {', '.join(DEFECT_TYPES)})"
                )
        if len(set(self.defect_types)) != len(self.defect_types):
            raise UserError("synth option 'defect_types' lists a type twice")
        if not isinstance(self.image_size, int) or not 32 <= self.image_size <= 4096:
            raise UserError(f"synth option 'image_size' must be 32..4096, got {self.image_size!r}")
        for name in ("n_train_good", "n_test_good", "n_per_defect"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise UserError(f"synth option {name!r} must be a non-negative integer")
        if self.bit_depth not in (8, 16):
            raise UserError(f"synth option 'bit_depth' must be 8 or 16, got {self.bit_depth!r}")
        if not 0.0 <= self.databar_fraction <= 1.0:
            raise UserError("synth option 'databar_fraction' must be in [0, 1]")
        if not 0.03 <= self.databar_height <= 0.25:
            raise UserError("synth option 'databar_height' must be in [0.03, 0.25]")
        lo, hi = self.defect_size_px
        if not 1.0 <= lo <= hi:
            raise UserError("synth option 'defect_size_px' must be (min, max) with 1 <= min <= max")
        if not 0.0 <= self.hard_fraction <= 1.0:
            raise UserError("synth option 'hard_fraction' must be in [0, 1]")
        d_lo, d_hi = self.dose
        if not 0.5 <= d_lo <= d_hi:
            raise UserError("synth option 'dose' must be (min, max) with 0.5 <= min <= max")
        if not 0.0 <= self.max_rotation_deg <= 45.0:
            raise UserError("synth option 'max_rotation_deg' must be in [0, 45]")

    @property
    def extension(self) -> str:
        """Image file extension: 8- and 16-bit images are both grayscale PNG."""
        return ".png"

    def counts(self) -> dict[tuple[str, str], int]:
        """Number of images per (split, label) in every category."""
        out = {
            ("train", NORMAL_LABEL): self.n_train_good,
            ("test", NORMAL_LABEL): self.n_test_good,
        }
        for name in self.defect_types:
            out[("test", name)] = self.n_per_defect
        return out

    @property
    def n_images(self) -> int:
        return len(self.categories) * sum(self.counts().values())

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (tuples become lists)."""
        return {
            f.name: list(v) if isinstance(v := getattr(self, f.name), tuple) else v
            for f in dataclasses.fields(self)
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SynthConfig:
        """Inverse of :meth:`to_dict`; unknown keys are a :class:`UserError`."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise UserError(f"synth config: unknown option(s) {', '.join(unknown)}")
        return cls(**dict(data))
