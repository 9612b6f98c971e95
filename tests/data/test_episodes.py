"""Few-shot episodes: the PROTOCOL.md (v2) sampling rules -- fixed pools, fixed query."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from semclip_bench.data import make_episode, support_manifest, write_support_manifest
from semclip_bench.data.episodes import (
    MIN_QUERY_PER_TYPE,
    POOL_SIZE,
    defect_pools,
    pool_capacity,
    pool_seed,
    query_set,
)
from semclip_bench.data.synth import SynthConfig, image_tasks, relative_paths
from semclip_bench.data.types import DefectDataset, Episode, Sample
from semclip_bench.errors import UserError

#: hole gets the full pool (30 >= 20 + 5); bridge a smaller one (12 - 5 = 7).
COUNTS = {
    ("train", "good"): 30,
    ("test", "good"): 10,
    ("test", "hole"): 30,
    ("test", "bridge"): 12,
}


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


def test_pool_capacity_rule() -> None:
    assert POOL_SIZE == 20 and MIN_QUERY_PER_TYPE == 5
    assert pool_capacity(40) == 20 and pool_capacity(25) == 20
    assert pool_capacity(24) == 19 and pool_capacity(12) == 7 and pool_capacity(6) == 1
    assert pool_capacity(3) == 1 and pool_capacity(2) == 1  # at least 1 while one is left
    assert pool_capacity(1) == 0
    assert pool_capacity(30, pool_size=5) == 5 and pool_capacity(30, pool_size=0) == 0


@pytest.mark.parametrize("shots", [1, 3, 7])
def test_support_from_pools_and_query_is_test_minus_pools(shots: int) -> None:
    dataset = _dataset()
    episode = make_episode(dataset, "c", shots, seed=0)
    assert episode.skipped is None
    assert episode.class_names == ("good", "bridge", "hole")
    assert episode.pool_sizes == {"bridge": 7, "hole": 20}
    assert episode.notes == (
        "c/bridge: defect support pool 7 < 20 (only 12 test image(s); 5 kept for the query)",
    )
    assert len(episode.normal_support) == shots
    assert all(s.split == "train" and s.label == "good" for s in episode.normal_support)
    assert sorted(episode.defect_support) == ["bridge", "hole"]
    for label, chosen in episode.defect_support.items():
        assert len(chosen) == shots
        assert set(chosen) <= set(episode.defect_pools[label])
    support = _keys(episode.normal_support) + _keys(episode.defect_support_flat)
    pooled = {s.key for pool in episode.defect_pools.values() for s in pool}
    query = _keys(episode.query)
    assert len(set(support)) == len(support)  # without replacement
    assert not set(support) & set(query) and not pooled & set(query)  # pools never in the query
    test = {s.key for s in dataset.select("c", "test")}
    assert set(query) | pooled == test
    assert len(query) == 10 + (30 - 20) + (12 - 7) and query == sorted(query)


def test_query_is_the_same_for_every_shots_and_seed() -> None:
    dataset = _dataset()
    expected = _keys(query_set(dataset, "c"))
    episodes = [make_episode(dataset, "c", k, seed=s) for k in (0, 1, 5, 7) for s in (0, 1, 2)]
    assert all(e.skipped is None for e in episodes)
    assert {tuple(_keys(e.query)) for e in episodes} == {tuple(expected)}
    # The query is a function of (dataset, category) only: whichever method consumes the
    # episode, it sees this set. Reordering the dataset's storage does not change it either.
    reordered = DefectDataset("mem", list(reversed(dataset.samples)))
    assert _keys(query_set(reordered, "c")) == expected


def test_pools_do_not_depend_on_the_episode_seed_or_shots() -> None:
    dataset = _dataset()
    pools = defect_pools(dataset, "c")
    for shots in (0, 1, 7):
        for seed in (0, 5, 99):
            assert make_episode(dataset, "c", shots, seed).defect_pools == pools
    # The same type name in another category gets another pool (seeded by both names).
    other = defect_pools(_dataset(category="d"), "d")
    assert [s.image_path.name for s in other["hole"]] != [s.image_path.name for s in pools["hole"]]


def test_pool_draw_is_the_documented_one_and_stable_across_processes() -> None:
    dataset = _dataset()
    holes = dataset.select("c", "test", "hole")
    order = np.random.default_rng(pool_seed("c", "hole")).permutation(len(holes))
    expected = sorted(holes[i].key for i in order[:20])
    assert _keys(defect_pools(dataset, "c")["hole"]) == expected
    # Pinned: the pool is part of the protocol (a change here changes every query).
    assert pool_seed("c", "hole") == 6221095007144919190
    # A salted Python hash would differ between processes; the pool seed must not.
    code = "from semclip_bench.data.episodes import pool_seed; print(pool_seed('c', 'hole'))"
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    ).stdout
    assert int(out) == pool_seed("c", "hole")


def test_draw_order_is_the_documented_one() -> None:
    dataset = _dataset()
    episode = make_episode(dataset, "c", 2, seed=42)
    pools = defect_pools(dataset, "c")
    rng = np.random.default_rng(42)
    normal = dataset.select("c", "train", "good")
    expected_normal = [normal[i].key for i in rng.permutation(len(normal))[:2]]
    expected = {
        name: [pools[name][i].key for i in rng.permutation(len(pools[name]))[:2]]
        for name in ("bridge", "hole")
    }
    assert _keys(episode.normal_support) == expected_normal
    assert _keys(episode.defect_support["bridge"]) == expected["bridge"]
    assert _keys(episode.defect_support["hole"]) == expected["hole"]


def test_same_seed_same_episode_different_seed_different() -> None:
    dataset = _dataset()
    first = make_episode(dataset, "c", 3, seed=7)
    again = make_episode(_dataset(), "c", 3, seed=7)
    assert first == again
    for seed in (8, 9):
        other = make_episode(dataset, "c", 3, seed=seed)
        assert _keys(other.normal_support) != _keys(first.normal_support)
        assert _keys(other.defect_support_flat) != _keys(first.defect_support_flat)
        assert other.query == first.query


def test_shots_are_nested_for_a_seed() -> None:
    dataset = _dataset()
    small = make_episode(dataset, "c", 1, seed=3)
    large = make_episode(dataset, "c", 5, seed=3)
    assert _keys(large.normal_support)[:1] == _keys(small.normal_support)
    for label in ("bridge", "hole"):
        assert _keys(large.defect_support[label])[:1] == _keys(small.defect_support[label])


def test_zero_shot_has_no_support_and_the_same_query() -> None:
    episode = make_episode(_dataset(), "c", 0, seed=0)
    assert episode.skipped is None
    assert episode.normal_support == () and episode.defect_support == {}
    assert episode.query == make_episode(_dataset(), "c", 1, seed=0).query
    assert len(episode.query) == 25
    assert support_manifest(episode) == []


def test_shots_beyond_a_pool_are_skipped_with_reason() -> None:
    # bridge's pool holds 7 images: 8-shot is skipped, never shrunk.
    episode = make_episode(_dataset(), "c", 8, seed=0)
    assert episode.skipped == "c: defect support pool of bridge has 7 image(s), 8-shot needs 8"
    assert episode.normal_support == () and episode.defect_support == {} and episode.query == ()
    assert episode.class_names == ("good", "bridge", "hole")
    assert episode.pool_sizes == {"bridge": 7, "hole": 20} and episode.notes  # still said
    both = make_episode(_dataset(), "c", 21, seed=0).skipped
    assert both == (
        "c: defect support pool of bridge has 7 image(s), 21-shot needs 21; "
        "defect support pool of hole has 20 image(s), 21-shot needs 21"
    )
    counts = {("train", "good"): 9, ("test", "hole"): 3, ("test", "scratch"): 3}
    grouped = make_episode(_dataset(counts), "c", 2, seed=0).skipped
    assert grouped == (
        "c: defect support pools of {hole,scratch} have 1 image(s) each, 2-shot needs 2"
    )


def test_type_with_one_image_has_no_pool() -> None:
    counts = {("train", "good"): 5, ("test", "good"): 2, ("test", "hole"): 1}
    zero = make_episode(_dataset(counts), "c", 0, seed=0)
    assert zero.skipped is None and zero.pool_sizes == {"hole": 0} and len(zero.query) == 3
    assert "defect support pool 0 < 20" in zero.notes[0]
    assert make_episode(_dataset(counts), "c", 1, seed=0).skipped


def test_pool_size_parameter() -> None:
    dataset = _dataset()
    episode = make_episode(dataset, "c", 5, seed=0, pool_size=5)
    assert episode.pool_sizes == {"bridge": 5, "hole": 5} and episode.notes == ()
    assert len(episode.query) == 10 + 25 + 7
    # The smaller pool is the start of the same permutation: pools are nested in P.
    small, full = defect_pools(dataset, "c", 5), defect_pools(dataset, "c")
    assert set(small["hole"]) <= set(full["hole"])
    with pytest.raises(UserError, match="pool_size"):
        make_episode(dataset, "c", 1, seed=0, pool_size=-1)


def test_normal_class_too_small_is_skipped() -> None:
    counts = {("train", "good"): 2, ("test", "good"): 2, ("test", "hole"): 30}
    episode = make_episode(_dataset(counts), "c", 3, seed=0)
    assert episode.skipped == "c: train/good has 2 image(s), 3-shot needs 3"


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
    with_pools = support_manifest(episode, include_pools=True)
    pool_rows = [r for r in with_pools if r["role"] == "defect_pool"]
    assert with_pools[:6] == rows and len(pool_rows) == 27 == len(with_pools) - 6
    path = write_support_manifest(episode, tmp_path / "out" / "support.csv")
    with path.open(newline="") as handle:
        assert list(csv.DictReader(handle)) == rows


def test_default_sem_synth_query_is_balanced() -> None:
    """Protocol v2 sizes: >= 20 query images per defect type, as many normal as defect ones,
    and train/good large enough for K = 20 (checked on the default config's file list)."""
    config = SynthConfig()
    samples = []
    for task in image_tasks(config):
        category, split, label, _ = task
        samples.append(Sample(Path(relative_paths(config, task)[0]), category, split, label))
    dataset = DefectDataset("sem-synth", samples)
    for category in config.categories:
        episode = make_episode(dataset, category, POOL_SIZE, seed=0)
        assert episode.skipped is None and episode.notes == ()
        assert episode.pool_sizes == dict.fromkeys(sorted(config.defect_types), POOL_SIZE)
        per_label: dict[str, int] = {}
        for sample in episode.query:
            per_label[sample.label] = per_label.get(sample.label, 0) + 1
        defect_query = sum(n for label, n in per_label.items() if label != "good")
        assert all(per_label[t] >= 20 for t in config.defect_types)
        assert per_label["good"] == defect_query == 120
    # train/good (50) is enough for K = 20: three seeds draw three different normal supports.
    supports = {
        frozenset(make_episode(dataset, "metal_cmp", POOL_SIZE, seed).normal_support)
        for seed in range(3)
    }
    assert len(supports) == 3 and config.n_train_good == 50


def test_episode_on_loaded_dataset(handmade) -> None:  # type: ignore[no-untyped-def]
    from semclip_bench.data import load_dataset

    dataset = load_dataset(handmade())  # 3 bridge, 2 particle images: pools of 1
    episode = make_episode(dataset, "cat_a", 1, seed=0)
    assert isinstance(episode, Episode) and episode.skipped is None
    assert episode.dataset == "ds" and episode.pool_sizes == {"bridge": 1, "particle": 1}
    assert len(episode.query) == 3 + 2 + 1
    assert make_episode(dataset, "cat_a", 2, seed=0).skipped  # pools of 1 image
