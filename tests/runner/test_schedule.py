"""Episode scheduling across ranks: cost estimates, longest-first order, exclusive claims."""

from __future__ import annotations

import threading
from pathlib import Path
from types import SimpleNamespace

from semclip_bench.runner.schedule import (
    UNTRAINED_COST,
    ClaimBoard,
    by_estimated_cost,
    unit_cost,
)


class Trained:
    trainable = True
    supervision = "normal+defects"


class NormalOnly:
    trainable = True
    supervision = "normal"


class Memory:
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
