"""The capabilities a method declares on the FewShotMethod contract and what they imply."""

from __future__ import annotations

from types import SimpleNamespace

from semclip_bench.models import method_class
from semclip_bench.models.base import FewShotMethod, InputGeometry

BACKBONE = SimpleNamespace(image_size=224, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))


class _Geometry:
    """A stand-in carrying the attributes ``input_geometry`` reads (no module needed)."""

    image_size: int | None = None
    mean = None
    std = None
    input_geometry = FewShotMethod.input_geometry


def test_input_geometry_is_the_backbones_unless_the_method_sets_its_own():
    assert _Geometry().input_geometry(BACKBONE) == InputGeometry(224, BACKBONE.mean, BACKBONE.std)
    own = _Geometry()
    own.image_size, own.mean, own.std = 256, (0.1, 0.2, 0.3), (1.0, 2.0, 3.0)
    assert own.input_geometry(BACKBONE) == InputGeometry(256, (0.1, 0.2, 0.3), (1.0, 2.0, 3.0))


def test_support_follows_the_supervision():
    normal, defects = ["n1", "n2"], ["d1", "d2", "d3"]
    semclip, patchcore = method_class("semclip"), method_class("patchcore")
    assert semclip.draws_defects() and semclip.draws_support()
    assert semclip.support_of(normal, defects) == ["n1", "n2", "d1", "d2", "d3"]
    assert not patchcore.draws_defects() and patchcore.draws_support()
    assert patchcore.support_of(normal, defects) == ["n1", "n2"]


def test_zero_shot_and_training_by_shots():
    winclip, semclip = method_class("winclip"), method_class("semclip")
    patchcore = method_class("patchcore")
    assert winclip.runs_at(0) and not patchcore.runs_at(0) and patchcore.runs_at(1)
    assert (
        winclip.supervision_at(0) == "zero-shot"
        and semclip.supervision_at(5) == semclip.supervision
    )
    assert semclip.trains_at(5) and not semclip.trains_at(0) and not winclip.trains_at(5)
    assert FewShotMethod.trains_stacked is False
