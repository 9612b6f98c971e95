"""Pictures of the anomaly maps: ``maps/<category>.png`` next to a run's tables.

A run keeps the maps of a few query images so that ``report`` can draw them again without
rerunning anything:

* which images: :func:`chosen_indices`, two normal images and two of each defect type of the
  category's query (the query is the same for every method, K and seed, so the images are too),
  picked by a permutation seeded by the category and label names;
* which episode: K = ``--maps-shots`` (default: the largest K of the run) and the run's lowest
  seed, one per (category, variant);
* where: ``<run folder>/maps/<category>/<variant>-k<K>-s<seed>.npz`` (:func:`save_episode_maps`):
  the maps (float16, at most :data:`MAP_SIDE` pixels a side), image scores, true labels and
  predicted classes (tens of KB); ``images.npz`` next to them holds the thumbnails of the images
  and masks, once per category.

:func:`write_map_pictures` draws one picture per category: a first row of images (ground-truth
contours where masks exist), then one row per method with its maps on one colour scale shared by
its panels (methods' score ranges differ by orders of magnitude), each titled with the true label,
the predicted class where the method classifies, and the image score, in a fixed layout (one axes
per row, :func:`_draw_row`). :func:`draw_panels` draws the same panels one axes each for
:func:`semclip_bench.plot_maps`.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from semclip_bench.data.types import NORMAL_LABEL
from semclip_bench.runner.plan.units import shots_tag

#: Query images shown per label (normal and each defect type).
PER_LABEL = 2
#: Largest side of a stored map, and of a stored image thumbnail (pixels).
MAP_SIDE = 64
THUMB_SIDE = 160
#: Folder of the stored maps inside a run folder, and of the pictures next to the tables.
MAPS_DIR = "maps"
#: File of a category's image and mask thumbnails, next to its variants' maps.
IMAGES_FILE = "images.npz"
#: Fixed seed of the image choice (changing it changes every picture's images).
MAPS_SEED = 20_261_206


def map_shots(shots: Sequence[int], requested: int | None = None) -> int:
    """The K whose maps a run keeps: ``requested`` (``--maps-shots``), else the largest K."""
    return int(requested) if requested is not None else max(int(k) for k in shots)


def chosen_indices(query: Sequence[Any]) -> list[int]:
    """Indices of the query images a picture shows: :data:`PER_LABEL` per label (normal first,
    then defect types by name), each label's images ordered by a seeded permutation of their
    sorted paths; the result keeps that label order."""
    by_label: dict[str, list[int]] = {}
    for i, sample in enumerate(query):
        by_label.setdefault(sample.label, []).append(i)
    labels = sorted(by_label, key=lambda label: (label != NORMAL_LABEL, label))
    chosen: list[int] = []
    for label in labels:
        indices = sorted(by_label[label], key=lambda i: str(query[i].image_path))
        text = f"{MAPS_SEED}\0{query[indices[0]].category}\0{label}".encode()
        seed = int.from_bytes(hashlib.sha256(text).digest()[:8], "little")
        order = np.random.default_rng(seed).permutation(len(indices))
        chosen.extend(sorted(indices[j] for j in order[:PER_LABEL]))
    return chosen


def _shrink(array: np.ndarray, side: int, nearest: bool = False) -> np.ndarray:
    """``array`` (H, W[, C]) resized so that its larger side is at most ``side``."""
    import cv2

    h, w = array.shape[:2]
    scale = side / max(h, w)
    if scale >= 1:
        return array
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return cv2.resize(array, size, interpolation=cv2.INTER_NEAREST if nearest else cv2.INTER_AREA)


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+-]", "_", name)


def save_episode_maps(
    folder: Path,
    episode: Any,
    variant: str,
    outputs: Any,
    produces_maps: bool,
) -> Path:
    """Store the maps of :func:`chosen_indices` of ``episode``'s query (``outputs``: its
    :class:`~semclip_bench.models.base.MethodOutput`) under ``folder/maps/<category>/``."""
    query = list(episode.query)
    chosen = chosen_indices(query)
    maps = outputs.anomaly_map[chosen].detach().float().cpu().numpy()
    logits = outputs.class_logits
    predicted = (
        [episode.class_names[int(i)] for i in logits[chosen].argmax(dim=1)]
        if logits is not None
        else []
    )
    target = Path(folder) / MAPS_DIR / _safe(episode.category)
    target.mkdir(parents=True, exist_ok=True)
    if not (target / IMAGES_FILE).is_file():  # the same for every variant: stored once
        _save_images(target / IMAGES_FILE, [query[i] for i in chosen])
    path = target / map_file_name(_safe(variant), episode.shots, episode.seed)
    _savez(
        path,
        variant=variant,
        category=episode.category,
        shots=episode.shots,
        seed=episode.seed,
        produces_maps=produces_maps,
        labels=np.array([query[i].label for i in chosen]),
        scores=outputs.image_score[chosen].detach().float().cpu().numpy(),
        predicted=np.array(predicted, dtype=str),
        maps=np.stack([_shrink(m, MAP_SIDE) for m in maps]).astype(np.float16),
    )
    return path


def map_file_name(variant: str, shots: int | str, seed: int | str) -> str:
    """The one spelling of a stored maps file's name, ``<variant>-k<K>-s<seed>.npz``: the writer
    fills it with the episode's parts, the reader (:data:`MAP_FILES`) with wildcards."""
    return f"{variant}-{shots_tag(shots)}-s{seed}.npz"


#: Glob of the stored maps files of a category folder (the images file does not match it).
MAP_FILES = map_file_name("*", "*", "*")


def _savez(path: Path, **arrays: Any) -> None:
    """``np.savez_compressed`` into a temporary file renamed into place: readers (and other
    processes writing the same file) only ever see whole files."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp.npz")
    np.savez_compressed(temporary, **arrays)
    os.replace(temporary, path)


def _save_images(path: Path, samples: Sequence[Any]) -> None:
    """Thumbnails (uint8, at most :data:`THUMB_SIDE` a side) of the chosen images and their
    masks (255 everywhere: no mask), with the file names."""
    import cv2

    from semclip_bench.data.images import read_image, read_mask

    arrays: dict[str, np.ndarray] = {"names": np.array([s.image_path.name for s in samples])}
    for i, sample in enumerate(samples):
        image = _shrink(read_image(sample.image_path).astype(np.float32), THUMB_SIDE)
        arrays[f"image_{i}"] = (np.clip(image, 0, 1) * 255).round().astype(np.uint8)
        size = image.shape[:2]
        if sample.mask_path is None:
            arrays[f"mask_{i}"] = np.full(size, 255, np.uint8)
        else:
            mask = read_mask(sample.mask_path).astype(np.uint8)
            arrays[f"mask_{i}"] = cv2.resize(mask, size[::-1], interpolation=cv2.INTER_NEAREST)
    _savez(path, **arrays)


def _load(path: Path) -> dict[str, Any]:
    """One variant's stored maps, with the images and masks of its category."""
    with np.load(path, allow_pickle=False) as data:
        record = {key: data[key] for key in data.files}
    with np.load(path.parent / IMAGES_FILE, allow_pickle=False) as data:
        n = len(data["names"])
        record["names"] = data["names"]
        record["images"] = [data[f"image_{i}"] for i in range(n)]
        record["masks"] = [data[f"mask_{i}"] for i in range(n)]
    return record


def find_maps(folders: Sequence[Path], shots: int | None = None) -> dict[str, list[dict]]:
    """Stored maps under ``folders`` by category, at K = ``shots`` (default: the largest K
    stored), one record per variant (the lowest seed when several are stored)."""
    records: list[dict[str, Any]] = []
    for folder in folders:
        for path in sorted(Path(folder).rglob(f"{MAPS_DIR}/*/{MAP_FILES}")):
            if not path.name.startswith(".") and (path.parent / IMAGES_FILE).is_file():
                records.append(_load(path))
    if not records:
        return {}
    k = int(shots) if shots is not None else max(int(r["shots"]) for r in records)
    by_category: dict[str, dict[str, dict]] = {}
    for record in sorted(records, key=lambda r: -int(r["seed"])):
        if int(record["shots"]) == k:
            by_category.setdefault(str(record["category"]), {})[str(record["variant"])] = record
    return {c: list(v.values()) for c, v in sorted(by_category.items())}


def panel_title(
    label: str | None, predicted: str | None, score: float | None, wrap: bool = False
) -> str:
    """``true <label> | pred <class> | score <s>``, leaving out what is not known (``wrap``: the
    score on a second line, for narrow panels)."""
    parts = []
    if label is not None:
        parts.append(f"true {label}")
    if predicted is not None:
        parts.append(f"pred {predicted}")
    head = " | ".join(parts)
    if score is None:
        return head
    tail = f"score {score:.3g}"
    return f"{head}\n{tail}" if wrap and head else " | ".join(p for p in (head, tail) if p)


def draw_panels(
    axes: Sequence[Any],
    pictures: Sequence[np.ndarray],
    maps: Sequence[np.ndarray] | None,
    masks: Sequence[np.ndarray | None],
    titles: Sequence[str],
    scale: tuple[float, float] | None = None,
    cmap: str = "jet",
    alpha: float = 0.5,
    fontsize: float = 9,
) -> Any:
    """Draw each picture (float (H, W, C) in [0, 1]) on its axis, its map (resized to it) on top
    on the colour scale ``scale`` (default: the maps' minimum to maximum), the mask's contour in
    white; returns the last map's artist (for a colour bar), or None without maps."""
    import cv2

    from semclip_bench.data.images import as_mask

    if maps is not None and scale is None:
        scale = (min(float(m.min()) for m in maps), max(float(m.max()) for m in maps))
    artist = None
    for i, ax in enumerate(axes):
        ax.set_axis_off()
        picture = pictures[i]
        h, w = picture.shape[:2]
        ax.imshow(
            picture[..., 0] if picture.shape[2] == 1 else picture, cmap="gray", vmin=0, vmax=1
        )
        if maps is not None and scale is not None:
            heat = np.asarray(maps[i], np.float32)
            heat = cv2.resize(heat, (w, h), interpolation=cv2.INTER_LINEAR)
            artist = ax.imshow(heat, cmap=cmap, alpha=alpha, vmin=scale[0], vmax=scale[1])
        if masks[i] is not None:
            ax.contour(as_mask(masks[i]).astype(float), levels=[0.5], colors="white")
        # y given: the title sits just above the axes without matplotlib searching every
        # axis' tick boxes for a clear spot at each draw (the axes are off: nothing is there)
        ax.set_title(titles[i], fontsize=fontsize, y=1.0)
    return artist


#: Fixed layout of a map picture, in inches: panel width, gaps between panels, the band above
#: each row for its panel titles (up to three lines, :func:`_fit`), the margins for the row
#: names (left), the suptitle (top) and the colour bars with their tick labels (right). Computed
#: once, not by constrained layout, whose search over every panel's title and tick boxes cost
#: most of a report's drawing.
PANEL = 2.0
GAP = 0.15
TITLE_BAND = 0.5
LEFT, TOP, RIGHT, BOTTOM = 0.45, 0.45, 0.8, 0.1
COLORBAR_WIDTH = 0.14


def _draw_row(
    ax: Any,
    height: float,
    pictures: Sequence[np.ndarray],
    maps: Sequence[np.ndarray] | None,
    masks: Sequence[np.ndarray | None],
    titles: Sequence[str],
    fontsize: float,
    cmap: str = "jet",
    alpha: float = 0.5,
) -> Any:
    """:func:`draw_panels` on one axes for a whole row (data units: inches): each picture fitted
    in its panel and centred, its map on top on the row's colour scale (the maps' minimum to
    maximum), the mask's contour in white, the title 6 points above the picture; returns the
    last map's artist, or None without maps."""
    import cv2

    from semclip_bench.data.images import as_mask

    scale = None
    if maps is not None:
        scale = (min(float(m.min()) for m in maps), max(float(m.max()) for m in maps))
    artist = None
    for i, picture in enumerate(pictures):
        h, w = picture.shape[:2]
        side = min(PANEL / w, height / h)
        x0 = i * (PANEL + GAP) + (PANEL - w * side) / 2
        y0 = (height - h * side) / 2
        extent = (x0, x0 + w * side, y0, y0 + h * side)
        ax.imshow(
            picture[..., 0] if picture.shape[2] == 1 else picture,
            cmap="gray",
            vmin=0,
            vmax=1,
            extent=extent,
        )
        if maps is not None and scale is not None:
            heat = cv2.resize(
                np.asarray(maps[i], np.float32), (w, h), interpolation=cv2.INTER_LINEAR
            )
            artist = ax.imshow(
                heat, cmap=cmap, alpha=alpha, vmin=scale[0], vmax=scale[1], extent=extent
            )
        if masks[i] is not None:
            xs = x0 + (np.arange(w) + 0.5) * side  # pixel centres, rows from the top
            ys = y0 + h * side - (np.arange(h) + 0.5) * side
            ax.contour(xs, ys, as_mask(masks[i]).astype(float), levels=[0.5], colors="white")
        ax.text(
            x0 + w * side / 2,
            y0 + h * side + 6 / 72,
            titles[i],
            fontsize=fontsize,
            ha="center",
            va="bottom",
        )
    ax.set_xlim(0, len(pictures) * (PANEL + GAP) - GAP)  # imshow fitted them to one picture
    ax.set_ylim(0, height)
    return artist


#: Characters of a panel title's line that fit the panel and its gap (7-point text).
TITLE_CHARS = 34


def _fit(title: str) -> str:
    """A map panel's title with "true ... | pred ..." on two lines where one would be wider than
    the panel (long type names), so that neighbouring titles never touch."""
    head, _, tail = title.partition("\n")
    if len(head) > TITLE_CHARS:
        head = head.replace(" | ", "\n")
    return f"{head}\n{tail}" if tail else head


def _picture(records: Sequence[dict[str, Any]], order: Sequence[str]) -> tuple[Any, list[str]]:
    """The figure of one category and the variants left out (no maps)."""
    from matplotlib.figure import Figure

    rank = {name: i for i, name in enumerate(order)}
    records = sorted(records, key=lambda r: (rank.get(str(r["variant"]), len(rank)), r["variant"]))
    shown = [r for r in records if bool(r["produces_maps"])]
    left_out = [str(r["variant"]) for r in records if not bool(r["produces_maps"])]
    first = records[0]
    images = [np.asarray(x, np.float32) / 255 for x in first["images"]]
    pictures = [x[..., None] if x.ndim == 2 else x for x in images]
    masks = [None if (m == 255).all() else (m > 0) for m in first["masks"]]
    labels = [str(x) for x in first["labels"]]
    n, n_rows = len(pictures), len(shown) + 1
    # panels as tall as the tallest image needs (thumbnails are square on the built-in data)
    aspect = max(p.shape[0] / p.shape[1] for p in pictures)
    height = PANEL * min(max(aspect, 0.5), 1.5)
    width = LEFT + n * PANEL + (n - 1) * GAP + RIGHT
    title = (
        f"{first['category']}: anomaly maps at K = {int(first['shots'])} (seed "
        f"{int(first['seed'])}); one colour scale per method (row)"
    )
    top = TOP
    if len(title) * 12 * 0.6 / 72 > width:  # 12-point text wider than a narrow picture
        title, top = title.replace("; ", ";\n"), TOP + 0.2
    total = top + n_rows * (TITLE_BAND + height) + BOTTOM
    fig = Figure(figsize=(width, total))

    def rect(x: float, y: float, w: float, h: float) -> list[float]:  # inches -> figure share
        return [x / width, y / total, w / width, h / total]

    def row_bottom(row: int) -> float:
        return total - top - row * (TITLE_BAND + height) - TITLE_BAND - height

    right = LEFT + n * PANEL + (n - 1) * GAP
    # one axes per row, in inches: panel i spans x in [i (PANEL + GAP), + PANEL], y in [0, height]
    # (an axes per panel cost more to make than to draw)
    axes = [
        fig.add_axes(rect(LEFT, row_bottom(row), right - LEFT, height)) for row in range(n_rows)
    ]
    for ax in axes:
        ax.set_axis_off()
        ax.set_xlim(0, right - LEFT)
        ax.set_ylim(0, height)

    def row_name(row: int, text: str) -> None:
        y = (row_bottom(row) + height / 2) / total
        fig.text((LEFT - 0.08) / width, y, text, rotation=90, ha="right", va="center")

    _draw_row(
        axes[0],
        height,
        pictures,
        None,
        masks,
        [f"{label}\n{name}" for label, name in zip(labels, first["names"], strict=True)],
        fontsize=8,
    )
    row_name(0, "image")
    for row, record in enumerate(shown, start=1):
        predicted = [str(p) for p in record["predicted"]] or [None] * n
        titles = [
            _fit(panel_title(label, pred, float(score), wrap=True))
            for label, pred, score in zip(labels, predicted, record["scores"], strict=True)
        ]
        maps = [np.asarray(m, np.float32) for m in record["maps"]]
        artist = _draw_row(axes[row], height, pictures, maps, masks, titles, fontsize=7)
        row_name(row, str(record["variant"]))
        if artist is not None:
            bar = fig.add_axes(
                rect(right + 0.1, row_bottom(row) + 0.05 * height, COLORBAR_WIDTH, 0.9 * height)
            )
            fig.colorbar(artist, cax=bar)
    fig.suptitle(title, y=1 - 0.1 / total, va="top")
    return fig, left_out


def _save_png(fig: Any, path: Path, dpi: int = 80) -> None:
    """Save ``fig`` as a PNG of 256 colours: a third of the bytes of full colour for these
    smooth maps, with no visible change (the pictures are committed next to the tables)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from PIL import Image

    # the pixels savefig would encode as a first PNG, taken straight from the canvas
    fig.set_dpi(dpi)
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    image = Image.frombuffer(
        "RGBA", canvas.get_width_height(), canvas.buffer_rgba(), "raw", "RGBA", 0, 1
    )
    image.convert("RGB").quantize(256).save(path, optimize=True)


def picture_name(category: str, kind: str) -> str:
    """``maps/<category>.png`` for a sweep, ``maps/<kind>_<category>.png`` otherwise."""
    stem = _safe(category) if kind == "sweep" else f"{kind}_{_safe(category)}"
    return f"{MAPS_DIR}/{stem}.png"


def write_map_pictures(
    folders: Sequence[Path],
    out_dir: Path,
    kind: str,
    order: Sequence[str] = (),
    shots: int | None = None,
) -> str:
    """Draw ``<out_dir>/maps/<category>.png`` from the maps stored under ``folders``; returns the
    markdown section linking them ("" when no maps are stored)."""
    found = find_maps(folders, shots)
    if not found:
        if shots is not None and find_maps(folders):
            return f"\n## Maps\n\nNo maps were kept at K = {shots} (see `--maps-shots`).\n"
        return ""
    lines = []
    for category, records in found.items():
        fig, left_out = _picture(records, order)
        name = picture_name(category, kind)
        path = Path(out_dir) / name
        path.parent.mkdir(parents=True, exist_ok=True)
        _save_png(fig, path)
        note = f" ({', '.join(left_out)}: no maps, image-level only)" if left_out else ""
        lines.append(f"- [{category}]({name}){note}")
    k = int(next(iter(found.values()))[0]["shots"])
    return (
        f"\n## Maps\n\nAnomaly maps of {PER_LABEL} normal query images and {PER_LABEL} of each "
        f"defect type (the same images for every method) at K = {k}, lowest seed; true label, "
        "predicted class (methods that classify) and image score above each map; ground-truth "
        "contours in white where masks exist.\n\n" + "\n".join(lines) + "\n"
    )
