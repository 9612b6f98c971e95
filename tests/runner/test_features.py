"""runner/features.py: the precision helpers (the cache itself: test_feature_store.py and
test_batch_invariance.py)."""

from __future__ import annotations

import pytest
import torch

from semclip_bench.runner.features import prediction_math


@pytest.mark.parametrize(
    ("precision", "device", "tf32"),
    [
        ("bf16", "cuda", True),
        ("fp32", "cuda", False),
        ("auto", "cuda", False),
        ("bf16", "cpu", False),
    ],
)
def test_prediction_math_allows_tf32_only_for_bf16_on_cuda(precision, device, tf32) -> None:
    before = torch.backends.cuda.matmul.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = False
        with prediction_math(precision, device):  # only flips a flag: no GPU needed
            assert torch.backends.cuda.matmul.allow_tf32 is tf32
        assert torch.backends.cuda.matmul.allow_tf32 is False  # restored
        with pytest.raises(RuntimeError), prediction_math(precision, device):
            raise RuntimeError("a failing prediction")
        assert torch.backends.cuda.matmul.allow_tf32 is False  # restored on errors too
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before
