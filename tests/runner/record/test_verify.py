"""``verify``: rerun committed episodes, compare the rows exactly; refuse rows it cannot check."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest

from semclip_bench.cli import main
from semclip_bench.runner.record.row_store import IDENTITY_COLUMNS, PROTOCOL_VERSION
from semclip_bench.runner.record.verify import Subset, parse_subset

REPO = Path(__file__).resolve().parents[3]
COMMITTED = REPO / "results" / "sweep"


@pytest.fixture(scope="module")
def committed(tiny_data: Path, fast_config: Path, tmp_path_factory) -> Path:
    """A run folder as a committed sweep would be: shots 1 and 2, seeds 0 and 1, four methods."""
    out = tmp_path_factory.mktemp("committed")
    args = [
        "sweep",
        "--config",
        str(fast_config),
        "--data",
        str(tiny_data),
        "--out",
        str(out),
        "--shots",
        "1,2",
        "--methods",
        "semclip,winclip,patchcore,linear_probe",
    ]
    assert main(args) == 0
    return out / "sweep"


def _edit(path: Path, episode: str, column: str, value: str | None = None) -> str:
    """Change one cell (default: the last digit of a number); returns the new value."""
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        fields, rows = reader.fieldnames, list(reader)
    for row in rows:
        if row["episode_id"] == episode or episode == "*":
            old = row[column]
            row[column] = value if value is not None else old[:-1] + str((int(old[-1]) + 1) % 10)
            new = row[column]
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return new


def test_verify_passes_then_names_an_altered_value(committed: Path, tmp_path: Path, capsys) -> None:
    # default subset but shots 1 and 2 (the tiny data has 4 normal images): K = 2 seed 0 comes
    # after K = 1 seed 1 in the committed run, whose features it no longer replays
    assert main(["verify", "--from", str(committed), "--subset", "shots=1,2"]) == 0
    out = capsys.readouterr().out
    assert "verify: 8 episodes" in out and "identical" in out

    folder = tmp_path / "sweep"
    shutil.copytree(committed, folder)
    episode = "line_space/patchcore/k1/s0"
    altered = _edit(folder / "episodes.csv", episode, "pAUROC")
    code = main(["verify", "--from", str(folder), "--subset", "shots=1", "methods=patchcore"])
    assert code == 1
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.startswith(episode + "  ")]  # diff rows
    assert len(lines) == 1 and "pAUROC" in lines[0] and altered in lines[0]
    assert "FAILED: 1 values in 1 of 1 episodes" in out
    assert out.splitlines()[-1].endswith("; recorded versions equal this environment's")


@pytest.mark.parametrize(
    ("column", "needle"),
    [("weights_digest", "weights digest differs"), ("dataset_digest", "dataset digest differs")],
)
def test_verify_refuses_other_digests(
    committed: Path, tmp_path: Path, capsys, column: str, needle: str
) -> None:
    folder = tmp_path / "sweep"
    shutil.copytree(committed, folder)
    _edit(folder / "episodes.csv", "*", column, "9" * 64)
    record = json.loads((folder / "provenance.json").read_text())
    real = record["versions"]["opencv"]
    record["versions"]["opencv"] = "0.0.1"  # issue 22: the line names the differing version
    (folder / "provenance.json").write_text(json.dumps(record))
    assert main(["verify", "--from", str(folder), "--subset", "shots=1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0] and "9" * 64 in err[0]
    assert err[0].endswith(
        f"; recorded versions differ from this environment: opencv 0.0.1 -> {real}"
    )


def test_verify_refuses_rows_it_cannot_rerun(committed: Path, tmp_path: Path, capsys) -> None:
    folder = tmp_path / "sweep"
    shutil.copytree(committed, folder)
    for column in IDENTITY_COLUMNS:  # rows as written before protocol v2
        _edit(folder / "episodes.csv", "*", column, "")
    assert main(["verify", "--from", str(folder), "--subset", "shots=1"]) == 2
    err = capsys.readouterr().err.strip()
    assert "protocol unknown" in err and f"protocol {PROTOCOL_VERSION}" in err
    record = json.loads((committed / "provenance.json").read_text())
    record.update(precision="bf16")  # CPU rows: checked in fp32 only
    (folder / "provenance.json").write_text(json.dumps(record))
    assert main(["verify", "--from", str(folder)]) == 2
    err = capsys.readouterr().err.strip()
    assert "computed in bf16" in err and "on the CPU in fp32" in err
    record.update(precision="fp32", device="NVIDIA H200")  # GPU rows, and no GPU here
    (folder / "provenance.json").write_text(json.dumps(record))
    assert main(["verify", "--from", str(folder)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "computed on NVIDIA H200 and this machine has none" in err[0]


def test_gpu_rows_rerun_on_any_gpu_in_their_precision(tmp_path: Path) -> None:
    from semclip_bench.runner.record.verify import _refusals, _rerun_config

    gpu_record = {"device": "NVIDIA H200", "precision": "bf16", "config": {"shots": [1]}}
    assert _refusals(gpu_record, tmp_path, gpu="NVIDIA H200") == []
    assert _refusals(gpu_record, tmp_path, gpu="NVIDIA A100-SXM4-80GB") == []
    (refusal,) = _refusals(gpu_record, tmp_path, gpu=None)
    assert "computed on NVIDIA H200 and this machine has none" in refusal
    config = _rerun_config(gpu_record, tmp_path)
    assert (config.device, config.precision, config.devices, config.procs_per_device) == (
        "cuda",
        "bf16",
        1,
        1,
    )
    cpu = _rerun_config({"device": "CPU (x86_64, 2 threads)", "config": {}}, tmp_path)
    assert (cpu.device, cpu.precision) == ("cpu", "fp32")


def _as_gpu_rows(folder: Path, monkeypatch, recorded: str, here: str) -> None:
    """Fake GPU rows (provenance device ``recorded``) and a machine whose GPU is ``here``; the
    rerun itself runs on the CPU, which computed the rows (no GPU in CI)."""
    from semclip_bench.runner.record import verify as verify_module

    record = json.loads((folder / "provenance.json").read_text())
    record.update(device=recorded, precision="fp32")
    (folder / "provenance.json").write_text(json.dumps(record))
    real = verify_module._rerun_config

    def on_the_cpu(record: dict, out: Path):
        config = real(record, out)
        assert config.device == "cuda"  # GPU rows rerun on the GPU ...
        config.device = "cpu"  # ... which this test machine lacks
        return config

    monkeypatch.setattr(verify_module, "local_gpu", lambda: here)
    monkeypatch.setattr(verify_module, "_rerun_config", on_the_cpu)


def test_gpu_rows_verify_on_another_gpu_model(
    committed: Path, tmp_path: Path, capsys, monkeypatch
) -> None:
    folder = tmp_path / "sweep"
    shutil.copytree(committed, folder)
    _as_gpu_rows(folder, monkeypatch, "NVIDIA H200", "NVIDIA H100 80GB HBM3")
    args = ["verify", "--from", str(folder), "--subset", "shots=1", "methods=patchcore"]
    assert main(args) == 0  # identical rows pass; the summary names both GPUs
    (summary,) = [line for line in capsys.readouterr().out.splitlines() if "verify:" in line]
    assert "on NVIDIA H100 80GB HBM3 in fp32 (rows computed on NVIDIA H200)" in summary
    assert "identical" in summary

    _edit(folder / "episodes.csv", "line_space/patchcore/k1/s0", "pAUROC")
    assert main(args) == 1  # differing rows: one line names both GPUs and the metric
    failed = [line for line in capsys.readouterr().out.splitlines() if "FAILED" in line]
    assert len(failed) == 1
    assert "computed on NVIDIA H200 and rerun on NVIDIA H100 80GB HBM3" in failed[0]
    assert "likely cause of the differing pAUROC" in failed[0]


def test_gpu_rows_of_the_same_model_fail_without_a_gpu_cause(
    committed: Path, tmp_path: Path, capsys, monkeypatch
) -> None:
    folder = tmp_path / "sweep"
    shutil.copytree(committed, folder)
    _as_gpu_rows(folder, monkeypatch, "NVIDIA H200", "NVIDIA H200")
    _edit(folder / "episodes.csv", "line_space/patchcore/k1/s0", "pAUROC")
    args = ["verify", "--from", str(folder), "--subset", "shots=1", "methods=patchcore"]
    assert main(args) == 1
    out = capsys.readouterr().out
    assert "FAILED: 1 values in 1 of 1 episodes" in out and "likely cause" not in out


def test_subset_parsing_and_errors(committed: Path, capsys) -> None:
    assert parse_subset(["shots=1,5", "methods=a,b", "category=x"]) == Subset(
        categories=["x"], shots=[1, 5], methods=["a", "b"]
    )
    assert parse_subset(["all"]).everything
    assert main(["verify", "--from", str(committed), "--subset", "shots=x"]) == 2
    assert main(["verify", "--from", str(committed), "--subset", "colour=red"]) == 2
    assert main(["verify", "--from", str(committed), "--subset", "seeds=7"]) == 2
    err = capsys.readouterr().err
    assert "seeds 7 has no committed rows; present: 0, 1" in err


#: The CI check's subset: the default one without WinCLIP, whose window re-encoding makes it ~7x
#: the extraction cost of the other methods (with it, ~4 min on 2 idle cores; without, ~2).
CI_SUBSET = ("shots=1,5", "seeds=0", "methods=patchcore,linear_probe,semclip")


@pytest.mark.verify_results
def test_committed_sweep_verifies() -> None:
    """The real check of ``make verify-results`` on the committed results/sweep, on a subset that
    fits a CI budget. Skipped while the committed rows predate protocol v2."""
    record_path = COMMITTED / "provenance.json"
    if not record_path.is_file():
        pytest.skip("no committed results/sweep/provenance.json")
    protocol = json.loads(record_path.read_text()).get("protocol")
    if protocol != PROTOCOL_VERSION:
        pytest.skip(
            f"results/sweep was written under protocol {protocol or 'unknown (before v2)'}, not "
            f"{PROTOCOL_VERSION}: regenerate the committed tables, then this test checks them"
        )
    assert main(["verify", "--from", str(COMMITTED), "--subset", *CI_SUBSET]) == 0


def test_rerun_trains_as_the_record_says() -> None:
    """Rows recorded before stacked training existed were trained alone: verify does the same."""
    from semclip_bench.runner.record.verify import _rerun_config

    assert _rerun_config({"config": {"shots": [1]}}, Path("x")).fit_mode == "alone"
    earlier_flag = {"config": {"shots": [1], "fit_together": True}}
    assert _rerun_config(earlier_flag, Path("x")).fit_mode == "stacked"
    recorded = {"config": {"shots": [1], "fit_mode": "auto"}, "training": "stacked"}
    assert _rerun_config(recorded, Path("x")).fit_mode == "stacked"  # what ran, not "auto"


def test_the_subset_is_chosen_over_every_rank_of_a_run(committed: Path, tmp_path: Path, capsys):
    """A multi-process run keeps its rows in rank folders; the default subset (here K = 1, seed
    0) is chosen over all of them, not per folder (where a rank without K = 1 rows would fall
    back to its own first K)."""
    import pandas as pd

    folder = tmp_path / "sweep"
    rows = pd.read_csv(committed / "episodes.csv", dtype=str, keep_default_na=False)
    for rank, shots in (("rank0", "2"), ("rank1", "1")):
        (folder / rank).mkdir(parents=True)
        rows[rows["shots"] == shots].to_csv(folder / rank / "episodes.csv", index=False)
        shutil.copy(committed / "provenance.json", folder / rank / "provenance.json")
    assert main(["verify", "--from", str(folder), "--subset", "methods=patchcore"]) == 0
    out = capsys.readouterr().out
    assert f"verify: 1 episodes of {folder} rerun from a clean cache on the CPU in fp32" in out


def test_default_subset_of_an_ablation_has_every_variant() -> None:
    import pandas as pd

    from semclip_bench.runner.record.verify import _choose

    variants = ["semclip", "semclip-single_path", "semclip-all"]
    rows = pd.DataFrame(
        [
            dict(
                episode_id=f"c/{v}/k10/s{seed}",
                kind="ablation",
                category="c",
                variant=v,
                method="semclip",
                shots=10,
                seed=seed,
            )
            for v in variants
            for seed in (0, 1)
        ]
    )
    assert sorted(_choose(rows, Subset(), "c")) == sorted(f"c/{v}/k10/s0" for v in variants)
    rows["kind"] = "sweep"  # a sweep's default: the training-free methods and SEM-CLIP
    assert _choose(rows, Subset(), "c") == ["c/semclip/k10/s0"]
