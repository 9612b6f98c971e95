"""The on-disk feature store: keys, exact round trips, corrupt files, concurrency, and a sweep
whose rows from stored features equal the rows from fresh ones."""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path

import pandas as pd
import torch

from semclip_bench.cli import main
from semclip_bench.runner.execute.feature_store import FeatureStore, StoreKey, folder_usage
from semclip_bench.runner.record.row_store import METRIC_COLUMNS, read_rows


def _key(**changes) -> StoreKey:
    base = dict(
        kind="semclip",
        feature_key="semclip|net|file-abc|224|v1|taps=3",
        image_size=224,
        mean=(0.5, 0.5, 0.5),
        std=(0.25, 0.25, 0.25),
        precision="fp32",
        device_type="cpu",
    )
    base.update(changes)
    return StoreKey(**base)


def test_key_digest_changes_with_every_input() -> None:
    digests = {
        _key().digest(),
        _key(feature_key="semclip|net|file-abd|224|v1|taps=3").digest(),  # other weights
        _key(image_size=240).digest(),
        _key(mean=(0.4, 0.5, 0.5)).digest(),
        _key(std=(0.25, 0.25, 0.3)).digest(),
        _key(precision="bf16").digest(),
        _key(device_type="cuda").digest(),
        _key(torch_version="0.0").digest(),
    }
    assert len(digests) == 8
    assert _key().digest() == _key().digest()


def test_round_trip_is_exact_and_bf16_values_are_stored_narrow(tmp_path: Path) -> None:
    store = FeatureStore(tmp_path)
    exact = torch.randn(4, 7)
    bf16_values = torch.randn(3, 5).bfloat16().float()  # float32 holding bf16 numbers
    ids = torch.arange(6)
    features = {"exact": exact, "narrow": bf16_values, "ids": ids}
    key = _key(precision="bf16")
    store.save(key, "a" * 64, features)
    store.flush()
    loaded = store.load(key, "a" * 64)
    assert loaded is not None
    for name, value in features.items():
        assert loaded[name].dtype == value.dtype
        assert torch.equal(loaded[name], value)
    raw = torch.load(store.path(key, "a" * 64), weights_only=True)
    assert raw["features"]["narrow"].dtype == torch.bfloat16
    assert raw["features"]["exact"].dtype == torch.float32
    assert store.load(key, "b" * 64) is None  # another image: a miss
    assert store.load(_key(), "a" * 64) is None  # another key: a miss
    store.close()


def test_unreadable_file_is_a_miss_with_one_warning(tmp_path: Path, caplog) -> None:
    store = FeatureStore(tmp_path)
    key = _key()
    for name in ("c" * 64, "d" * 64):
        store.save(key, name, {"x": torch.randn(100, 10)})
    store.flush()
    for name in ("c" * 64, "d" * 64):
        path = store.path(key, name)
        path.write_bytes(path.read_bytes()[:200])  # truncated
    with caplog.at_level(logging.WARNING):
        assert store.load(key, "c" * 64) is None
        assert store.load(key, "d" * 64) is None
    warnings = [r for r in caplog.records if "unreadable" in r.getMessage()]
    assert len(warnings) == 1
    assert store.stats.unreadable == 2
    # a file renamed to another image's name is refused too (its content names the image)
    fresh = {"x": torch.randn(3)}
    store.save(key, "e" * 64, fresh)
    store.flush()
    store.path(key, "e" * 64).replace(store.path(key, "f" * 64))
    assert store.load(key, "f" * 64) is None
    store.close()


def test_concurrent_writers_never_expose_partial_files(tmp_path: Path) -> None:
    key = _key()
    value = {"x": torch.randn(256, 256)}
    errors: list[str] = []
    stop = threading.Event()

    def write() -> None:
        store = FeatureStore(tmp_path)
        for _ in range(15):
            store.save(key, "f" * 64, value)
        store.close()

    def read() -> None:
        store = FeatureStore(tmp_path)
        while not stop.is_set():
            got = store.load(key, "f" * 64)
            if got is not None and not torch.equal(got["x"], value["x"]):
                errors.append("wrong content")
        if store.stats.unreadable:
            errors.append(f"{store.stats.unreadable} partial reads")

    reader = threading.Thread(target=read)
    reader.start()
    writers = [threading.Thread(target=write) for _ in range(3)]
    for t in writers:
        t.start()
    for t in writers:
        t.join()
    stop.set()
    reader.join()
    assert errors == []
    folder = FeatureStore(tmp_path).path(key, "f" * 64).parent
    assert [p.name for p in folder.iterdir() if p.name.endswith(".tmp")] == []
    assert sorted(p.name for p in folder.iterdir()) == ["f" * 64 + ".pt", "key.json"]


def test_unwritable_store_warns_and_continues(tmp_path: Path, caplog) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    store = FeatureStore(blocker / "features")
    with caplog.at_level(logging.WARNING):
        store.save(_key(), "a" * 64, {"x": torch.ones(2)})
        store.save(_key(), "b" * 64, {"x": torch.ones(2)})
        store.close()
    assert store.stats.failed_writes == 2
    assert len([r for r in caplog.records if "cannot write" in r.getMessage()]) == 1


# ------------------------------------------------------------------------------ end to end
def _sweep(data: Path, config: Path, out: Path, *extra: str) -> int:
    args = ["sweep", "--config", str(config), "--data", str(data), "--out", str(out)]
    return main([*args, "--shots", "1", "--seeds", "0", *extra])


def _metric_rows(out: Path) -> pd.DataFrame:
    rows = read_rows([out / "sweep"])
    columns = ["episode_id", "status", *METRIC_COLUMNS, "per_type_auroc"]
    return rows[columns].sort_values("episode_id").reset_index(drop=True)


def _cache_line(out: Path) -> str:
    return json.loads((out / "sweep" / "provenance.json").read_text())["cache"]


def test_rows_from_stored_features_equal_fresh_rows(
    tiny_data: Path, fast_config: Path, tmp_path: Path, monkeypatch
) -> None:
    methods = "winclip,patchcore,semclip"
    monkeypatch.setenv("SEMCLIP_BENCH_CACHE", str(tmp_path / "cache"))
    fresh, again, memory_only = tmp_path / "fresh", tmp_path / "again", tmp_path / "memory"
    assert _sweep(tiny_data, fast_config, fresh, "--methods", methods) == 0
    first = _cache_line(fresh)
    assert "0 loaded from disk" in first and "written" in first
    usage = folder_usage(tmp_path / "cache" / "features")
    assert {u.kind for u in usage} == set(methods.split(","))
    assert all(u.files > 0 and u.description["feature_key"] for u in usage)

    assert _sweep(tiny_data, fast_config, again, "--methods", methods) == 0
    second = _cache_line(again)
    assert " 0 extracted" in second, second
    assert "0 written" in second

    # A truncated file is a miss: recomputed, rewritten (one warning), same rows.
    victim = next((tmp_path / "cache" / "features" / "patchcore").rglob("*.pt"))
    victim.write_bytes(victim.read_bytes()[:100])
    healed = tmp_path / "healed"
    assert _sweep(tiny_data, fast_config, healed, "--methods", methods) == 0
    line = _cache_line(healed)
    assert "1 unreadable rewritten" in line and " 1 extracted" in line and "1 written" in line
    assert torch.load(victim, weights_only=True)["features"]  # whole again
    pd.testing.assert_frame_equal(_metric_rows(fresh), _metric_rows(healed))

    args = ("--methods", methods, "--no-feature-cache")
    assert _sweep(tiny_data, fast_config, memory_only, *args) == 0
    assert "disk" not in _cache_line(memory_only)
    pd.testing.assert_frame_equal(_metric_rows(fresh), _metric_rows(again))
    pd.testing.assert_frame_equal(_metric_rows(fresh), _metric_rows(memory_only))
