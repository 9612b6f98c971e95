"""The ``data check`` command's work: read every image and mask of a dataset, count what it holds
and list every problem, warning and note (e.g. defect images without masks) in one report.

Structural problems (missing or extra files) are collected from the loader
(:mod:`semclip_bench.data.dataset`) instead of raised, so that all of them are reported at once.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from semclip_bench.data.dataset import _load, _Problems
from semclip_bench.data.images import ImageInfo, image_info, image_size, read_mask
from semclip_bench.data.types import NORMAL_LABEL, DefectDataset, Sample
from semclip_bench.errors import UserError


@dataclass
class CheckReport:
    """What ``data check`` found: counts, image properties, and every problem (exit 1 if any)."""

    dataset: str
    root: Path | None
    counts: dict[tuple[str, str, str], int] = field(default_factory=dict)  # (cat, split, label)
    bit_depths: Counter[int] = field(default_factory=Counter)
    channels: Counter[int] = field(default_factory=Counter)
    sizes: Counter[tuple[int, int]] = field(default_factory=Counter)  # (H, W)
    max_values: dict[int, int] = field(default_factory=dict)  # bit depth -> largest pixel value
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    #: Not problems, but worth knowing (e.g. defect images without masks).
    notes: list[str] = field(default_factory=list)
    #: (defect images with a mask, defect images) over the test split.
    masks: tuple[int, int] = (0, 0)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def n_images(self) -> int:
        return sum(self.counts.values())

    def format(self) -> str:
        """Human-readable report, as printed by ``data check``."""
        categories = sorted({c for c, _, _ in self.counts})
        lines = [
            f"dataset {self.dataset}: {self.n_images} images, {len(categories)} categories"
            + (f" ({self.root})" if self.root else "")
        ]
        if self.counts:
            width = max(len("category"), *(len(c) for c in categories))
            label_width = max(len("label"), *(len(lb) for _, _, lb in self.counts))
            lines.append(f"  {'category':<{width}}  {'split':<5}  {'label':<{label_width}}  images")
            order = sorted(
                self.counts.items(),
                key=lambda kv: (kv[0][0], kv[0][1] != "train", kv[0][2] != NORMAL_LABEL, kv[0][2]),
            )
            for (category, split, label), n in order:
                lines.append(f"  {category:<{width}}  {split:<5}  {label:<{label_width}}  {n:>6}")
        lines.append(
            "bit depths: "
            + (
                ", ".join(
                    f"{b}-bit: {n} (max value {self.max_values.get(b, '?')})"
                    for b, n in sorted(self.bit_depths.items())
                )
                or "-"
            )
        )
        lines.append(
            "channels: " + (", ".join(f"{c}: {n}" for c, n in sorted(self.channels.items())) or "-")
        )
        lines.append(
            "sizes (H x W): "
            + (", ".join(f"{h}x{w}: {n}" for (h, w), n in sorted(self.sizes.items())) or "-")
        )
        with_mask, defects = self.masks
        if defects:
            lines.append(
                f"masks: {with_mask} of {defects} defect images"
                + ("" if with_mask == defects else " (pixel metrics n/a; see the notes)")
            )
        for message in self.notes:
            lines.append(f"note: {message}")
        for message in self.warnings:
            lines.append(f"warning: {message}")
        for message in self.problems:
            lines.append(f"problem: {message}")
        lines.append(
            "OK: no problems found" if self.ok else f"FAILED: {len(self.problems)} problem(s) found"
        )
        return "\n".join(lines)


def check_dataset(
    dataset: DefectDataset | str | Path,
    cache_dir: str | Path | None = None,
    workers: int = 4,
    progress: Callable[[int, int], None] | None = None,
) -> CheckReport:
    """Verify every image and mask of ``dataset`` and count what it holds.

    ``dataset`` may be a loaded :class:`DefectDataset` or a spec as for :func:`load_dataset`; with a
    spec, structural problems are collected (not raised) so that all of them are reported.
    Problems: unreadable/truncated images or masks, mask size differing from its image. Warnings:
    empty defect masks, categories without train/good or test images. ``progress(done, total)``
    is called as images are checked.
    """
    structural = _Problems(collect=True)
    if not isinstance(dataset, DefectDataset):
        try:
            dataset = _load(dataset, cache_dir, structural)
        except UserError as exc:
            return CheckReport(dataset=str(dataset), root=None, problems=[str(exc)])
    report = CheckReport(dataset=dataset.name, root=dataset.root)
    report.problems.extend(structural.errors)
    report.warnings.extend(structural.warnings)
    report.notes.extend(structural.notes)
    defects = [s for s in dataset.samples if s.is_anomalous]
    report.masks = (sum(s.mask_path is not None for s in defects), len(defects))
    report.counts = dict(Counter((s.category, s.split, s.label) for s in dataset.samples))
    for category in dataset.categories():
        if not dataset.select(category, "train", NORMAL_LABEL):
            report.warnings.append(
                f"category {category}: no train/{NORMAL_LABEL} images (only zero-shot episodes)"
            )
        if not dataset.select(category, "test"):
            report.warnings.append(f"category {category}: no test images (nothing to evaluate)")

    total = len(dataset.samples)
    done = 0
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:  # OpenCV releases the GIL
        for result in pool.map(_check_sample, dataset.samples):
            info, problems, warnings = result
            if info is not None:
                report.bit_depths[info.bit_depth] += 1
                report.channels[info.channels] += 1
                report.sizes[(info.height, info.width)] += 1
                previous = report.max_values.get(info.bit_depth, 0)
                report.max_values[info.bit_depth] = max(previous, info.max_value)
            report.problems.extend(problems)
            report.warnings.extend(warnings)
            done += 1
            if progress is not None:
                progress(done, total)
    high = report.max_values.get(16)
    if high is not None and high < 2**12:
        report.warnings.append(
            f"16-bit images use at most 12 bits (max value {high}): they are scaled by 65535 "
            "(their bit depth, as the protocol says) and so look dark to the models"
        )
    return report


def check_headers(dataset: DefectDataset, workers: int = 4) -> list[str]:
    """Problems of every image and mask of ``dataset``, found from file headers only: readable,
    mask size against its image (mask presence is checked when the dataset is loaded).

    The same per-file checks and messages as :func:`check_dataset`, without decoding pixels, so
    a run can check the whole dataset, not only the files its episodes read, before its first
    episode (sem-synth's 1,230 images: well under a second; see docs/running.md "Checks before
    and around a run", the timing in docs/performance.md, the formats in docs/data.md).
    """
    problems: list[str] = []
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for _, found, _ in pool.map(lambda s: _check_sample(s, decode=False), dataset.samples):
            problems.extend(found)
    return problems


def _check_sample(
    sample: Sample, decode: bool = True
) -> tuple[ImageInfo | None, list[str], list[str]]:
    """(what the image holds, problems, warnings) of one sample. ``decode=False`` reads headers
    only: no ImageInfo, no empty-mask warning."""
    problems: list[str] = []
    warnings: list[str] = []
    info: ImageInfo | None = None
    size: tuple[int, int] | None = None
    try:
        if decode:
            info = image_info(sample.image_path)
            size = (info.height, info.width)
        else:
            size = image_size(sample.image_path)
    except UserError as exc:
        problems.append(str(exc))
    if sample.mask_path is not None:
        try:
            mask = read_mask(sample.mask_path) if decode else None
            mask_size = mask.shape if mask is not None else image_size(sample.mask_path)
        except UserError as exc:
            problems.append(str(exc))
        else:
            if size is not None and tuple(mask_size) != size:
                problems.append(
                    f"{sample.mask_path}: mask size {mask_size[0]}x{mask_size[1]} (HxW) differs "
                    f"from its image {sample.image_path} ({size[0]}x{size[1]})"
                )
            if mask is not None and sample.is_anomalous and not mask.any():
                warnings.append(f"{sample.mask_path}: mask of a defect image is empty")
    return info, problems, warnings
