"""``cache info`` / ``cache clear`` on a cache folder made up for the test."""

from __future__ import annotations

from pathlib import Path

import torch

from semclip_bench.cli import main
from semclip_bench.runner.execute.feature_store import FeatureStore, StoreKey


def _fill(cache: Path) -> None:
    store = FeatureStore(cache / "features")
    for kind in ("winclip", "patchcore"):
        key = StoreKey(
            kind, f"{kind}|net|file-1|224|v1", 224, (0.5,) * 3, (0.2,) * 3, "fp32", "cpu"
        )
        for image in ("a" * 64, "b" * 64):
            store.save(key, image, {"x": torch.zeros(1000)})
    store.close()
    data = cache / "sem-synth-0123456789ab" / "line_space" / "train" / "good"
    data.mkdir(parents=True)
    (data / "000.png").write_bytes(b"\0" * 5000)
    (cache / "unrelated").mkdir()


def test_info_lists_kinds_and_data(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("SEMCLIP_BENCH_CACHE", str(tmp_path))
    _fill(tmp_path)
    assert main(["cache", "info", "--keys"]) == 0
    out = capsys.readouterr().out
    lines = {line.split()[0]: line for line in out.splitlines() if line.startswith("  ")}
    assert lines["winclip"].split()[1:3] == ["1", "2"]  # one key, two images
    assert lines["patchcore"].split()[1:3] == ["1", "2"]
    assert "winclip|net|file-1|224|v1" in out
    assert "sem-synth-0123456789ab: 1 files, 5.0 kB" in out


def test_clear_removes_only_what_is_asked(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("SEMCLIP_BENCH_CACHE", str(tmp_path))
    _fill(tmp_path)
    assert main(["cache", "clear"]) == 0  # default: the stored features
    assert not (tmp_path / "features").exists()
    assert (tmp_path / "sem-synth-0123456789ab").is_dir()
    assert "freed" in capsys.readouterr().out
    store = FeatureStore(tmp_path / "features")
    key = StoreKey("semclip", "k", 8, (0.0,), (1.0,), "fp32", "cpu")
    store.save(key, "c" * 64, {"x": torch.ones(3)})
    store.close()
    assert main(["cache", "clear", "--data"]) == 0
    assert not (tmp_path / "sem-synth-0123456789ab").exists()
    assert (tmp_path / "features").is_dir()
    assert main(["cache", "clear", "--all"]) == 0
    assert not (tmp_path / "features").exists()
    assert (tmp_path / "unrelated").is_dir()  # not the package's: left alone
