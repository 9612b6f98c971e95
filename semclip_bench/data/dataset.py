"""Finding a dataset's images on disk: ``sem-synth``, an MVTec AD folder, or a CSV manifest.

Loading checks the structure only (which files exist and how they pair up), which is cheap even for
large datasets; image contents are verified when they are read, or all at once by
:func:`semclip_bench.data.check.check_dataset` (the ``data check`` command). Every structural
problem is a :class:`~semclip_bench.errors.UserError` naming the file or folder at fault.

Layouts (see ``PROTOCOL.md``):

* MVTec AD: ``<root>/<category>/train/good/*``, ``<root>/<category>/test/<label>/*``,
  ``<root>/<category>/ground_truth/<defect type>/<stem>_mask.png`` (``<stem>.png`` is accepted
  too, as some MVTec-style datasets name masks like their images). ``<root>`` may also be a single
  category folder (one that holds ``train/`` or ``test/``).
* CSV manifest with the header ``image_path,category,split,label,mask_path``; relative paths are
  resolved against the CSV file's folder; ``mask_path`` is empty for normal images. Any other
  column is a problem naming it and the known column it may mean (``mask`` for ``mask_path``),
  since its values would otherwise be ignored without a word.
* ``sem-synth``: the built-in synthetic dataset, generated on first use into a cache folder
  (:mod:`semclip_bench.data.synth_cache`); ``sem-synth:val`` is its validation split (the same
  generator on a disjoint seed), ``sem-synth:test`` the same as ``sem-synth``.
* ``elpv`` / ``elpv:val`` (and ``elpv-soft[:val]``): real solar-cell images read from the installed
  ``elpv-dataset`` package (:mod:`semclip_bench.data.elpv`).


Masks are optional (image-level labels only, e.g. review images sorted into class folders): a
category without ``ground_truth/``, a defect type without ``ground_truth/<type>/``, a manifest
without the ``mask_path`` column or with empty cells give defect samples with ``mask_path=None``.
These are *notes* (logged, listed by ``data check``), not problems: image metrics and
classification are computed as usual, pixel metrics are "n/a (no masks)" (see
:func:`masks_missing_reason`) and methods that train on masks use the masks that exist. A
``ground_truth/<type>/`` folder that exists must hold a mask for every image of its type (a
missing one there is more likely a misnamed file than a choice).
"""

from __future__ import annotations

import csv
import logging
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

from semclip_bench.data.elpv import elpv_dataset_name, elpv_root, elpv_samples, parse_elpv_spec
from semclip_bench.data.images import is_image_file
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
        self.notes: list[str] = []

    def __call__(self, message: str) -> None:
        if not self.collect:
            raise UserError(message)
        self.errors.append(message)

    def warn(self, message: str) -> None:
        log.warning("warning: %s", message)
        self.warnings.append(message)

    def note(self, message: str) -> None:
        """Something the user should know that is not a problem (e.g. no masks): logged when
        loading, listed by the report when collecting (``data check``)."""
        if not self.collect:
            log.info("note: %s", message)
        self.notes.append(message)


# --------------------------------------------------------------------------------------------
# Public entry points


def load_dataset(spec: str | Path, cache_dir: str | Path | None = None) -> DefectDataset:
    """Load ``spec``: ``"sem-synth"`` (or ``"sem-synth:val"``, its validation split), ``"elpv"``
    (``"elpv:val"``, ``"elpv-soft[:val]"``), an MVTec AD layout folder, or a ``.csv`` manifest.

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
    elpv = parse_elpv_spec(spec)
    if elpv is not None:
        root = elpv_root()
        problems.note(f"{elpv_dataset_name(*elpv)}: no masks ({_NO_MASK_EFFECT})")
        return _finish(elpv_dataset_name(*elpv), elpv_samples(root, *elpv), root, problems)
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
        f"built-in synthetic dataset, '{SYNTH_NAME}:val' for its validation split, or 'elpv' "
        "for the real solar-cell images)"
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
    gt_dir = folder / GROUND_TRUTH
    unmasked: dict[str, int] = {}  # defect type without a ground_truth/<type>/ -> its image count
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
            if split == "test" and label != NORMAL_LABEL and not (gt_dir / label).is_dir():
                unmasked[label] = len(images)
            samples.extend(
                Sample(image, category, split, label, masks.get(image)) for image in images
            )
    if gt_dir.is_dir():
        for label_dir in _subdirs(gt_dir):
            if not (folder / "test" / label_dir.name).is_dir():
                problems(f"{label_dir}: masks without images (no folder test/{label_dir.name}/)")
    if unmasked:
        n = sum(unmasked.values())
        if not gt_dir.is_dir():
            problems.note(
                f"{folder}: no {GROUND_TRUTH}/ folder, so its {n} defect image(s) have image-level "
                f"labels only ({_NO_MASK_EFFECT})"
            )
        else:
            types = ", ".join(f"{t} ({unmasked[t]} images)" for t in sorted(unmasked))
            problems.note(f"{gt_dir}: no masks for defect type(s) {types} ({_NO_MASK_EFFECT})")
    return samples


#: What a defect image without a mask means for a run (printed in notes).
_NO_MASK_EFFECT = (
    "image metrics and classification as usual; pixel metrics n/a; methods that train on masks "
    "use image-level losses for these images"
)


def _pair_masks(
    folder: Path, split: str, label: str, images: list[Path], problems: _Problems
) -> dict[Path, Path]:
    """Map each test image to its mask in ``ground_truth/<label>/`` by file stem.

    No such folder: no masks for this label (image-level labels only; the caller notes it).
    """
    if split != "test":
        return {}
    mask_dir = folder / GROUND_TRUTH / label
    if not mask_dir.is_dir():
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
    unknown = unknown_columns_text(header)
    missing = [name for name in MANIFEST_COLUMNS[:4] if name not in header]
    if missing:
        raise UserError(
            f"{path}: CSV manifest lacks column(s) {', '.join(missing)} "
            f"(expected header {','.join(MANIFEST_COLUMNS)})" + (f"; {unknown}" if unknown else "")
        )
    if unknown:  # e.g. 'mask' for 'mask_path': its masks would be left out without a word
        problems(f"{path}: {unknown} (known columns: {','.join(MANIFEST_COLUMNS)})")
    samples: list[Sample] = []
    seen: dict[Path, int] = {}
    unmasked: Counter[tuple[str, str]] = Counter()  # (category, defect type) -> images, no mask
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
        elif label != NORMAL_LABEL and split == "test":
            unmasked[(values["category"], label)] += 1
        samples.append(Sample(image, values["category"], split, label, mask))
    if unmasked:
        n = sum(unmasked.values())
        if "mask_path" not in header:
            problems.note(
                f"{path}: no mask_path column, so its {n} defect image(s) have image-level labels "
                f"only ({_NO_MASK_EFFECT})"
            )
        else:
            which = ", ".join(f"{c}/{t} ({k})" for (c, t), k in sorted(unmasked.items()))
            problems.note(
                f"{path}: {n} defect image(s) without a mask_path: {which} ({_NO_MASK_EFFECT})"
            )
    return samples


def unknown_columns_text(header: Sequence[str]) -> str | None:
    """Names the columns of a manifest header that the reader does not know, each with the known
    column it may mean (``difflib``); None when every column is known."""
    import difflib

    known = {name.lower(): name for name in MANIFEST_COLUMNS}
    parts = []
    for name in header:
        if name in MANIFEST_COLUMNS:
            continue
        close = difflib.get_close_matches(name.lower(), list(known), n=1, cutoff=0.5)
        guess = f" (did you mean '{known[close[0]]}'?)" if close else ""
        parts.append(f"'{name}'{guess}")
    if not parts:
        return None
    return f"unknown column{'s' if len(parts) > 1 else ''} {', '.join(parts)}"


def missing_mask_types(samples: Iterable[Sample]) -> list[str]:
    """Defect types (sorted) of which at least one sample of ``samples`` has no mask."""
    return sorted({s.label for s in samples if s.is_anomalous and s.mask_path is None})


def masks_missing_reason(samples: Sequence[Sample]) -> str | None:
    """Why pixel metrics over ``samples`` are undefined for lack of masks, or None.

    Pixel metrics need a mask for every defect image: None when they all have one, ``"no
    masks"`` when none has, else ``"masks missing for <types>"``.
    """
    missing = missing_mask_types(samples)
    if not missing:
        return None
    if all(s.mask_path is None for s in samples if s.is_anomalous):
        return "no masks"
    return f"masks missing for {', '.join(missing)}"


def _resolve(value: str, base: Path) -> Path:
    path = Path(value).expanduser()
    return (path if path.is_absolute() else base / path).resolve()
