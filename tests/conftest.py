"""Shared fixtures. Sub-packages may add their own conftest.py next to their tests."""

from __future__ import annotations

import os

import pytest
import torch

# Keep the suite fast and quiet on 2-core CI machines.
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
os.environ.setdefault("WANDB_MODE", "disabled")


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
