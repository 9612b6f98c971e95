"""Episode scheduling across ranks: cost estimates, longest-first order, exclusive claims."""

from __future__ import annotations

import threading
from pathlib import Path
from types import SimpleNamespace

from semclip_bench.models.base import FewShotMethod
from semclip_bench.runner.plan.schedule import (
    STACK_SUPPORT_BYTES,
    UNTRAINED_COST,
    ClaimBoard,
    by_estimated_cost,
    item_cost,
    left_to_write,
    members_per_stack,
    shard_items,
    stack_group,
    support_images,
    unit_cost,
    work_items,
)
from semclip_bench.runner.plan.units import plan_units


class Trained(FewShotMethod):  # declarations only, never built
    trainable = True
    supervision = "normal+defects"


class NormalOnly(FewShotMethod):  # declarations only, never built
    trainable = True
    supervision = "normal"


class Memory(FewShotMethod):  # declarations only, never built
    trainable = False
    supervision = "normal"


def test_cost_follows_the_budget_rule() -> None:
    batched = SimpleNamespace(training={"epochs": 30, "batch_size": 16})
    # K = 5, 4 defect types: 25 support images -> 2 batches of 16 per epoch -> 60 steps
    assert unit_cost(5, 4, batched, Trained) == UNTRAINED_COST + 60
    assert unit_cost(5, 4, batched, NormalOnly) == UNTRAINED_COST + 30  # 5 images: 1 batch
    full_batch = SimpleNamespace(training={"epochs": 20, "batch_size": None})
    assert unit_cost(20, 4, full_batch, Trained) == UNTRAINED_COST + 20
    assert unit_cost(20, 4, batched, Memory) == UNTRAINED_COST
    assert unit_cost(0, 4, batched, Trained) == UNTRAINED_COST  # zero-shot: nothing to train
    floored = SimpleNamespace(training={"epochs": 30, "batch_size": 16, "min_steps": 200})
    assert unit_cost(1, 4, floored, Trained) == UNTRAINED_COST + 200  # 5 images: 30 -> 200 steps
    assert unit_cost(20, 4, floored, Trained) == UNTRAINED_COST + 210  # 100 images: 7 x 30


def test_longest_first_and_stable() -> None:
    units = [("a",), ("b",), ("c",), ("d",)]
    assert by_estimated_cost(units, [1.0, 5.0, 1.0, 3.0]) == [("b",), ("d",), ("a",), ("c",)]


def test_each_unit_is_claimed_once(tmp_path: Path) -> None:
    boards = [ClaimBoard(tmp_path, "run1") for _ in range(4)]
    won: list[list[str]] = [[] for _ in boards]
    ids = [f"cat/m/k{k}/s{s}" for k in range(10) for s in range(3)]

    def worker(i: int) -> None:
        won[i] = [uid for uid in ids if boards[i].claim(uid)]

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(boards))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    claimed = [uid for part in won for uid in part]
    assert sorted(claimed) == sorted(ids)  # every unit once, none twice
    # another invocation (token) starts with no claims
    assert ClaimBoard(tmp_path, "run2").claim(ids[0])
    boards[0].remove()
    assert not (tmp_path / ".claims").exists()


def test_work_items_group_by_key_at_the_first_members_place() -> None:
    stacked, memory = SimpleNamespace(label="semclip"), SimpleNamespace(label="patchcore")
    units = plan_units(("a", "b"), (1, 5), (0, 1), (stacked, memory))

    def group(u):  # as the runner: one stack per (variant, K); memory methods alone
        return (u.variant.label, u.shots) if u.variant is stacked else None

    items = work_items(units, group)
    ids = sorted(u.id for item in items for u in item.units)
    assert ids == sorted(u.id for u in units)
    stacks = [item for item in items if len(item.units) > 1]
    assert [len(item.units) for item in stacks] == [4, 4]  # 2 categories x 2 seeds, per K
    assert stacks[0].key == "a/semclip/k1/s0" and stacks[0].writes == {
        "a/semclip/k1/s0", "a/semclip/k1/s1", "b/semclip/k1/s0", "b/semclip/k1/s1"
    }  # fmt: skip
    assert items[0] is stacks[0]  # placed where its first member was
    assert len(items) == 2 + 8  # two stacks, eight patchcore episodes alone
    assert work_items(units, lambda u: None) == [work_items([u], lambda u: None)[0] for u in units]


def test_a_limit_splits_a_group_into_consecutive_items() -> None:
    stacked, memory = SimpleNamespace(label="semclip"), SimpleNamespace(label="patchcore")
    units = plan_units(("a",), (5,), range(5), (stacked, memory))

    def group(u):
        return (u.variant.label, u.shots) if u.variant is stacked else None

    limits = []

    def limit(key):
        limits.append(key)
        return 2

    items = work_items(units, group, limit)
    stacks = [[u.id for u in item.units] for item in items if item.units[0].variant is stacked]
    assert stacks == [  # run order, at most two each, the rest last
        ["a/semclip/k5/s0", "a/semclip/k5/s1"],
        ["a/semclip/k5/s2", "a/semclip/k5/s3"],
        ["a/semclip/k5/s4"],
    ]
    assert limits == [("semclip", 5)]  # asked once per group, never for units alone
    assert [item.key for item in items[:3]] == [
        "a/semclip/k5/s0",
        "a/semclip/k5/s2",
        "a/semclip/k5/s4",
    ]
    assert sum(len(item.units) for item in items) == len(units)
    assert work_items(units, group, lambda key: 0)[0].units == (units[0],)  # at least one


def test_members_per_stack_follows_the_support_bytes() -> None:
    assert support_images(20, 6, Trained) == 140
    assert support_images(20, 6, NormalOnly) == 20
    # the compact default backbone's SEM-CLIP features, 1.5 MB per image: K = 20 stays one stack
    assert members_per_stack(140 * 1_506_304) >= 9
    # ViT-B-16-plus-240's, 6.45 MB per image: two K = 20 episodes per stack, nine at K = 5
    assert members_per_stack(140 * 6_453_760) == 2
    assert members_per_stack(35 * 6_453_760) >= 9
    assert members_per_stack(10 * STACK_SUPPORT_BYTES) == 1
    assert members_per_stack(0) == STACK_SUPPORT_BYTES


def test_shards_resume_and_costs_of_items() -> None:
    trained = SimpleNamespace(label="semclip", method="semclip", training={"epochs": 2})
    memory = SimpleNamespace(label="patchcore", method="patchcore", training={})

    class Stacked(Trained):
        trains_stacked = True

    classes = {"semclip": Stacked, "patchcore": Memory}
    units = plan_units(("a", "b"), (0, 5), (0,), (trained, memory))
    group = stack_group(classes, lambda category: 1)
    assert group(units[0]) is None  # K = 0 trains nothing: alone
    assert group(units[2]) == ("semclip", 5, 1) and group(units[3]) is None
    items = work_items(units, group)
    assert [len(item.units) for item in items] == [1, 1, 2, 1, 1, 1, 1]
    assert shard_items(items, (1, 2)) == items[1::2]

    done = {"a/patchcore/k0/s0", "b/semclip/k5/s0"}
    todo = left_to_write(items, done)
    assert [item.key for item in todo] == [
        "a/semclip/k0/s0", "a/semclip/k5/s0", "a/patchcore/k5/s0", "b/semclip/k0/s0",
        "b/patchcore/k0/s0", "b/patchcore/k5/s0",
    ]  # fmt: skip
    stack = todo[1]
    assert stack.writes == {"a/semclip/k5/s0"} and len(stack.units) == 2  # b trains, unwritten
    only = left_to_write(items, set(), select={"b/patchcore/k5/s0"})
    assert [item.writes for item in only] == [{"b/patchcore/k5/s0"}]
    assert item_cost(stack, lambda category: 1, classes) == 2 * unit_cost(5, 1, trained, Stacked)
