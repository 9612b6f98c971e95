"""Pretraining data: sem-synth stream (seeds, sharding, reuse buffer) and captions CSV."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from semclip_bench.errors import UserError
from semclip_bench.pretrain.data import (
    CaptionCsvDataset,
    SynthCaptionStream,
    check_pretrain_seed,
    normalise_batch,
    prepare_image,
    read_captions_csv,
)

ARCH = "semclip-tiny"


def test_benchmark_seeds_are_refused() -> None:
    for seed in (0, 1, 99_999):
        with pytest.raises(UserError, match="100000"):
            check_pretrain_seed(seed)
    with pytest.raises(UserError):
        SynthCaptionStream(ARCH, 64, seed=0)
    assert check_pretrain_seed(100_000) == 100_000


def test_stream_items_are_pure_functions_of_seed_and_index() -> None:
    a = SynthCaptionStream(ARCH, 64, render_size=64, seed=100_000)
    b = SynthCaptionStream(ARCH, 64, render_size=64, seed=100_000)
    c = SynthCaptionStream(ARCH, 64, render_size=64, seed=100_001)
    x, y, z = a.item(5), b.item(5), c.item(5)
    assert x["image"].shape == (1, 64, 64) and x["image"].dtype == torch.float16
    assert x["text"].shape == (77,) and x["text"].dtype == torch.long
    assert torch.equal(x["image"], y["image"]) and x["caption"] == y["caption"]
    assert not torch.equal(x["image"], z["image"])
    assert float(x["image"].min()) >= 0.0 and float(x["image"].max()) <= 1.0


def test_stream_shards_by_rank_and_length() -> None:
    seen = []
    for rank in range(2):
        stream = SynthCaptionStream(
            ARCH, 32, render_size=64, length=6, rank=rank, world_size=2, augment=False
        )
        seen.append([it["index"] for it in stream])
    assert seen == [[0, 2, 4], [1, 3, 5]]


def test_reuse_buffer_batches_hold_each_render_once() -> None:
    stream = SynthCaptionStream(ARCH, 32, render_size=64, length=24, reuse=3, buffer_size=6)
    items = list(stream)
    assert len(items) == 24
    batches = [[it["index"] for it in items[k : k + 6]] for k in range(0, 24, 6)]
    for batch in batches:
        assert len(set(batch)) == 6
    indices = [i for b in batches for i in b]
    assert len(set(indices)) < len(indices)  # renders are reused ...
    assert len(set(indices)) > 6  # ... and replaced
    captions = {}
    for it in items:
        captions.setdefault(it["index"], set()).add(it["caption"])
    assert any(len(c) > 1 for c in captions.values())  # fresh phrasing on reuse


def test_prepare_image_matches_normalise_batch() -> None:
    gray = (np.arange(40 * 40, dtype=np.float32).reshape(40, 40) / 1600.0 * 255).astype(np.uint8)
    full = prepare_image(gray, 32)
    assert full.shape == (3, 32, 32)
    unit = torch.from_numpy(
        cv2.resize(gray.astype(np.float32) / 255, (32, 32), interpolation=cv2.INTER_AREA)
    )
    assert torch.allclose(full, normalise_batch(unit[None, None])[0], atol=1e-6)


def _write_csv(tmp_path: Path, rows: list[str], header: str = "image_path,caption") -> Path:
    path = tmp_path / "captions.csv"
    path.write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")
    return path


def _write_images(tmp_path: Path, n: int) -> list[str]:
    names = []
    rng = np.random.default_rng(0)
    for i in range(n):
        name = f"img{i}.png"
        image = rng.integers(0, 255, (48, 40, 3) if i % 2 else (48, 40), dtype=np.uint8)
        cv2.imwrite(str(tmp_path / name), image)
        names.append(name)
    return names


def test_captions_csv_loads_relative_paths(tmp_path: Path) -> None:
    names = _write_images(tmp_path, 4)
    path = _write_csv(tmp_path, [f"{n},recipe M1 line {i} nm" for i, n in enumerate(names)])
    ds = CaptionCsvDataset(path, ARCH, 32)
    assert len(ds) == 4
    for i in range(4):
        item = ds[i]
        assert item["image"].shape == (1, 32, 32)
        assert item["caption"] == f"recipe M1 line {i} nm"


def test_bad_captions_csv_is_a_user_error(tmp_path: Path) -> None:
    names = _write_images(tmp_path, 1)
    path = _write_csv(tmp_path, [f"{names[0]}"], header="image_path")
    with pytest.raises(UserError, match=r"captions\.csv.*caption"):
        read_captions_csv(path)
    path = _write_csv(tmp_path, ["missing.png,a particle"])
    with pytest.raises(UserError, match=r"missing\.png"):
        read_captions_csv(path)
    with pytest.raises(UserError, match="does not exist"):
        read_captions_csv(tmp_path / "nope.csv")
