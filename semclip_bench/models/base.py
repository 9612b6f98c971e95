"""The contract every method of the benchmark implements.

A method is a plain :class:`torch.nn.Module` (runs without Lightning) split into three steps so that
the runner can cache the expensive frozen part across shots, seeds and methods:

1. ``extract(images) -> Features``: frozen backbone computation, per image, deterministic. Its
   result depends only on the image and ``feature_key()``; the runner caches it.
2. ``setup_support(support)``: non-gradient preparation from the support set (memory banks, text
   embeddings, prototype statistics). Called once per episode, before any training.
3. ``predict(features) -> MethodOutput``: the trainable / memory-based head.

Trainable methods also implement ``training_loss`` and are optimised by a Lightning Trainer through
:class:`semclip_bench.models.lightning.FewShotModule`.

Masks are optional: a defect image may come without a mask (image-level labels only). Its mask in
``SupportSet.masks`` (and in the ``masks`` batch of ``training_loss``) is all zero and
``SupportSet.has_mask`` is False for it. Pixel losses must skip such rows: a defect row whose mask
is all zero carries no pixel supervision (:func:`pixel_supervision` gives the per-row weights), and
the image-level / classification losses still use it. Methods that train on masks declare
``uses_masks = True`` so that the tables say when they trained without them.

A method declares its capabilities as class attributes (``supervision``, ``zero_shot``,
``trainable``, ``trains_stacked``) and its input geometry as attributes (``image_size``, ``mean``,
``std``; None: the backbone's). The runner, the API and the benchmarks read them through
:meth:`FewShotMethod.input_geometry`, :meth:`FewShotMethod.support_of` and the other class methods
below instead of deriving them again.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, TypeVar

import torch
from torch import Tensor, nn

#: Per-image frozen features: each value is batch-first (first dim = number of images).
Features = dict[str, Tensor]

Supervision = Literal["zero-shot", "normal", "normal+defects"]

_Item = TypeVar("_Item")

SUPERVISION_TEXT: dict[str, str] = {
    "zero-shot": "no support images",
    "normal": "K normal images",
    "normal+defects": "K normal + K per defect type, with masks",
}


def supervision_text(
    supervision: str,
    uses_masks: bool = True,
    missing_mask_types: Sequence[str] = (),
    no_masks: bool = False,
) -> str:
    """The table's supervision column: ``SUPERVISION_TEXT``, adjusted for masks.

    A method that does not train on masks says so. One that does but whose support set has defect
    images without masks says which types (``missing_mask_types``), or that it had none at all
    (``no_masks``): it trained those with its image-level / classification losses only.
    """
    text = SUPERVISION_TEXT.get(supervision, supervision)
    if supervision != "normal+defects":
        return text
    if not uses_masks:
        return text.replace(", with masks", "")
    if no_masks:
        return text.replace("with masks", "no masks (image-level losses only)")
    if missing_mask_types:
        missing = ", ".join(missing_mask_types)
        return text.replace("with masks", f"no masks for {missing} (image-level losses there)")
    return text


def pixel_supervision(labels: Tensor, masks: Tensor) -> Tensor:
    """(B,) float weights of the pixel losses: 1 for normal rows (label 0) and for defect rows
    with a non-empty mask, 0 for defect rows without a mask (image-level labels only)."""
    annotated = masks.flatten(1).amax(dim=1) > 0 if masks.numel() else labels.new_zeros(0).bool()
    return ((labels.to(annotated.device) == 0) | annotated).float()


@dataclass(frozen=True)
class InputGeometry:
    """The images ``extract`` takes: ``size`` x ``size`` pixels, normalised with ``mean`` and
    ``std`` (per channel)."""

    size: int
    mean: Any
    std: Any


@dataclass
class MethodOutput:
    """What every method returns for a batch of B query images of size H x W.

    ``image_score``: (B,) real-valued, higher = more anomalous (any scale; metrics are rank-based).
    ``anomaly_map``: (B, H, W) at input resolution, higher = more anomalous.
    ``class_logits``: (B, C) over ``class_names`` (index 0 = normal) or None if the method does not
    classify.
    """

    image_score: Tensor
    anomaly_map: Tensor
    class_logits: Tensor | None = None

    def detach_cpu(self) -> MethodOutput:
        return MethodOutput(
            self.image_score.detach().float().cpu(),
            self.anomaly_map.detach().float().cpu(),
            None if self.class_logits is None else self.class_logits.detach().float().cpu(),
        )


@dataclass
class SupportSet:
    """An episode's support set in feature space.

    ``features``: extracted support features (N images). ``labels``: (N,) class ids into
    ``class_names`` (0 = normal). ``masks``: (N, H, W) float {0, 1} at input resolution (zeros for
    normal images and for defect images without a mask). ``category``: the category name (used by
    prompts). ``has_mask``: (N,) bool, False for defect images that come without a mask (default:
    all True). N may be 0 (zero-shot).
    """

    features: Features
    labels: Tensor
    masks: Tensor
    class_names: tuple[str, ...]
    category: str
    has_mask: Tensor | None = None

    def __post_init__(self) -> None:
        if self.has_mask is None:
            self.has_mask = torch.ones(len(self.labels), dtype=torch.bool)


class FewShotMethod(nn.Module, ABC):
    """Base class of every method; see the module docstring for the contract."""

    #: Registry name, e.g. "semclip", "winclip", "anomalyclip", "patchcore", "linear_probe".
    name: ClassVar[str]
    #: Supervision the method uses from the support set.
    supervision: ClassVar[Supervision]
    #: Whether ``predict`` returns class logits.
    classifies: ClassVar[bool] = False
    #: Whether the method has parameters optimised on the support set.
    trainable: ClassVar[bool] = False
    #: Whether K = 0 (no support images at all) is a valid episode for the method.
    zero_shot: ClassVar[bool] = False
    #: Whether ``anomaly_map`` is a real segmentation (False: pixel metrics are reported n/a).
    produces_maps: ClassVar[bool] = True
    #: Whether ``training_loss`` uses the masks (pixel losses); see the module docstring.
    uses_masks: ClassVar[bool] = False
    #: Whether the episodes of one (variant, K) may train as one stacked module
    #: (``models/stacked.py``): ``training_loss`` has no data-dependent Python control flow.
    trains_stacked: ClassVar[bool] = False

    #: Input side in pixels of ``extract``'s images; None: the backbone's. A method with its own
    #: extractor (e.g. a CNN) sets it, and ``mean`` / ``std``, in ``__init__``.
    image_size: int | None = None
    #: Per-channel normalisation mean of the input; None: the backbone's.
    mean: Any = None
    #: Per-channel normalisation std of the input; None: the backbone's.
    std: Any = None

    def input_geometry(self, backbone: Any) -> InputGeometry:
        """Size, mean and std of the images ``extract`` takes: the method's own where it sets
        them, else the backbone's."""
        return InputGeometry(
            size=int(self.image_size or backbone.image_size),
            mean=backbone.mean if self.mean is None else self.mean,
            std=backbone.std if self.std is None else self.std,
        )

    @classmethod
    def draws_support(cls) -> bool:
        """Whether the method takes support images at all (its supervision is not zero-shot)."""
        return cls.supervision != "zero-shot"

    @classmethod
    def draws_defects(cls) -> bool:
        """Whether its support holds K images per defect type besides the K normal ones."""
        return cls.supervision == "normal+defects"

    @classmethod
    def support_of(cls, normal: Sequence[_Item], defects: Sequence[_Item]) -> list[_Item]:
        """The support images the method draws, in episode order: the normal ones, then the
        defect ones when its supervision takes them."""
        return [*normal, *defects] if cls.draws_defects() else list(normal)

    @classmethod
    def supervision_at(cls, shots: int) -> Supervision:
        """The supervision of an episode of ``shots`` (K = 0 is zero-shot for every method)."""
        return "zero-shot" if shots == 0 else cls.supervision

    @classmethod
    def runs_at(cls, shots: int) -> bool:
        """Whether an episode of ``shots`` is valid for the method (K = 0 needs ``zero_shot``)."""
        return shots > 0 or cls.zero_shot

    @classmethod
    def trains_at(cls, shots: int) -> bool:
        """Whether an episode of ``shots`` fits parameters (a trainable method with support)."""
        return cls.trainable and shots > 0

    @abstractmethod
    def feature_key(self) -> str:
        """Identity of ``extract``'s computation (backbone, weights, size, taps ...) for caching."""

    @abstractmethod
    def extract(self, images: Tensor) -> Features:
        """Frozen features of a batch of normalised images (B, 3, H, W)."""

    def setup_support(self, support: SupportSet) -> None:
        """Prepare from the support set without gradients. Default: nothing to prepare."""

    def training_features(self, support: SupportSet) -> Features:
        """The features a fit's support batches carry (called after ``setup_support``).

        Default: the support's own. A method may replace frozen per-image work of every step by
        tensors computed here once per fit (batch-first, one row per support image), as long as a
        batch of their rows holds exactly what the step would have computed from its features.
        """
        return support.features

    @abstractmethod
    def predict(self, features: Features) -> MethodOutput:
        """Scores, maps (and logits) from extracted features."""

    def training_loss(self, features: Features, labels: Tensor, masks: Tensor) -> dict[str, Tensor]:
        """Loss terms on a support batch; the dict must contain the total under ``"loss"``."""
        raise NotImplementedError(f"{type(self).__name__} is not trainable")

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Parameters the support-set training optimises (the backbone is always frozen)."""
        return [p for p in self.parameters() if p.requires_grad]

    def forward(self, images: Tensor) -> MethodOutput:
        with torch.no_grad():
            features = self.extract(images)
        return self.predict(features)
