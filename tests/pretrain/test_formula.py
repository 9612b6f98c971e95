"""Formula images: deterministic IFS classes and renders, filling-rate rejection, streams."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from semclip_bench.errors import UserError
from semclip_bench.pretrain import formula as F
from semclip_bench.pretrain.data import SynthCaptionStream

SMALL = F.FormulaConfig(seed=3, classes=12, render_size=48, chains=256, iterations=8)


def test_renders_are_pure_functions_of_config_class_and_instance() -> None:
    a = F.render_formula(SMALL, 2, 7)
    assert a.dtype == np.uint8 and a.shape == (48, 48) and a.max() > 0
    F.class_ifs.cache_clear()  # redraw the class from scratch: same maps, same bytes
    again = F.render_formula(F.FormulaConfig(**SMALL.to_dict()), 2, 7)
    assert a.tobytes() == again.tobytes()
    assert a.tobytes() != F.render_formula(SMALL, 3, 7).tobytes()  # another class
    assert a.tobytes() != F.render_formula(SMALL, 2, 8).tobytes()  # another instance
    other_seed = F.FormulaConfig(**{**SMALL.to_dict(), "seed": 4})
    assert a.tobytes() != F.render_formula(other_seed, 2, 7).tobytes()


def test_class_maps_are_deterministic_and_contractive() -> None:
    F.class_ifs.cache_clear()
    first = F.class_ifs(SMALL, 5)
    F.class_ifs.cache_clear()
    second = F.class_ifs(SMALL, 5)
    assert np.array_equal(first.A, second.A) and np.array_equal(first.b, second.b)
    for c in range(SMALL.classes):
        ifs = F.class_ifs(SMALL, c)
        assert SMALL.min_maps <= len(ifs.p) <= SMALL.max_maps
        assert np.linalg.norm(ifs.A, ord=2, axis=(1, 2)).max() < SMALL.max_contraction
        assert ifs.p.sum() == pytest.approx(1.0)
    with pytest.raises(ValueError):
        F.class_ifs(SMALL, SMALL.classes)


def test_digest_names_the_config() -> None:
    digest = F.formula_digest(SMALL)
    assert len(digest) == 64 and digest == F.formula_digest(F.FormulaConfig(**SMALL.to_dict()))
    for change in ({"seed": 4}, {"classes": 13}, {"render_size": 64}, {"fill_threshold": 0.3}):
        assert F.formula_digest(F.FormulaConfig(**{**SMALL.to_dict(), **change})) != digest


def test_filling_rate_rejects_thin_attractors() -> None:
    rng = np.random.default_rng(0)
    # all maps shrink towards one point: the attractor is a dot
    dot = F.Ifs(np.stack([0.1 * np.eye(2)] * 2), np.zeros((2, 2)), np.array([0.5, 0.5]))
    assert F.filling_rate(F.chaos_game(dot, rng, 256, 10, 8), 32, 0.06) < 0.01
    # a segment: both maps squash y to 0
    flat = F.Ifs(np.array([[[0.5, 0], [0, 0]], [[0.5, 0], [0, 0]]]), np.array([[0, 0], [0.5, 0]]),
                 np.array([0.5, 0.5]))  # fmt: skip
    assert F.filling_rate(F.chaos_game(flat, rng, 256, 10, 8), 32, 0.06) <= 1 / 32 + 1e-9
    # a square (four corner maps of ratio 1/2) fills the canvas
    corners = np.array([[0, 0], [0.5, 0], [0, 0.5], [0.5, 0.5]])
    square = F.Ifs(np.stack([0.5 * np.eye(2)] * 4), corners, np.full(4, 0.25))
    assert F.filling_rate(F.chaos_game(square, rng, 1024, 10, 16), 32, 0.06) > 0.6

    strict = F.FormulaConfig(**{**SMALL.to_dict(), "fill_threshold": 0.35})
    rejected = 0
    for c in range(8):
        ifs = F.class_ifs(strict, c)
        again = np.random.default_rng([1, 2])
        assert F.filling_rate(F.chaos_game(ifs, again, 1024, 12, 16), 32, 0.06) >= 0.3
        # the first draw of the class's generator, as class_ifs made it
        rng = np.random.default_rng([strict.seed, c, F._CLASS_KEY])
        first = F.draw_ifs(rng, strict)
        points = F.chaos_game(first, rng, min(strict.chains, 1024), strict.burn_in, 16)
        if F.filling_rate(points, strict.fill_grid, strict.margin) < strict.fill_threshold:
            rejected += 1
            assert not (len(first.p) == len(ifs.p) and np.array_equal(first.A, ifs.A))
    assert rejected > 0  # the criterion does redraw some classes


def test_bad_config_is_a_user_error() -> None:
    with pytest.raises(UserError, match="classes"):
        F.FormulaConfig(classes=0)
    with pytest.raises(UserError, match="fill_threshold"):
        F.FormulaConfig(fill_threshold=1.5)


def test_stream_items_and_labels() -> None:
    stream = F.FormulaStream(SMALL, 32)
    item = stream.item(4)
    assert item["image"].shape == (1, 32, 32) and item["image"].dtype == torch.float16
    assert 0 <= item["label"] < SMALL.classes and item["index"] == 4
    assert torch.equal(item["image"], F.FormulaStream(SMALL, 32).item(4)["image"])
    plain = F.FormulaStream(SMALL, 48, augment=False).item(4)
    expected = F.render_formula(SMALL, item["label"], 4).astype(np.float32) / 255
    assert torch.allclose(plain["image"][0].float(), torch.from_numpy(expected), atol=1e-3)
    labels = {stream.label(i) for i in range(200)}
    assert labels == set(range(SMALL.classes))


def test_stream_shards_across_workers_and_ranks_without_duplicates() -> None:
    seen = []
    for rank in range(2):
        stream = F.FormulaStream(SMALL, 16, length=16, rank=rank, world_size=2)
        loader = DataLoader(stream, batch_size=2, num_workers=2)
        seen += [int(i) for batch in loader for i in batch["index"]]
    assert sorted(seen) == list(range(16))


def test_mixed_stream_adds_a_formula_sample_to_each_caption_item() -> None:
    captions = SynthCaptionStream("semclip-tiny", 32, render_size=64, length=3)
    items = list(F.MixedStream(captions, F.FormulaStream(SMALL, 32)))
    assert len(items) == 3
    for it in items:
        assert {"image", "text", "formula_image", "formula_label"} <= set(it)
        assert it["formula_image"].shape == (1, 32, 32)
