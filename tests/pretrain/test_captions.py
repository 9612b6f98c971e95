"""Captions: held-out types never appear, phrasing varies, captions follow the augmentation, and
the vocabulary is method-neutral (every prompt-bank word present, no prompt copied verbatim)."""

from __future__ import annotations

import re

import numpy as np
import open_clip
import pytest

import semclip_bench.backbones as bb
from semclip_bench.data.labels import DEFECT_TYPES, EXCLUDED_TYPES, SEEN_TYPES
from semclip_bench.data.synth import SynthConfig, render_image
from semclip_bench.pretrain.captions import (
    caption_from_meta,
    check_caption,
    orientation_word,
)
from semclip_bench.pretrain.data import dihedral_meta, render_sample, sample_plan
from semclip_bench.pretrain.vocabulary import (
    checked_words,
    copies_prompt_bank,
    normalise,
    prompt_sentences,
    unchecked_words,
    words,
)

CONFIG = SynthConfig(seed=100_000, image_size=64)
#: Captions drawn per rendered meta for the vocabulary tests.
DRAWS = 120


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


@pytest.fixture(scope="module")
def captions(metas: list[dict]) -> dict[str, list[str]]:
    """label -> captions: DRAWS per meta (5 labels x 3 families), also at 256 px geometry."""
    rng = np.random.default_rng(3)
    out: dict[str, list[str]] = {}
    for meta in metas:
        big = {**meta, "image_size": 256, "beam_blur_px": 4 * float(meta["beam_blur_px"])}
        for m in (meta, big):
            texts = [caption_from_meta(m, rng) for _ in range(DRAWS // 2)]
            out.setdefault(meta["defect_type"] or "good", []).extend(texts)
    return out


def test_seen_and_held_out_types_split_the_defect_types() -> None:
    assert sorted((*SEEN_TYPES, *EXCLUDED_TYPES)) == sorted(DEFECT_TYPES)
    assert not set(SEEN_TYPES) & set(EXCLUDED_TYPES)


def test_captions_never_name_held_out_types(captions: dict[str, list[str]]) -> None:
    for texts in captions.values():
        for text in texts:
            low = text.lower()
            assert "scratch" not in low and "infilm" not in low and "in-film" not in low
            assert "in film" not in low


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
        assert len(texts) >= 40, texts


def test_caption_content_follows_meta() -> None:
    meta = _meta("contact_array", "particle", 3)
    rng = np.random.default_rng(2)
    texts = [caption_from_meta(meta, rng).lower() for _ in range(200)]
    names = re.compile(r"\b(particle|debris)\b")
    generic = re.compile(
        r"\b(damaged|damage|defect|defective|flaw|flawed|broken|anomaly|anomalous|abnormal|"
        r"faulty|imperfect|rejected|fails)\b"
    )
    assert np.mean([bool(names.search(t)) for t in texts]) > 0.8
    assert np.mean([bool(generic.search(t)) for t in texts]) > 0.8
    assert any(f"{meta['pitch_nm']:.0f} nm" in t for t in texts)
    good = _meta("line_space", "good", 4)
    good_texts = [caption_from_meta(good, rng).lower() for _ in range(200)]
    seen_names = re.compile(r"\b(particle|bridge|bridging|hole|void|residue|pit|pinhole|debris)\b")
    assert not any(seen_names.search(t) for t in good_texts)
    normal = re.compile(
        r"\b(flawless|perfect|unblemished|intact|good|without|no|normal|clean|regular|uniform|"
        r"pristine|free|undamaged|well|nominal|nothing)\b"
    )
    assert np.mean([bool(normal.search(t)) for t in good_texts]) > 0.8
    anomalous = re.compile(r"\b(damaged|defective|flawed|broken|abnormal|anomalous|faulty)\b")
    assert not any(anomalous.search(t) for t in good_texts)


def test_every_prompt_bank_word_is_in_the_caption_vocabulary(
    captions: dict[str, list[str]],
) -> None:
    """Checked: every word of the expert and generic banks' phrases of 'good' and of the seen
    types, of WinCLIP's normal/anomalous states and object names, of AnomalyCLIP's prompt words
    ("object", "damaged") and of the three banks' templates; not checked: the held-out types'
    phrases, words naming a held-out type ("scratches") and "jpeg" (unchecked_words)."""
    checked = checked_words()
    assert set(checked) == {
        "expert states", "generic states", "winclip states", "winclip object names",
        "anomalyclip prompts", "templates",
    }  # fmt: skip
    must = {"flawless", "perfect", "unblemished", "without", "flaw", "defect", "damage",
            "damaged", "object", "good", "photo", "bridge", "adjacent", "copper", "residue",
            "particle", "hole", "surface", "wafer", "particles"}  # fmt: skip
    assert must <= {w for ws in checked.values() for w in ws}
    assert set(unchecked_words()) == {"scratches", "jpeg"}
    vocabulary = {w for texts in captions.values() for t in texts for w in words(t)}
    missing = {src: [w for w in ws if w not in vocabulary] for src, ws in checked.items()}
    assert not any(missing.values()), missing


def test_no_prompt_is_copied_verbatim(captions: dict[str, list[str]]) -> None:
    sentences = prompt_sentences()
    assert len(sentences) > 900  # 21 templates x 11 states x 4 object names and the rest
    assert "a photo of a flawless line and space pattern on a wafer" in sentences
    for texts in captions.values():
        for text in texts:
            norm = f" {normalise(text)} "
            hits = [s for s in sentences if f" {s} " in norm]
            assert not hits, (text, hits)
            assert copies_prompt_bank(text) is None, text


def test_copy_detector_catches_prompt_wording() -> None:
    for text in (
        "A SEM image of a bridge on wafer surface.",
        "a photo of the flawless object for anomaly detection",
        "Clean lines and spaces, 5 kV",
        "vias: damaged object",
        "a flawless line and space pattern on a wafer",
        "an electron micrograph of a void in the film",
    ):
        assert copies_prompt_bank(text) is not None, text
    for text in ("SEM image of damaged lines: a bridge", "flawless vias without defect"):
        assert copies_prompt_bank(text) is None, text


def test_captions_fit_the_text_context(captions: dict[str, list[str]]) -> None:
    tokenizer = open_clip.get_tokenizer(bb.DEFAULT_MODEL)
    longest = max(len(tokenizer.encode(t)) for texts in captions.values() for t in texts)
    assert longest <= 75  # plus start and end tokens: the 77-token context


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
