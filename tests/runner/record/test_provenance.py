"""Provenance identity (protocol, dataset and weights digests) in rows, provenance.json and table
headers; refusing to merge or resume into rows of another identity; the multi-rank header."""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
from pathlib import Path

import pytest

from semclip_bench.cli import main
from semclip_bench.data import dataset_digest, load_dataset
from semclip_bench.runner.record.provenance import provenance_block, weights_identity
from semclip_bench.runner.record.row_store import (
    COLUMNS,
    IDENTITY_COLUMNS,
    PROTOCOL_VERSION,
    EpisodeStore,
    read_rows,
)
from semclip_bench.runner.record.versions import TRACKED, installed_versions


def _sweep(data: Path, config: Path, out: Path, *extra: str) -> int:
    return main(
        [
            "sweep",
            "--config",
            str(config),
            "--data",
            str(data),
            "--out",
            str(out),
            "--shots",
            "1",
            "--seeds",
            "0",
            "--methods",
            "patchcore,linear_probe",
            *extra,
        ]
    )


@pytest.fixture(scope="module")
def small_run(tiny_data: Path, fast_config: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("prov")
    assert _sweep(tiny_data, fast_config, out) == 0
    return out


def _rewrite(path: Path, column: str, value: str, rows: slice = slice(None)) -> None:
    """Set ``column`` to ``value`` in the chosen rows of an episodes.csv."""
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        fields, records = reader.fieldnames, list(reader)
    for record in records[rows]:
        record[column] = value
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields, lineterminator="\n")
        writer.writeheader()
        writer.writerows(records)


def test_identity_in_rows_provenance_and_header(small_run: Path, tiny_data: Path) -> None:
    digest = dataset_digest(load_dataset(tiny_data))
    record = json.loads((small_run / "sweep" / "provenance.json").read_text())
    assert record["protocol"] == PROTOCOL_VERSION == "v3"
    assert record["dataset_digest"] == digest and len(digest) == 64
    assert record["weights"] == "random init"
    assert record["weights_digest"].startswith("random-init:semclip-tiny:")
    assert record["precision"] == "fp32" and record["device"].startswith("CPU")
    assert (record["rank"], record["ranks"], record["shard"]) == (0, 1, "0/1")
    assert record["episodes_assigned"] == 2
    rows = read_rows([small_run / "sweep"])
    assert set(rows["protocol"]) == {"v3"}
    assert set(rows["dataset_digest"]) == {digest}
    assert set(rows["weights_digest"]) == {record["weights_digest"]}
    text = (small_run / "sweep.md").read_text()
    assert "- Protocol: v3" in text
    assert f"content sha256 `{digest}`" in text
    assert "random init (seeded, no weights file)" in text
    assert "precision: fp32" in text and "Wall-clock:" in text and "seeds: [0]" in text
    # issue 22: the versions on the numbers' path and the lock, recorded and printed in one line
    assert record["versions"] == installed_versions()
    assert set(record["versions"]) == {"python", "cuda", *TRACKED}
    assert set(record["lock"]) == {"file", "sha256", "matches", "differences"}
    line = next(x for x in text.splitlines() if x.startswith("- Versions: "))
    assert f"opencv {record['versions']['opencv']}" in line and "numpy " in line


def _fake_version(folder: Path, package: str = "opencv", version: str = "0.0.1") -> str:
    """Record a version no environment has in ``folder``'s provenance.json; returns the real one."""
    path = folder / "provenance.json"
    record = json.loads(path.read_text())
    real = record["versions"][package]
    record["versions"][package] = version
    path.write_text(json.dumps(record))
    return real


def test_weights_digest_of_a_file(tmp_path: Path) -> None:
    from semclip_bench.backbones import DEFAULT_MODEL, DEFAULT_WEIGHTS, BackboneSpec

    expected = hashlib.sha256(DEFAULT_WEIGHTS.read_bytes()).hexdigest()
    label, digest = weights_identity(BackboneSpec(DEFAULT_MODEL, str(DEFAULT_WEIGHTS)))
    assert digest == expected
    assert label == f"semclip_bench/weights/{DEFAULT_MODEL}.pt (shipped default)"
    copy = tmp_path / "mine.pt"
    shutil.copy(DEFAULT_WEIGHTS, copy)
    assert weights_identity(BackboneSpec(DEFAULT_MODEL, str(copy))) == (str(copy), expected)
    assert weights_identity(BackboneSpec("ViT-B-16", "laion400m_e32"))[1].startswith("open_clip")


def test_older_rows_read_as_unknown_and_are_upgraded(small_run: Path, tmp_path: Path) -> None:
    folder = tmp_path / "sweep"
    shutil.copytree(small_run / "sweep", folder)
    path = folder / "episodes.csv"
    with path.open(newline="") as handle:
        records = list(csv.DictReader(handle))
    old = [c for c in COLUMNS if c not in (*IDENTITY_COLUMNS, "notes")]
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=old, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        writer.writerows(records)
    rows = read_rows([folder])
    assert set(rows["dataset_digest"]) == {"unknown"} and set(rows["protocol"]) == {"unknown"}
    assert main(["report", "--from", str(folder), "--out", str(tmp_path / "t")]) == 0
    # appending to an old file rewrites it with today's columns first
    EpisodeStore(folder).append({"episode_id": "x/y/k1/s0", "status": "skipped"})
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        assert tuple(reader.fieldnames) == COLUMNS
        upgraded = list(reader)
    assert [r["protocol"] for r in upgraded] == ["unknown", "unknown", ""]
    assert upgraded[0]["iAUROC"] == records[0]["iAUROC"]


def test_report_refuses_mixed_digests(small_run: Path, tmp_path: Path, capsys) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    shutil.copytree(small_run / "sweep", a / "sweep")
    shutil.copytree(small_run / "sweep", b / "sweep")
    _rewrite(b / "sweep" / "episodes.csv", "dataset_digest", "f" * 64)
    real = _fake_version(b / "sweep")
    (b / "sweep" / "episodes.csv").write_text(
        (b / "sweep" / "episodes.csv").read_text().replace("/k1/", "/k1b/")  # distinct ids
    )
    args = ["report", "--from", str(a), str(b), "--out", str(tmp_path / "t")]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    original = read_rows([a])["dataset_digest"].iloc[0]
    assert len(err) == 1 and err[0].startswith("error: report --from")
    assert "dataset digest" in err[0] and original in err[0] and "f" * 64 in err[0]
    assert str(a / "sweep") in err[0] and str(b / "sweep") in err[0]
    assert "--allow-mixed" in err[0]
    assert err[0].endswith(f"; recorded versions differ: opencv {real} -> 0.0.1")
    assert not (tmp_path / "t" / "sweep.md").exists()

    assert main([*args, "--allow-mixed"]) == 0
    text = (tmp_path / "t" / "sweep.md").read_text()
    banner = text.split("## Provenance")[0]
    assert "Warning: mixed rows" in banner and original in banner and "f" * 64 in banner


@pytest.mark.parametrize("other_first", [False, True])
def test_report_refuses_the_same_episodes_on_other_data_in_either_order(
    small_run: Path, tmp_path: Path, capsys, other_first: bool
) -> None:
    """The same episode ids run on other data: refused whichever folder comes first (the
    duplicates used to be dropped before the check when the reference came first)."""
    reference, other = tmp_path / "reference", tmp_path / "other"
    shutil.copytree(small_run / "sweep", reference / "sweep")
    shutil.copytree(small_run / "sweep", other / "sweep")
    _rewrite(other / "sweep" / "episodes.csv", "dataset_digest", "e" * 64)
    folders = [other, reference] if other_first else [reference, other]
    args = ["report", "--from", *map(str, folders), "--out", str(tmp_path / "t")]
    assert main(args) == 2
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: report --from: rows differ in dataset")
    assert "e" * 64 in err[0] and "--allow-mixed" in err[0]
    assert not (tmp_path / "t" / "sweep.md").exists()
    assert main([*args, "--allow-mixed"]) == 0
    assert "Warning: mixed rows" in (tmp_path / "t" / "sweep.md").read_text()


def test_sweep_refuses_to_resume_into_other_digest(
    small_run: Path, tiny_data: Path, fast_config: Path, tmp_path: Path, capsys
) -> None:
    shutil.copytree(small_run / "sweep", tmp_path / "sweep")
    path = tmp_path / "sweep" / "episodes.csv"
    _rewrite(path, "weights_digest", "0" * 64, slice(0, 1))
    _rewrite(path, "episode_id", "line_space/patchcore/k1/s9", slice(0, 1))  # one unit left to do
    real = _fake_version(tmp_path / "sweep")
    before = path.read_bytes()
    assert _sweep(tiny_data, fast_config, tmp_path) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "weights digest" in err[0] and "0" * 64 in err[0]
    assert "another --out" in err[0] and "--allow-mixed" in err[0]
    assert err[0].endswith(f"from this environment: opencv 0.0.1 -> {real}")
    assert path.read_bytes() == before, "no episode ran"
    assert _sweep(tiny_data, fast_config, tmp_path, "--allow-mixed") == 0
    assert len(read_rows([tmp_path / "sweep"])) == 3
    assert "Warning: mixed rows" in (tmp_path / "sweep.md").read_text()


def test_report_is_byte_stable(small_run: Path, tmp_path: Path) -> None:
    texts = []
    for _ in range(2):
        assert main(["report", "--from", str(small_run / "sweep"), "--out", str(tmp_path)]) == 0
        texts.append((tmp_path / "sweep.md").read_bytes())
    assert texts[0] == texts[1]


def _record(rank: int, device: str, **extra) -> dict:
    base = {
        "command": "python -m semclip_bench sweep --devices 2",
        "git_commit": "abc1234",
        "date": "2030-01-01 00:00 UTC",
        "protocol": "v2",
        "dataset": "sem-synth",
        "dataset_digest": "d" * 64,
        "dataset_size": {"images": 10, "test": 6, "train": 4},
        "categories": ["line_space"],
        "backbone": "semclip-vit-s16",
        "weights": "w.pt",
        "weights_digest": "e" * 64,
        "device": device,
        "precision": "bf16",
        "shots": [1],
        "seeds": [0, 1],
        "shard": "0/1",
        "rank": rank,
        "ranks": 2,
        "devices": 2,
        "episodes_assigned": 3,
        "wall_seconds": 10.0 + rank,
        "stage_seconds": {"fit": 2.0, "features": 1.0},
        "cache": f"cache of rank {rank}",
    }
    return {**base, **extra}


def test_header_describes_a_multi_rank_run_once() -> None:
    records = [
        _record(0, "NVIDIA H200 (cuda:0)"),
        _record(1, "NVIDIA H200 (cuda:1)"),
        {**_record(0, "CPU (x86_64, 2 threads)"), "ranks": 1, "devices": 1, "shard": "1/2"},
    ]
    text = provenance_block(records, None)
    assert "**Part 1 (shard 0/1, 2 ranks)**" in text and "**Part 2 (shard 1/2)**" in text
    assert "Part 3" not in text
    assert "2 ranks (`--devices 2`, shard 0/1)" in text
    assert "1 x NVIDIA H200 (cuda:0), 1 x NVIDIA H200 (cuda:1)" in text
    assert "rank 0: 3, rank 1: 3" in text
    assert "Wall-clock: 11 s (slowest rank; stages summed over ranks: fit 4s, features 2s)" in text
    assert "precision: bf16" in text
    # a missing rank is said
    assert "Only 1 of 2 ranks" in provenance_block(records[:1], None)


def test_header_counts_gpus_not_ranks_when_processes_share_them() -> None:
    def rec(rank: int, index: str, ranks: int, devices: int) -> dict:
        return {
            **_record(rank, "NVIDIA H200"),
            "device_index": index,
            "ranks": ranks,
            "devices": devices,
            "procs_per_device": ranks // devices,
        }

    shared = provenance_block([rec(r, "cuda:0", 8, 1) for r in range(8)], None)
    assert "8 ranks (`--devices 1 --procs-per-device 8`, shard 0/1)" in shared
    assert "on 1 x NVIDIA H200 (8 processes on cuda:0)" in shared
    two = provenance_block([rec(r, f"cuda:{r % 2}", 4, 2) for r in range(4)], None)
    assert "on 2 x NVIDIA H200 (cuda:0: 2, cuda:1: 2 processes)" in two
    assert "(every rank's line: its provenance.json)" in two


def test_git_commit_can_be_overridden(monkeypatch: pytest.MonkeyPatch) -> None:
    from semclip_bench.runner.record import provenance

    monkeypatch.setenv(provenance.COMMIT_ENV, "abc1234")
    assert provenance.git_commit() == "abc1234"
    monkeypatch.delenv(provenance.COMMIT_ENV)
    assert provenance.git_commit() != "abc1234"
