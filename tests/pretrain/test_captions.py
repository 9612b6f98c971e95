"""Captions: held-out types never appear, phrasing varies, captions follow the augmentation."""

from __future__ import annotations

import re

import numpy as np
import pytest

from semclip_bench.data.synth import SynthConfig, render_image
from semclip_bench.pretrain.captions import (
    EXCLUDED_TYPES,
    SEEN_TYPES,
    caption_from_meta,
    check_caption,
    orientation_word,
)
from semclip_bench.pretrain.data import dihedral_meta, render_sample, sample_plan

CONFIG = SynthConfig(seed=100_000, image_size=64)


def _meta(category: str, label: str, index: int = 0) -> dict:
    split = "train" if label == "good" else "test"
    return render_image(CONFIG, category, split, label, index).meta


@pytest.fixture(scope="module")
def metas() -> list[dict]:
    return [
        _meta(c, lab, i)
        for i, (c, lab) in enumerate(
            (c, lab) for c in CONFIG.categories for lab in ("good", *SEEN_TYPES)
        )
    ]


def test_captions_never_name_held_out_types(metas: list[dict]) -> None:
    rng = np.random.default_rng(0)
    for meta in metas:
        for _ in range(40):
            text = caption_from_meta(meta, rng).lower()
            assert "scratch" not in text and "infilm" not in text and "in-film" not in text
            assert "in film" not in text


def test_excluded_meta_and_words_are_refused() -> None:
    for kind in EXCLUDED_TYPES:
        with pytest.raises(ValueError, match="held out"):
            caption_from_meta(_meta("line_space", kind), np.random.default_rng(0))
    for text in ("a long Scratch on lines", "an in-film defect", "infilm bump"):
        with pytest.raises(ValueError):
            check_caption(text)
    assert check_caption("a particle near the top left") == "a particle near the top left"


def test_stream_never_draws_held_out_types() -> None:
    labels = {sample_plan(100_000, i)[2] for i in range(3000)}
    assert labels == {"good", *SEEN_TYPES}
    assert not labels & set(EXCLUDED_TYPES)
    normal = np.mean([sample_plan(123_456, i)[2] == "good" for i in range(3000)])
    assert 0.35 < normal < 0.45
    for i in range(12):  # rendered images carry a seen label (or none)
        _, meta = render_sample(CONFIG, i)
        assert meta["defect_type"] in (None, *SEEN_TYPES)


def test_many_phrasings_for_the_same_meta(metas: list[dict]) -> None:
    for meta in metas[:3] + metas[-3:]:
        rng = np.random.default_rng(1)
        texts = {caption_from_meta(meta, rng) for _ in range(60)}
        assert len(texts) >= 30, texts


def test_caption_content_follows_meta() -> None:
    meta = _meta("contact_array", "particle", 3)
    rng = np.random.default_rng(2)
    texts = [caption_from_meta(meta, rng).lower() for _ in range(60)]
    assert all("particle" in t or "debris" in t for t in texts)
    assert any(f"{meta['pitch_nm']:.0f} nm" in t for t in texts)
    good = _meta("line_space", "good", 4)
    good_texts = [caption_from_meta(good, rng).lower() for _ in range(60)]
    nouns = re.compile(r"\b(particle|bridge|hole|void|residue|pit|pinhole|debris)\b")
    assert not any(nouns.search(t) for t in good_texts)
    assert any("defect-free" in t or "no defect" in t or "none" in t for t in good_texts)


def test_location_and_orientation_follow_the_dihedral_transform() -> None:
    size = 90
    meta = {"orientation_deg": 1.0, "centroid_yx": [10.0, 10.0]}  # vertical lines, top left
    rotated = dihedral_meta(meta, 1, False, size)  # rot90 counter-clockwise
    assert orientation_word(rotated["orientation_deg"]) == "horizontal"
    assert rotated["centroid_yx"] == [size - 1 - 10.0, 10.0]  # bottom left
    flipped = dihedral_meta(meta, 0, True, size)
    assert orientation_word(flipped["orientation_deg"]) == "vertical"
    assert flipped["centroid_yx"] == [10.0, size - 1 - 10.0]  # top right
    image = np.zeros((size, size), np.uint8)
    image[10, 10] = 1
    for k in range(4):
        for flip in (False, True):
            aug = np.rot90(image, k)
            aug = aug[:, ::-1] if flip else aug
            y, x = np.argwhere(aug)[0]
            assert dihedral_meta(meta, k, flip, size)["centroid_yx"] == [y, x]
