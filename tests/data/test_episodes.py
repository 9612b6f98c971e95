"""Few-shot episodes: the PROTOCOL.md sampling rules."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from semclip_bench.data import make_episode, support_manifest, write_support_manifest
from semclip_bench.data.types import DefectDataset, Episode, Sample
from semclip_bench.errors import UserError

COUNTS = {("train", "good"): 20, ("test", "good"): 10, ("test", "hole"): 8, ("test", "bridge"): 6}


def _dataset(counts: dict[tuple[str, str], int] = COUNTS, category: str = "c") -> DefectDataset:
    """An in-memory dataset (episodes only look at paths, never at pixels)."""
    samples = [
        Sample(Path(f"/d/{category}/{split}/{label}/{i:03d}.png"), category, split, label)
        for (split, label), n in counts.items()
        for i in range(n)
    ]
    # Shuffled storage order: episodes must draw from path-sorted lists regardless.
    order = np.random.default_rng(123).permutation(len(samples))
    return DefectDataset("mem", [samples[i] for i in order])


def _keys(samples: tuple[Sample, ...]) -> list[str]:
    return [s.key for s in samples]


@pytest.mark.parametrize("shots", [1, 3, 5])
def test_support_sizes_and_disjoint_query(shots: int) -> None:
    dataset = _dataset()
    episode = make_episode(dataset, "c", shots, seed=0)
    assert episode.skipped is None
    assert episode.class_names == ("good", "bridge", "hole")
    assert len(episode.normal_support) == shots
    assert all(s.split == "train" and s.label == "good" for s in episode.normal_support)
    assert sorted(episode.defect_support) == ["bridge", "hole"]
    for label, chosen in episode.defect_support.items():
        assert len(chosen) == shots
        assert all(s.split == "test" and s.label == label for s in chosen)
    support = _keys(episode.normal_support) + _keys(episode.defect_support_flat)
    query = _keys(episode.query)
    assert len(set(support)) == len(support)  # without replacement
    assert len(set(query)) == len(query)
    assert not set(support) & set(query)
    # query = every test image minus the defect support
    test = {s.key for s in dataset.select("c", "test")}
    assert set(query) | set(_keys(episode.defect_support_flat)) == test
    assert len(query) == 10 + (8 - shots) + (6 - shots)
    assert query == sorted(query)


def test_draw_order_is_the_documented_one() -> None:
    dataset = _dataset()
    episode = make_episode(dataset, "c", 2, seed=42)
    rng = np.random.default_rng(42)
    expected = []
    for split, label in [("train", "good"), ("test", "bridge"), ("test", "hole")]:
        pool = sorted(s.key for s in dataset.samples if s.split == split and s.label == label)
        expected.append([pool[i] for i in rng.permutation(len(pool))[:2]])
    assert _keys(episode.normal_support) == expected[0]
    assert _keys(episode.defect_support["bridge"]) == expected[1]
    assert _keys(episode.defect_support["hole"]) == expected[2]


def test_same_seed_same_episode_different_seed_different() -> None:
    dataset = _dataset()
    first = make_episode(dataset, "c", 3, seed=7)
    again = make_episode(_dataset(), "c", 3, seed=7)
    assert first == again
    others = [make_episode(dataset, "c", 3, seed=s) for s in (8, 9)]
    for other in others:
        assert _keys(other.normal_support) != _keys(first.normal_support)
        assert _keys(other.defect_support_flat) != _keys(first.defect_support_flat)


def test_shots_are_nested_for_a_seed() -> None:
    dataset = _dataset()
    small = make_episode(dataset, "c", 1, seed=3)
    large = make_episode(dataset, "c", 5, seed=3)
    assert _keys(large.normal_support)[:1] == _keys(small.normal_support)
    for label in ("bridge", "hole"):
        assert _keys(large.defect_support[label])[:1] == _keys(small.defect_support[label])


def test_zero_shot_has_no_support() -> None:
    episode = make_episode(_dataset(), "c", 0, seed=0)
    assert episode.skipped is None
    assert episode.normal_support == () and episode.defect_support == {}
    assert len(episode.query) == 24
    assert support_manifest(episode) == []


def test_defect_type_too_small_is_skipped_with_reason() -> None:
    # bridge has 6 images: 6-shot leaves nothing for the query.
    episode = make_episode(_dataset(), "c", 6, seed=0)
    assert episode.skipped is not None
    assert "test/bridge has 6 image(s), 6-shot needs 7" in episode.skipped
    assert "hole" not in episode.skipped
    assert episode.normal_support == () and episode.defect_support == {} and episode.query == ()
    assert episode.class_names == ("good", "bridge", "hole")
    assert make_episode(_dataset(), "c", 5, seed=0).skipped is None
    both = make_episode(_dataset(), "c", 8, seed=0).skipped
    assert both == (
        "c: test/bridge has 6 image(s), 8-shot needs 9 (8 support + 1 query); "
        "test/hole has 8 image(s), 8-shot needs 9 (8 support + 1 query)"
    )
    counts = {("train", "good"): 9, ("test", "hole"): 3, ("test", "scratch"): 3}
    grouped = make_episode(_dataset(counts), "c", 3, seed=0).skipped
    assert grouped == "c: test/{hole,scratch} have 3 image(s), 3-shot needs 4 (3 support + 1 query)"


def test_normal_class_too_small_is_skipped() -> None:
    counts = {("train", "good"): 2, ("test", "good"): 2, ("test", "hole"): 30}
    episode = make_episode(_dataset(counts), "c", 3, seed=0)
    assert episode.skipped is not None and "train/good has 2 image(s), 3-shot needs 3" in (
        episode.skipped
    )


def test_no_query_is_skipped() -> None:
    episode = make_episode(_dataset({("train", "good"): 3}), "c", 1, seed=0)
    assert episode.skipped is not None and "no test images" in episode.skipped


def test_bad_arguments() -> None:
    with pytest.raises(UserError, match="category 'zz' is not in dataset mem"):
        make_episode(_dataset(), "zz", 1, seed=0)
    with pytest.raises(UserError, match="shots must be a non-negative integer"):
        make_episode(_dataset(), "c", -1, seed=0)


def test_support_manifest(tmp_path: Path) -> None:
    episode = make_episode(_dataset(), "c", 2, seed=0)
    rows = support_manifest(episode)
    assert [r["role"] for r in rows] == ["normal_support"] * 2 + ["defect_support"] * 4
    assert [r["class"] for r in rows] == ["good"] * 2 + ["bridge"] * 2 + ["hole"] * 2
    assert [r["path"] for r in rows] == _keys(episode.normal_support) + _keys(
        episode.defect_support_flat
    )
    with_query = support_manifest(episode, include_query=True)
    assert len(with_query) == 6 + len(episode.query)
    path = write_support_manifest(episode, tmp_path / "out" / "support.csv")
    with path.open(newline="") as handle:
        assert list(csv.DictReader(handle)) == rows


def test_episode_on_loaded_dataset(handmade) -> None:  # type: ignore[no-untyped-def]
    from semclip_bench.data import load_dataset

    dataset = load_dataset(handmade())
    episode = make_episode(dataset, "cat_a", 1, seed=0)
    assert isinstance(episode, Episode) and episode.skipped is None
    assert episode.dataset == "ds"
    assert len(episode.query) == 3 + 2 + 1
    assert make_episode(dataset, "cat_a", 2, seed=0).skipped  # particle has only 2 images
