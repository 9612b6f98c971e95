"""Units: made once by the plan, named in one place."""

from __future__ import annotations

from types import SimpleNamespace

import semclip_bench.data.episodes as episodes_module
from semclip_bench.runner.plan.units import EpisodeBook, Unit, plan_units, shots_tag


def test_a_unit_names_its_row_and_its_support() -> None:
    variant = SimpleNamespace(label="semclip-single_path")
    unit = Unit("bridge", variant, 5, 2)
    assert unit.id == "bridge/semclip-single_path/k5/s2"
    assert unit.support_key == "bridge/k5/s2" and unit.episode_key == ("bridge", 5, 2)
    assert [u.id for u in plan_units(("a",), (0, 1), (0,), (variant,))] == [
        "a/semclip-single_path/k0/s0",
        "a/semclip-single_path/k1/s0",
    ]


def test_k_is_spelled_once() -> None:
    assert shots_tag(0) == "k0" and shots_tag(20) == "k20"


def test_the_book_forms_each_episode_once_for_every_variant(monkeypatch) -> None:
    calls = []

    def make_episode(dataset, category, shots, seed):
        calls.append((category, shots, seed))
        return SimpleNamespace(category=category, shots=shots, seed=seed)

    monkeypatch.setattr(episodes_module, "make_episode", make_episode)
    variants = (SimpleNamespace(label="a"), SimpleNamespace(label="b"))
    book = EpisodeBook(dataset=object())
    units = plan_units(("c1", "c2"), (1,), (0, 1), variants)
    formed = [book(u) for u in units] + [book(u) for u in units]
    assert calls == [("c1", 1, 0), ("c1", 1, 1), ("c2", 1, 0), ("c2", 1, 1)]
    assert formed[0] is formed[1] is formed[len(units)]  # both variants, both passes
