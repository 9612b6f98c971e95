"""Finding a dataset's images on disk: ``sem-synth``, an MVTec AD folder, or a CSV manifest.

Loading checks the structure only (which files exist and how they pair up), which is cheap even for
large datasets; image contents are verified when they are read, or all at once by
:func:`check_dataset` (the ``data check`` command). Every structural problem is a
:class:`~semclip_bench.errors.UserError` naming the file or folder at fault.

Layouts (see ``PROTOCOL.md``):

* MVTec AD: ``<root>/<category>/train/good/*``, ``<root>/<category>/test/<label>/*``,
  ``<root>/<category>/ground_truth/<defect type>/<stem>_mask.png`` (``<stem>.png`` is accepted
  too, as some MVTec-style datasets name masks like their images). ``<root>`` may also be a single
  category folder (one that holds ``train/`` or ``test/``).
* CSV manifest with the header ``image_path,category,split,label,mask_path``; relative paths are
  resolved against the CSV file's folder; ``mask_path`` is empty for normal images.
* ``sem-synth``: the built-in synthetic dataset, generated on first use into a cache folder
  (:mod:`semclip_bench.data.synth_cache`); ``sem-synth:val`` is its validation split (the same
  generator on a disjoint seed), ``sem-synth:test`` the same as ``sem-synth``.
"""

from __future__ import annotations

import csv
import logging
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from semclip_bench.data.images import ImageInfo, image_info, is_image_file, read_mask
from semclip_bench.data.synth_cache import CACHE_ENV as CACHE_ENV
from semclip_bench.data.synth_cache import SYNTH_NAME as SYNTH_NAME
from semclip_bench.data.synth_cache import ProgressLog as ProgressLog
from semclip_bench.data.synth_cache import default_cache_dir as default_cache_dir
from semclip_bench.data.synth_cache import ensure_synth as ensure_synth
from semclip_bench.data.synth_cache import generate_into as generate_into
from semclip_bench.data.synth_cache import parse_synth_spec, synth_dataset_name
from semclip_bench.data.synth_cache import synth_cache_path as synth_cache_path
from semclip_bench.data.types import NORMAL_LABEL, DefectDataset, Sample
from semclip_bench.errors import UserError

log = logging.getLogger(__name__)

#: The splits of the MVTec AD layout.
SPLITS: tuple[str, ...] = ("train", "test")
GROUND_TRUTH = "ground_truth"
#: Columns of a CSV manifest (``mask_path`` may be left out when no image has a mask).
MANIFEST_COLUMNS: tuple[str, ...] = ("image_path", "category", "split", "label", "mask_path")


class _Problems:
    """Where structural problems go: raised at once (loading) or collected (``data check``)."""

    def __init__(self, collect: bool) -> None:
        self.collect = collect
        self.errors: list[str] = []
        self.warnings: list[str] = []

    def __call__(self, message: str) -> None:
        if not self.collect:
            raise UserError(message)
        self.errors.append(message)

    def warn(self, message: str) -> None:
        log.warning("warning: %s", message)
        self.warnings.append(message)


# --------------------------------------------------------------------------------------------
# Public entry points


def load_dataset(spec: str | Path, cache_dir: str | Path | None = None) -> DefectDataset:
    """Load ``spec``: ``"sem-synth"`` (or ``"sem-synth:val"``, its validation split), an MVTec AD
    layout folder, or a ``.csv`` manifest.

    ``cache_dir`` is where ``sem-synth`` is generated (default: ``$SEMCLIP_BENCH_CACHE`` or
    ``~/.cache/semclip_bench``). Raises :class:`UserError` on the first structural problem.
    """
    return _load(spec, cache_dir, _Problems(collect=False))


# --------------------------------------------------------------------------------------------
# Loading


def _load(spec: str | Path, cache_dir: str | Path | None, problems: _Problems) -> DefectDataset:
    variant = parse_synth_spec(spec)
    if variant is not None:
        root = ensure_synth(cache_dir=cache_dir, variant=variant).resolve()
        return _finish(synth_dataset_name(variant), _scan_mvtec(root, problems), root, problems)
    path = Path(spec).expanduser()
    try:
        if path.is_dir():
            root = path.resolve()
            return _finish(root.name, _scan_mvtec(root, problems), root, problems)
        if path.is_file():
            if path.suffix.lower() != ".csv":
                raise UserError(
                    f"{path}: not a dataset (expected an MVTec AD layout folder or a .csv manifest)"
                )
            csv_path = path.resolve()
            samples = _read_manifest(csv_path, problems)
            return _finish(csv_path.stem, samples, csv_path.parent, problems)
    except OSError as exc:  # e.g. a folder without read permission
        raise UserError(f"{exc.filename or path}: cannot read ({exc.strerror or exc})") from None
    raise UserError(
        f"{path}: no such dataset folder or CSV manifest (or use '{SYNTH_NAME}' for the "
        f"built-in synthetic dataset, '{SYNTH_NAME}:val' for its validation split)"
    )


def _finish(name: str, samples: list[Sample], root: Path, problems: _Problems) -> DefectDataset:
    if not samples:
        problems(f"{root}: dataset is empty (no images found)")
    samples = sorted(samples, key=lambda s: (s.category, s.split, s.label, str(s.image_path)))
    return DefectDataset(name=name, samples=samples, root=root)


def _subdirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and is_image_file(p))


def _scan_mvtec(root: Path, problems: _Problems) -> list[Sample]:
    """All samples of an MVTec AD layout folder (or of a single category folder)."""
    if (root / "train").is_dir() or (root / "test").is_dir():
        category_dirs = [root]
    else:
        category_dirs = []
        for folder in _subdirs(root):
            if (folder / "train").is_dir() or (folder / "test").is_dir():
                category_dirs.append(folder)
            else:
                problems.warn(f"{folder}: ignored (no train/ or test/ folder, so not a category)")
        if not category_dirs:
            problems(
                f"{root}: no category folders found (expected the MVTec AD layout "
                "<root>/<category>/train/good, <root>/<category>/test/<label>)"
            )
    samples: list[Sample] = []
    for category_dir in category_dirs:
        samples.extend(_scan_category(category_dir, problems))
    return samples


def _scan_category(folder: Path, problems: _Problems) -> list[Sample]:
    category = folder.name
    for entry in _subdirs(folder):
        if entry.name not in (*SPLITS, GROUND_TRUTH):
            problems(
                f"{entry}: unknown split folder '{entry.name}' "
                f"(expected {', '.join(SPLITS)} or {GROUND_TRUTH})"
            )
    samples: list[Sample] = []
    for split in SPLITS:
        split_dir = folder / split
        if not split_dir.is_dir():
            continue
        loose = _image_files(split_dir)
        if loose:
            problems(
                f"{split_dir}: {len(loose)} image(s) directly in the split folder "
                f"(put them in {split}/<label>/, e.g. {split}/{NORMAL_LABEL}/)"
            )
        for label_dir in _subdirs(split_dir):
            label = label_dir.name
            if split == "train" and label != NORMAL_LABEL:
                problems(
                    f"{label_dir}: the train split may only hold '{NORMAL_LABEL}' images "
                    f"(defect images go to test/{label}/)"
                )
                continue
            images = _image_files(label_dir)
            if not images:
                problems.warn(f"{label_dir}: no images")
                continue
            masks = _pair_masks(folder, split, label, images, problems)
            samples.extend(
                Sample(image, category, split, label, masks.get(image)) for image in images
            )
    gt_dir = folder / GROUND_TRUTH
    if gt_dir.is_dir():
        for label_dir in _subdirs(gt_dir):
            if not (folder / "test" / label_dir.name).is_dir():
                problems(f"{label_dir}: masks without images (no folder test/{label_dir.name}/)")
    return samples


def _pair_masks(
    folder: Path, split: str, label: str, images: list[Path], problems: _Problems
) -> dict[Path, Path]:
    """Map each test image to its mask in ``ground_truth/<label>/`` by file stem."""
    if split != "test":
        return {}
    mask_dir = folder / GROUND_TRUTH / label
    if not mask_dir.is_dir():
        if label != NORMAL_LABEL:
            problems(
                f"{mask_dir}: mask folder missing for the {len(images)} defect image(s) "
                f"of {folder / split / label}"
            )
        return {}
    by_stem: dict[str, Path] = {}
    for mask in _image_files(mask_dir):
        if mask.stem in by_stem:
            problems(f"{mask}: two masks with the same name stem ({by_stem[mask.stem].name})")
            continue
        by_stem[mask.stem] = mask
    paired: dict[Path, Path] = {}
    for image in images:
        mask = by_stem.get(f"{image.stem}_mask") or by_stem.get(image.stem)
        if mask is not None:
            paired[image] = mask
        elif label != NORMAL_LABEL:
            problems(
                f"{image}: defect image without a mask (expected {mask_dir / image.stem}_mask.png)"
            )
    for mask in sorted(set(by_stem.values()) - set(paired.values())):
        problems(f"{mask}: mask without an image (no matching file in {folder / split / label})")
    return paired


def _read_manifest(path: Path, problems: _Problems) -> list[Sample]:
    """Samples listed in a CSV manifest (paths relative to the CSV's folder)."""
    base = path.parent
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            header = list(reader.fieldnames or [])
            rows = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise UserError(f"{path}: cannot read CSV manifest ({exc})") from None
    if not header:
        raise UserError(
            f"{path}: CSV manifest is empty (expected header {','.join(MANIFEST_COLUMNS)})"
        )
    header = [name.strip() for name in header]
    missing = [name for name in MANIFEST_COLUMNS[:4] if name not in header]
    if missing:
        raise UserError(
            f"{path}: CSV manifest lacks column(s) {', '.join(missing)} "
            f"(expected header {','.join(MANIFEST_COLUMNS)})"
        )
    samples: list[Sample] = []
    seen: dict[Path, int] = {}
    for line, row in enumerate(rows, start=2):
        where = f"{path}:{line}"
        row = {key.strip(): value for key, value in row.items() if isinstance(key, str)}
        values = {name: (row.get(name) or "").strip() for name in MANIFEST_COLUMNS}
        empty = [name for name in MANIFEST_COLUMNS[:4] if not values[name]]
        if empty:
            problems(f"{where}: empty {', '.join(empty)}")
            continue
        split, label = values["split"], values["label"]
        if split not in SPLITS:
            problems(f"{where}: unknown split '{split}' (expected {' or '.join(SPLITS)})")
            continue
        if split == "train" and label != NORMAL_LABEL:
            problems(f"{where}: the train split may only hold '{NORMAL_LABEL}' images, got {label}")
            continue
        image = _resolve(values["image_path"], base)
        if not image.is_file():
            problems(f"{where}: image file not found: {image}")
            continue
        if image in seen:
            problems(f"{where}: image listed twice (first on line {seen[image]}): {image}")
            continue
        seen[image] = line
        mask: Path | None = None
        if values["mask_path"]:
            mask = _resolve(values["mask_path"], base)
            if not mask.is_file():
                problems(f"{where}: mask file not found: {mask}")
                continue
        elif label != NORMAL_LABEL:
            problems(f"{where}: defect image without a mask_path: {image}")
            continue
        samples.append(Sample(image, values["category"], split, label, mask))
    return samples


def _resolve(value: str, base: Path) -> Path:
    path = Path(value).expanduser()
    return (path if path.is_absolute() else base / path).resolve()


# --------------------------------------------------------------------------------------------
# Content check (``data check``)


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


def _check_sample(sample: Sample) -> tuple[ImageInfo | None, list[str], list[str]]:
    problems: list[str] = []
    warnings: list[str] = []
    try:
        info = image_info(sample.image_path)
    except UserError as exc:
        problems.append(str(exc))
        info = None
    if sample.mask_path is not None:
        try:
            mask = read_mask(sample.mask_path)
        except UserError as exc:
            problems.append(str(exc))
        else:
            if info is not None and mask.shape != (info.height, info.width):
                problems.append(
                    f"{sample.mask_path}: mask size {mask.shape[0]}x{mask.shape[1]} (HxW) differs "
                    f"from its image {sample.image_path} ({info.height}x{info.width})"
                )
            if sample.is_anomalous and not mask.any():
                warnings.append(f"{sample.mask_path}: mask of a defect image is empty")
    return info, problems, warnings
