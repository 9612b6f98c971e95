"""Write a ``sem-synth`` dataset in the MVTec AD layout, and a contact sheet to judge its look."""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import shutil
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from semclip_bench._version import __version__
from semclip_bench.data.labels import NORMAL_LABEL
from semclip_bench.data.synth.config import SynthConfig
from semclip_bench.data.synth.identity import checksum_lines, content_digest, generator_identity
from semclip_bench.data.synth.raster import encode_png
from semclip_bench.data.synth.render import SynthImage, render_image
from semclip_bench.errors import UserError

#: Written last: its presence marks a complete dataset folder.
MANIFEST_NAME = "synth.json"
#: One JSON line per image (parameters for captions), written just before the manifest.
META_NAME = "synth_meta.jsonl"
#: ``sha256sum`` list of every image and mask written (its sha256 is the content digest).
CHECKSUMS_NAME = "synth_files.sha256"
#: The bookkeeping files of a generated folder (everything else is an image or a mask).
METADATA_NAMES: tuple[str, ...] = (MANIFEST_NAME, META_NAME, CHECKSUMS_NAME)

Task = tuple[str, str, str, int]  # (category, split, label, index)


@dataclass(frozen=True)
class GenerationReport:
    """What :func:`generate` did; it prints nothing itself."""

    root: Path
    n_images: int
    seconds: float
    workers: int
    #: sha256 over the sorted (relative path, sha256) of every image and mask written.
    content_digest: str = ""

    @property
    def images_per_second(self) -> float:
        return self.n_images / self.seconds if self.seconds > 0 else float("inf")


def image_tasks(config: SynthConfig) -> list[Task]:
    """Every image of the dataset, in a fixed order (category, split, label, index)."""
    return [
        (category, split, label, index)
        for category in config.categories
        for (split, label), n in config.counts().items()
        for index in range(n)
    ]


def relative_paths(config: SynthConfig, task: Task) -> tuple[str, str | None]:
    """(image path, mask path or None) of one image, relative to the dataset root."""
    category, split, label, index = task
    digits = max(3, len(str(max(config.counts()[(split, label)] - 1, 0))))
    stem = f"{index:0{digits}d}"
    image = f"{category}/{split}/{label}/{stem}{config.extension}"
    if label == NORMAL_LABEL:
        return image, None
    return image, f"{category}/ground_truth/{label}/{stem}_mask.png"


def _encode(path: Path, image: np.ndarray) -> str:
    """Write ``image`` as PNG (the project's own encoder: the bytes depend on the pixels alone);
    returns the sha256 of the bytes."""
    data = encode_png(image)
    path.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


Batch = tuple[list[dict[str, Any]], list[tuple[str, str]]]


def _write_batch(root: str, config: SynthConfig, tasks: list[Task]) -> Batch:
    """Render and write a batch of images: their meta records (for the JSONL file) and the
    (relative path, sha256) of every file written."""
    records: list[dict[str, Any]] = []
    hashes: list[tuple[str, str]] = []
    for task in tasks:
        result = render_image(config, *task)
        image_rel, mask_rel = relative_paths(config, task)
        hashes.append((image_rel, _encode(Path(root) / image_rel, result.image)))
        if mask_rel is not None:
            assert result.mask is not None
            mask = result.mask.astype(np.uint8) * 255
            hashes.append((mask_rel, _encode(Path(root) / mask_rel, mask)))
        records.append({"image": image_rel, "mask": mask_rel, **result.meta})
    return records, hashes


def _batches(tasks: list[Task], size: int) -> Iterator[list[Task]]:
    for start in range(0, len(tasks), size):
        yield tasks[start : start + size]


def generate(
    root: Path,
    config: SynthConfig,
    workers: int = 1,
    progress: Callable[[int], None] | None = None,
    overwrite: bool = False,
) -> GenerationReport:
    """Write the dataset of ``config`` under ``root`` (MVTec AD layout); ``synth.json`` last.

    ``synth.json`` records the config, the generator's identity (source digest, library versions)
    and the content digest of the images and masks written (their list: ``synth_files.sha256``).

    Files are byte-identical whatever ``workers`` is. ``progress`` is called with the number of
    images finished since its previous call (like ``tqdm.update``). A non-empty ``root`` is an
    error unless ``overwrite``, which first removes ``synth.json`` and the configured category
    folders (nothing else). ``workers > 1`` uses spawned processes: a calling script needs the
    usual ``if __name__ == "__main__":`` guard.
    """
    root = Path(root)
    if workers < 1:
        raise UserError(f"synth option 'workers' must be >= 1, got {workers}")
    if root.exists() and not root.is_dir():
        raise UserError(f"synth output {root} exists and is not a folder")
    if root.exists() and any(root.iterdir()):
        if not overwrite:
            raise UserError(f"synth output folder {root} is not empty (use overwrite)")
        for name in METADATA_NAMES:
            (root / name).unlink(missing_ok=True)
        for category in config.categories:
            if (root / category).is_dir():
                shutil.rmtree(root / category)
    root.mkdir(parents=True, exist_ok=True)
    tasks = image_tasks(config)
    for task in tasks:
        for rel in relative_paths(config, task):
            if rel is not None:
                (root / rel).parent.mkdir(parents=True, exist_ok=True)

    start = time.perf_counter()
    records: list[dict[str, Any]] = []
    hashes: list[tuple[str, str]] = []
    if workers == 1 or len(tasks) <= 1:
        for batch in _batches(tasks, 8):
            batch_records, batch_hashes = _write_batch(str(root), config, batch)
            records.extend(batch_records)
            hashes.extend(batch_hashes)
            if progress is not None:
                progress(len(batch))
    else:
        batch_size = int(np.clip(len(tasks) // (workers * 4), 1, 32))
        ctx = multiprocessing.get_context("spawn")  # safe next to torch thread pools
        with ProcessPoolExecutor(workers, mp_context=ctx) as pool:
            pending = {
                pool.submit(_write_batch, str(root), config, batch): len(batch)
                for batch in _batches(tasks, batch_size)
            }
            while pending:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    try:
                        batch_records, batch_hashes = future.result()
                    except BrokenProcessPool:
                        raise UserError(
                            "sem-synth: a generator worker process stopped abruptly (killed, out "
                            "of memory, or a script without 'if __name__ == \"__main__\":' -- "
                            "spawned workers import the main script)"
                        ) from None
                    records.extend(batch_records)
                    hashes.extend(batch_hashes)
                    n = pending.pop(future)
                    if progress is not None:
                        progress(n)
    seconds = time.perf_counter() - start

    order = {relative_paths(config, t)[0]: i for i, t in enumerate(tasks)}
    records.sort(key=lambda r: order[r["image"]])
    with open(root / META_NAME, "w", encoding="utf-8") as fh:
        for record in records:
            fh.write(json.dumps(record, sort_keys=True) + "\n")
    (root / CHECKSUMS_NAME).write_text(checksum_lines(hashes), encoding="utf-8")
    digest = content_digest(hashes)
    manifest = {
        "generator": "semclip_bench sem-synth",
        "version": __version__,
        "identity": generator_identity(),
        "config": config.to_dict(),
        "n_images": len(tasks),
        "n_files": len(hashes),
        "meta_file": META_NAME,
        "checksums_file": CHECKSUMS_NAME,
        "content_digest": digest,
    }
    (root / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return GenerationReport(
        root=root, n_images=len(tasks), seconds=seconds, workers=workers, content_digest=digest
    )


def _to_bgr8(result: SynthImage) -> np.ndarray:
    import cv2  # the contact sheet only: generated data never goes through OpenCV

    image = result.image
    if image.dtype == np.uint16:
        image = (image >> 8).astype(np.uint8)
    return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)


def write_preview(
    path: Path,
    config: SynthConfig,
    *,
    examples: int = 1,
    first_index: int = 0,
    outline: bool = True,
) -> Path:
    """Contact sheet PNG: rows = categories (x ``examples``), columns = good + each defect type.

    Mask outlines are drawn in colour (red; yellow for hard defects) and every cell is captioned
    with the defect's size and contrast so a person can judge the look.
    """
    import cv2  # drawing the sheet's captions and outlines; it is a picture, not data

    path = Path(path)
    if path.suffix.lower() != ".png":
        raise UserError(f"synth preview {path} must be a .png file")
    labels = [NORMAL_LABEL, *config.defect_types]
    cell = config.image_size
    head, side, cap = 20, 110, 14
    n_rows = len(config.categories) * examples
    sheet = np.full((head + n_rows * (cell + cap), side + len(labels) * cell, 3), 255, np.uint8)
    font = cv2.FONT_HERSHEY_SIMPLEX
    for j, label in enumerate(labels):
        cv2.putText(sheet, label, (side + j * cell + 3, 14), font, 0.42, (0, 0, 0), 1, cv2.LINE_AA)
    for i, category in enumerate(config.categories):
        for e in range(examples):
            r = i * examples + e
            y0 = head + r * (cell + cap)
            cv2.putText(sheet, category, (3, y0 + cell // 2), font, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
            for j, label in enumerate(labels):
                split = "test"
                result = render_image(config, category, split, label, first_index + e)
                tile = _to_bgr8(result)
                caption = f"{result.meta['material'][:14]}"
                if result.mask is not None:
                    colour = (0, 255, 255) if result.meta["hard"] else (0, 0, 255)
                    if outline:
                        contours, _ = cv2.findContours(
                            result.mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE
                        )
                        cv2.drawContours(tile, contours, -1, colour, 1)
                    caption = f"{result.meta['size_px']}px c={result.meta['contrast']:.2f}"
                x0 = side + j * cell
                sheet[y0 : y0 + cell, x0 : x0 + cell] = tile
                cv2.putText(
                    sheet, caption, (x0 + 3, y0 + cell + 11), font, 0.35, (0, 0, 0), 1, cv2.LINE_AA
                )
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, buf = cv2.imencode(".png", sheet)
    if not ok:  # pragma: no cover - OpenCV always encodes 8-bit BGR
        raise OSError(f"could not encode {path}")
    path.write_bytes(buf.tobytes())
    return path
