"""Plain records shared by the data layer, the methods and the runner."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from semclip_bench.data.labels import DEFECT_TYPES as DEFECT_TYPES
from semclip_bench.data.labels import NORMAL_LABEL as NORMAL_LABEL


@dataclass(frozen=True)
class Sample:
    """One image of a dataset, with where it came from and its ground truth."""

    image_path: Path
    category: str
    split: str  # "train" or "test"
    label: str  # NORMAL_LABEL or a defect type name
    mask_path: Path | None = None

    @property
    def is_anomalous(self) -> bool:
        return self.label != NORMAL_LABEL

    @property
    def key(self) -> str:
        """Stable identifier of the image (used by caches and the support-file lists)."""
        return str(self.image_path)


@dataclass
class DefectDataset:
    """A set of categories with normal and defect images; see ``docs/PROTOCOL.md``.

    Its content identity is :func:`semclip_bench.data.digest.dataset_digest`.
    """

    name: str
    samples: list[Sample]
    root: Path | None = None

    def categories(self) -> list[str]:
        return sorted({s.category for s in self.samples})

    def defect_types(self, category: str) -> list[str]:
        """Defect types present in a category's test split, sorted by name."""
        return sorted({s.label for s in self.samples if s.category == category and s.is_anomalous})

    def select(
        self, category: str | None = None, split: str | None = None, label: str | None = None
    ) -> list[Sample]:
        """Samples matching every given field, sorted by path (the order episodes draw from)."""
        chosen = [
            s
            for s in self.samples
            if (category is None or s.category == category)
            and (split is None or s.split == split)
            and (label is None or s.label == label)
        ]
        return sorted(chosen, key=lambda s: str(s.image_path))


@dataclass(frozen=True)
class Episode:
    """One few-shot episode: (dataset, category, K shots, seed) with its support and query sets.

    The episode is shared by every method: normal-only methods use ``normal_support``; defect-
    supervised methods also use ``defect_support``, drawn from ``defect_pools`` (reserved once
    per category and type, whatever the seed and K). ``query`` is every test image in no pool:
    the same for every K, seed and method of a category. ``skipped`` holds the reason when the
    episode cannot be formed (a class too small for K); its support and query are then empty.
    """

    dataset: str
    category: str
    shots: int
    seed: int
    class_names: tuple[str, ...]  # (NORMAL_LABEL, *defect types); index = class id
    normal_support: tuple[Sample, ...] = ()
    defect_support: dict[str, tuple[Sample, ...]] = field(default_factory=dict)
    query: tuple[Sample, ...] = ()
    skipped: str | None = None
    #: Defect support pool per type (sorted by path): the images the defect shots come from.
    defect_pools: dict[str, tuple[Sample, ...]] = field(default_factory=dict)
    #: Defect support pool size per type (protocol v2: P images reserved once per type).
    pool_sizes: dict[str, int] = field(default_factory=dict)
    #: Remarks a table must print about this episode (e.g. a type with a smaller pool).
    notes: tuple[str, ...] = ()

    @property
    def defect_support_flat(self) -> tuple[Sample, ...]:
        return tuple(s for name in sorted(self.defect_support) for s in self.defect_support[name])
