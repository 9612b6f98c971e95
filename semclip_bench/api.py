"""Python API for notebooks and scripts: the benchmark's runs, results and methods as functions.

* :func:`run_sweep` / :func:`run_ablation`: the ``sweep`` / ``ablate`` commands (same options,
  same files written, same resuming); they return the run's episode rows as a DataFrame.
* :func:`load_results`: the episode rows of a finished run folder.
* :func:`check_data`: the ``data check`` report of a dataset folder or CSV manifest.
* :func:`load_method`: one method on a backbone, to ``fit`` on a few labelled images and
  ``predict`` scores, anomaly maps and class probabilities for others (numpy arrays, PIL images,
  tensors or file paths, any bit depth and channels).
* :func:`plot_maps`: images with their anomaly maps overlaid (and masks outlined), with matplotlib.

Errors in user input are :class:`~semclip_bench.errors.UserError` with the same one-line message
the command line prints.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from semclip_bench.data.labels import NORMAL_LABEL
from semclip_bench.errors import UserError

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure

    from semclip_bench.data.check import CheckReport
    from semclip_bench.models.base import FewShotMethod

log = logging.getLogger(__name__)

#: Category name given to the prompts when ``fit`` gets none (WinCLIP says "wafer pattern").
DEFAULT_CATEGORY = "wafer_pattern"


# --------------------------------------------------------------------------------------------
# Runs and results


def run_sweep(
    data: str | Path = "sem-synth",
    *,
    methods: Sequence[str] | str | None = None,
    shots: Sequence[int] | str | None = None,
    seeds: Sequence[int] | str | None = None,
    out: str | Path = "runs",
    config: str | Path | None = None,
    **options: Any,
) -> pd.DataFrame:
    """Run ``python -m semclip_bench sweep`` from Python; returns the run's episode rows.

    Keyword arguments are the command's flags with underscores (``categories``, ``backbone``,
    ``pretrained``, ``image_size``, ``device``, ``wandb``, ``shard``, ``batch_size``,
    ``precision``, ``config_dir``, ``method_overrides`` ...); ``config`` is a YAML file as for
    ``--config`` (arguments given here override it; None means "not given"). The run writes the
    same files as the command (``<out>/sweep/episodes.csv``, ``<out>/sweep.md``, plots) and resumes
    finished episodes. The DataFrame holds every row of ``<out>/sweep`` (as :func:`load_results`).
    """
    given = dict(data=data, methods=methods, shots=shots, seeds=seeds, out=out, **options)
    return _run("sweep", "run_sweep", given, config)


def run_ablation(
    data: str | Path = "sem-synth",
    *,
    ablations: Sequence[str] | str | None = None,
    shots: Sequence[int] | str | None = None,
    seeds: Sequence[int] | str | None = None,
    out: str | Path = "runs",
    config: str | Path | None = None,
    **options: Any,
) -> pd.DataFrame:
    """Run ``python -m semclip_bench ablate`` from Python (SEM-CLIP and its ablations); returns the
    rows of ``<out>/ablation``. Arguments as for :func:`run_sweep`."""
    given = dict(data=data, ablations=ablations, shots=shots, seeds=seeds, out=out, **options)
    return _run("ablation", "run_ablation", given, config)


def _run(kind: str, function: str, given: dict[str, Any], config: str | Path | None):
    from semclip_bench.runner.commands import execute
    from semclip_bench.runner.plan.config import RunConfig, merge_config, read_yaml

    base = (
        RunConfig(kind="ablation", shots=[10], methods=["semclip"])
        if kind == "ablation"
        else RunConfig(kind="sweep")
    )
    if config is not None:
        base = merge_config(base, read_yaml(Path(config), f"{function}(config=)"), str(config))
    given = {k: v for k, v in given.items() if v is not None}
    if "kind" in given:
        raise UserError(f"{function}(): 'kind' is fixed ({kind}); use run_sweep or run_ablation")
    run_config = merge_config(base, given, f"{function}()")
    if not run_config.procs_per_device:  # in-process: no launcher re-executing the caller
        run_config = dataclasses.replace(run_config, procs_per_device=1)
    if run_config.devices * run_config.procs_per_device > 1:
        raise UserError(
            f"{function}(devices={run_config.devices}): several processes need the command line "
            f"(python -m semclip_bench {'sweep' if kind == 'sweep' else 'ablate'} --devices N)"
        )
    arguments = ", ".join(f"{k}={_plain(v)!r}" for k, v in given.items())
    command = f"semclip_bench.{function}({arguments})" + (
        f" with config {config}" if config else ""
    )
    result, _ = execute(run_config, command)
    return load_results(result.folder)


def _plain(value: Any) -> Any:
    """Paths and tuples as plain str/list, for the recorded command."""
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple):
        return list(value)
    return value


def load_results(folder: str | Path) -> pd.DataFrame:
    """Episode rows under ``folder`` (a run folder such as ``results/sweep``, or ``results``).

    One row per episode with the columns of ``episodes.csv``; metrics are fractions (NaN where
    undefined), ``per_type_auroc`` and ``na_reasons`` are dicts (type -> iAUROC, metric -> why it
    is n/a). Several ``episodes.csv`` files (shards, ranks) are merged.
    """
    from semclip_bench.runner.record.row_store import read_rows

    folder = Path(folder).expanduser()
    if not folder.exists():
        raise UserError(f"load_results: folder not found: {folder}")
    rows = read_rows([folder])
    for column in ("per_type_auroc", "na_reasons"):
        rows[column] = rows[column].map(_json_dict)
    return rows


def _json_dict(text: Any) -> dict[str, Any]:
    if isinstance(text, dict):
        return text
    try:
        value = json.loads(text) if isinstance(text, str) and text else {}
    except json.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


def check_data(path: str | Path, workers: int = 4) -> CheckReport:
    """The ``data check`` report of a dataset (``print(report.format())`` shows it; ``report.ok``
    says whether it is usable; notes such as missing masks are in ``report.notes``)."""
    from semclip_bench.data.check import check_dataset

    return check_dataset(path, workers=workers)


# --------------------------------------------------------------------------------------------
# One method on in-memory images


@dataclass
class Prediction:
    """What :meth:`Method.predict` returns for N images.

    ``scores`` (N,): image anomaly scores (higher = more anomalous; rank-based, any scale).
    ``maps`` (N, S, S): anomaly maps at the method's input size S (higher = more anomalous).
    ``class_probs`` (N, C) over ``class_names`` (index 0 = normal), or None for a method that does
    not classify. ``produces_maps``: False when ``maps`` is not a segmentation (a classifier's
    score broadcast to every pixel).
    """

    scores: np.ndarray
    maps: np.ndarray
    class_probs: np.ndarray | None
    class_names: tuple[str, ...]
    produces_maps: bool = True

    @property
    def predicted_class(self) -> list[str] | None:
        """The most probable class name per image (None for a method that does not classify)."""
        if self.class_probs is None:
            return None
        return [self.class_names[i] for i in self.class_probs.argmax(axis=1)]

    def to_frame(self) -> pd.DataFrame:
        """One row per image: score, predicted class and the class probabilities."""
        import pandas as pd

        frame = pd.DataFrame({"score": self.scores})
        if self.class_probs is not None:
            frame["predicted_class"] = self.predicted_class
            for i, name in enumerate(self.class_names):
                frame[f"p_{name}"] = self.class_probs[:, i]
        return frame


@dataclass
class Method:
    """A benchmark method for notebooks, made by :func:`load_method`.

    ``fit(images, labels, masks=None)`` builds the method for the classes in ``labels`` and
    prepares/trains it on those support images exactly as an episode of the benchmark does
    (frozen features, ``setup_support``, Lightning training of trainable heads);
    ``predict(images)`` returns a :class:`Prediction`. A zero-shot method may ``predict`` without
    ``fit``. ``module`` is the fitted :class:`~semclip_bench.models.base.FewShotMethod`.
    """

    name: str
    method_class: type[FewShotMethod] = field(repr=False)
    options: dict[str, Any]
    training: dict[str, Any]
    backbone: Any = field(repr=False)
    device: torch.device
    precision: str = "fp32"
    seed: int = 0
    config_dir: Path | None = None
    batch_size: int = 32
    module: FewShotMethod | None = field(default=None, repr=False)
    class_names: tuple[str, ...] | None = None

    def fit(
        self,
        images: Sequence[Any] | Any,
        labels: Sequence[str | int],
        masks: Sequence[Any] | None = None,
        *,
        class_names: Sequence[str] | None = None,
        category: str = DEFAULT_CATEGORY,
    ) -> Method:
        """Prepare (and train) the method on labelled support images; returns ``self``.

        ``labels``: class names (``"good"`` = normal) or integer class ids into ``class_names``
        (0 = normal). ``class_names`` defaults to ``("good", *sorted defect labels)``.
        ``masks``: one per image, each None (no mask: image-level label only), a path or an
        array; normal images need none. Methods use what their supervision allows: normal-only
        methods (PatchCore, WinCLIP) use the normal images only. ``category`` names the imaged
        pattern for prompt-based methods.
        """
        from semclip_bench.models.base import SupportSet
        from semclip_bench.models.lightning import TrainingConfig, fit_method
        from semclip_bench.runner.execute.episode import (
            deterministic_mode_kept,
            head_trainer_settings,
        )

        pictures = _image_list(images)
        names = _label_names(labels, class_names, len(pictures))
        if class_names is None:
            class_names = (NORMAL_LABEL, *sorted({n for n in names if n != NORMAL_LABEL}))
        class_names = tuple(class_names)
        if class_names[0] != NORMAL_LABEL or len(set(class_names)) != len(class_names):
            raise UserError(
                f"fit: class_names {class_names} must be unique and start with {NORMAL_LABEL!r}"
            )
        unknown = sorted(set(names) - set(class_names))
        if unknown:
            raise UserError(f"fit: labels {unknown} are not in class_names {class_names}")
        mask_list = [None] * len(pictures) if masks is None else list(masks)
        if len(mask_list) != len(pictures):
            raise UserError(f"fit: {len(mask_list)} masks for {len(pictures)} images")
        keep = self._support_rows(names)
        module = self._build(class_names)
        geometry = module.input_geometry(self.backbone)
        size, mean, std = geometry.size, geometry.mean, geometry.std
        rows = [pictures[i] for i in keep]
        row_masks = [mask_list[i] for i in keep]
        tensors, mask_tensors = _to_tensors(rows, row_masks, size, mean, std)
        index = {name: i for i, name in enumerate(class_names)}
        support = SupportSet(
            features=self._extract(module, tensors),
            labels=torch.tensor([index[names[i]] for i in keep], dtype=torch.long).to(self.device),
            masks=mask_tensors.to(self.device),
            class_names=class_names,
            category=category,
            has_mask=torch.tensor(
                [names[i] == NORMAL_LABEL or mask_list[i] is not None for i in keep],
                dtype=torch.bool,
            ),
        )
        with deterministic_mode_kept():  # the Trainer turns deterministic algorithms on globally
            fit_method(
                module,
                support,
                TrainingConfig(**self.training),
                seed=self.seed,
                **head_trainer_settings(self.device),
            )
        module.eval()
        self.module, self.class_names = module, class_names
        return self

    def predict(self, images: Sequence[Any] | Any) -> Prediction:
        """Scores, maps and class probabilities of ``images`` (see :class:`Prediction`)."""
        from semclip_bench.runner.execute.features import prediction_math

        if self.module is None:
            if not self.method_class.zero_shot:
                raise UserError(f"{self.name}: call fit(images, labels) before predict")
            self.fit([], [], class_names=self.class_names or (NORMAL_LABEL, "defect"))
        module = self.module
        assert module is not None and self.class_names is not None
        geometry = module.input_geometry(self.backbone)
        size, mean, std = geometry.size, geometry.mean, geometry.std
        pictures = _image_list(images)
        if not pictures:
            raise UserError("predict: no images given")
        scores, maps, logits = [], [], []
        for begin in range(0, len(pictures), self.batch_size):
            batch, _ = _to_tensors(pictures[begin : begin + self.batch_size], None, size, mean, std)
            features = self._extract(module, batch)
            with torch.no_grad(), prediction_math(self.precision, self.device):
                out = module.predict(features).detach_cpu()
            scores.append(out.image_score)
            maps.append(out.anomaly_map)
            if out.class_logits is not None:
                logits.append(out.class_logits)
        probs = torch.cat(logits).softmax(dim=1).numpy() if logits else None
        return Prediction(
            scores=torch.cat(scores).numpy(),
            maps=torch.cat(maps).numpy(),
            class_probs=probs,
            class_names=self.class_names,
            produces_maps=bool(module.produces_maps),
        )

    # ------------------------------------------------------------------ internals
    def _support_rows(self, names: list[str]) -> list[int]:
        """Indices of the support images the method's supervision uses (as in an episode)."""
        method_class = self.method_class
        if not method_class.draws_support():
            return []
        keep = [i for i, n in enumerate(names) if method_class.draws_defects() or n == NORMAL_LABEL]
        if not keep and not method_class.zero_shot:
            what = "labelled" if method_class.draws_defects() else "normal"
            raise UserError(f"fit: {self.name} needs at least one {what} support image")
        return keep

    def _build(self, class_names: tuple[str, ...]) -> FewShotMethod:
        from semclip_bench.configs import use_config_dir

        torch.manual_seed(self.seed)
        with use_config_dir(self.config_dir):
            module = self.method_class(self.backbone, class_names, **self.options)
        return module.to(self.device).eval()

    def _extract(self, module: FewShotMethod, images: torch.Tensor) -> dict[str, torch.Tensor]:
        from semclip_bench.runner.execute.features import extract_features

        if images.shape[0] == 0:
            return {}
        parts = [
            extract_features(module, images[i : i + self.batch_size], self.precision, self.device)
            for i in range(0, images.shape[0], self.batch_size)
        ]
        return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}


def load_method(
    name: str,
    *,
    backbone: str | None = None,
    pretrained: str | None = None,
    image_size: int | None = None,
    device: str = "auto",
    precision: str = "auto",
    config_dir: str | Path | None = None,
    training: dict[str, Any] | None = None,
    seed: int = 0,
    **options: Any,
) -> Method:
    """A method on a backbone, ready to :meth:`Method.fit`: any name ``--methods`` takes (a
    built-in method, a named variant such as ``"semclip_plus"``, a plugin, a variant file of a
    config folder), resolved by the same code (``runner.plan.config.load_variant``).

    ``backbone``/``pretrained``/``image_size``/``device``/``precision`` as the sweep's flags
    (default: the shipped SEM backbone and its weights). Options and training settings come from
    ``methods/<name>.yaml`` (config lookup order, ``config_dir`` first), updated by ``options``
    (constructor keyword arguments, e.g. ``prompts="generic"``) and ``training`` (e.g.
    ``{"epochs": 5}``). ``seed`` seeds initialisation and training. The method is built once
    here with placeholder classes, so a bad option fails now, not at ``fit``.
    """
    from semclip_bench.configs import check_config_dir, use_config_dir
    from semclip_bench.models import method_class
    from semclip_bench.runner.execute.features import resolve_precision
    from semclip_bench.runner.execute.processes import resolve_device
    from semclip_bench.runner.plan.config import Variant, load_variant
    from semclip_bench.runner.plan.validate import validate_variants

    folder = check_config_dir(config_dir, "load_method(config_dir=)")
    with use_config_dir(folder):  # the names --methods takes, resolved by the same code
        variant = load_variant(
            name,
            {name: {"options": options, "training": training or {}}},
            option=f"load_method({name!r})",
        )
    cls = method_class(variant.method)
    method_options, method_training = dict(variant.options), dict(variant.training)
    torch_device = resolve_device(device)
    if precision not in ("auto", "fp32", "bf16"):
        raise UserError(f"load_method(precision={precision!r}): choose from auto, fp32, bf16")
    net = _build_backbone(backbone, pretrained, image_size, torch_device)
    with use_config_dir(folder):
        validate_variants(
            [Variant(name, variant.method, method_options, method_training)],
            {variant.method: cls},
            net,
            (NORMAL_LABEL, "defect"),
        )
    return Method(
        name=name,
        method_class=cls,
        options=method_options,
        training=method_training,
        backbone=net,
        device=torch_device,
        precision=resolve_precision(precision, torch_device),
        seed=int(seed),
        config_dir=folder,
    )


def _build_backbone(name: str | None, pretrained: str | None, image_size: int | None, device):
    """The sweep's backbone rule: the shipped backbone and its weights unless told otherwise (a
    named backbone other than the default starts from ``pretrained`` or random weights)."""
    from semclip_bench.backbones import build_backbone, requested_backbone_spec

    return build_backbone(requested_backbone_spec(name, pretrained, image_size), device=device)


# --------------------------------------------------------------------------------------------
# Image conversion


def _image_list(images: Any) -> list[np.ndarray]:
    """Images as float (H, W, C) arrays: a list/tuple of images, one batch array/tensor
    ((N, H, W), (N, H, W, C), tensors also (N, C, H, W)), or a single image/path."""
    from semclip_bench.data.images import as_image

    if isinstance(images, (list, tuple)):
        return [as_image(image) for image in images]
    if isinstance(images, (str, Path)) or hasattr(images, "getbands"):
        return [as_image(images)]
    ndim = len(getattr(images, "shape", ()))
    if ndim == 4:
        return [as_image(image) for image in images]
    if ndim == 3:
        channels_last = images.shape[2] in (1, 2, 3, 4)
        channels_first = hasattr(images, "detach") and images.shape[0] in (1, 2, 3, 4)
        if channels_last or channels_first:
            return [as_image(images)]  # one (H, W, C) / (C, H, W) image
        return [as_image(image) for image in images]  # a batch of (H, W) images
    if ndim == 2:
        return [as_image(images)]
    raise UserError(f"images: expected a list of images or an image batch, got {type(images)}")


def _label_names(
    labels: Sequence[str | int], class_names: Sequence[str] | None, n: int
) -> list[str]:
    if hasattr(labels, "tolist"):
        labels = labels.tolist()  # type: ignore[union-attr]
    labels = list(labels)
    if len(labels) != n:
        raise UserError(f"fit: {len(labels)} labels for {n} images")
    if all(isinstance(x, str) for x in labels):
        return [str(x) for x in labels]
    if not all(isinstance(x, (int, np.integer)) for x in labels):
        raise UserError("fit: labels must be all class names (str) or all class ids (int)")
    if class_names is None:
        if set(labels) - {0, 1}:
            raise UserError("fit: integer labels other than 0/1 need class_names")
        class_names = (NORMAL_LABEL, "defect")
    if any(not 0 <= int(x) < len(class_names) for x in labels):
        raise UserError(f"fit: class ids must lie in 0..{len(class_names) - 1}")
    return [class_names[int(x)] for x in labels]


def _to_tensors(
    images: list[np.ndarray], masks: list[Any] | None, size: int, mean, std
) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, 3, S, S) normalised images and (N, S, S) {0, 1} masks (zeros where none), with the
    transform episodes use (resize, 1 -> 3 channels, normalisation)."""
    from semclip_bench.data.datamodule import SampleTransform
    from semclip_bench.data.images import as_mask

    transform = SampleTransform(size, mean, std)
    pictures, planes = [], []
    for i, image in enumerate(images):
        given = None if masks is None else masks[i]
        mask = np.zeros(image.shape[:2], bool) if given is None else as_mask(given)
        if mask.shape != image.shape[:2]:
            raise UserError(
                f"mask {i}: size {mask.shape[0]}x{mask.shape[1]} (HxW) differs from its image "
                f"({image.shape[0]}x{image.shape[1]})"
            )
        picture, plane = transform(image, mask)
        pictures.append(picture)
        planes.append(plane)
    if not pictures:
        return torch.zeros(0, 3, size, size), torch.zeros(0, size, size)
    return torch.stack(pictures), torch.stack(planes)


# --------------------------------------------------------------------------------------------
# Plots


def plot_maps(
    images: Sequence[Any] | Any,
    prediction: Prediction | np.ndarray | Any,
    masks: Sequence[Any] | None = None,
    *,
    labels: Sequence[str] | None = None,
    titles: Sequence[str] | None = None,
    columns: int = 4,
    alpha: float = 0.5,
    cmap: str = "jet",
    size: float = 3.0,
) -> Figure:
    """A grid of ``images`` with their anomaly maps overlaid, ground-truth masks outlined.

    ``prediction``: a :class:`Prediction` or maps (N, h, w). Each panel is titled
    ``[title | ]true <label> | pred <class> | score <s>``: ``labels`` are the true labels (if
    known), ``pred`` the predicted class of a classifying :class:`Prediction`, so the prediction
    never reads as the truth. Maps are resized to each image; one colour scale (the maps' minimum
    to maximum) is shared by all panels, so panels compare. Returns a matplotlib ``Figure``
    (Jupyter displays it; ``fig.savefig(path)`` writes it) without touching pyplot's state.
    """
    from matplotlib.figure import Figure

    from semclip_bench.data.images import as_mask
    from semclip_bench.runner.record.maps import draw_panels

    pictures = _image_list(images)
    maps = prediction.maps if isinstance(prediction, Prediction) else np.asarray(prediction)
    if maps.ndim != 3 or len(maps) != len(pictures):
        raise UserError(f"plot_maps: {len(pictures)} images but maps of shape {maps.shape}")
    mask_list = [None] * len(pictures) if masks is None else list(masks)
    if len(mask_list) != len(pictures):
        raise UserError(f"plot_maps: {len(mask_list)} masks for {len(pictures)} images")
    if labels is not None and len(labels) != len(pictures):
        raise UserError(f"plot_maps: {len(labels)} labels for {len(pictures)} images")
    columns = max(1, min(columns, len(pictures)))
    rows = -(-len(pictures) // columns)
    fig = Figure(figsize=(size * columns, size * rows), layout="constrained")
    axes = fig.subplots(rows, columns, squeeze=False)
    for ax in axes.flat[len(pictures) :]:
        ax.set_axis_off()
    image_artist = draw_panels(
        list(axes.flat[: len(pictures)]),
        pictures,
        list(maps),
        [None if m is None else as_mask(m) for m in mask_list],
        [_panel_title(i, prediction, titles, labels) for i in range(len(pictures))],
        scale=(float(maps.min()), float(maps.max())),
        cmap=cmap,
        alpha=alpha,
    )
    if image_artist is not None:
        fig.colorbar(image_artist, ax=axes, shrink=0.8, label="anomaly map")
    return fig


def _panel_title(
    i: int, prediction: Any, titles: Sequence[str] | None, labels: Sequence[str] | None
) -> str:
    from semclip_bench.runner.record.maps import panel_title

    predicted, score = None, None
    if isinstance(prediction, Prediction):
        score = float(prediction.scores[i])
        if prediction.predicted_class is not None:
            predicted = prediction.predicted_class[i]
    text = panel_title(labels[i] if labels is not None else None, predicted, score)
    return " | ".join(p for p in (titles[i] if titles is not None else "", text) if p)


__all__ = [
    "Method",
    "Prediction",
    "check_data",
    "load_method",
    "load_results",
    "plot_maps",
    "run_ablation",
    "run_sweep",
]
