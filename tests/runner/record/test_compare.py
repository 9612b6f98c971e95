"""How a run compares with its committed reference (runner/record/compare.py): identical rows, the
largest differences with the versions that differ, another identity in one line, and the
end-of-run lines of ``sweep`` with the default output folder ``runs/``."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from semclip_bench.cli import main
from semclip_bench.runner.plan.config import RunConfig
from semclip_bench.runner.record import compare
from semclip_bench.runner.record.compare import compare_runs, reference_for, reference_report
from semclip_bench.runner.record.row_store import PROTOCOL_VERSION, EpisodeStore

EPISODES = ("c1/patchcore/k1/s0", "c1/patchcore/k1/s1", "c1/winclip/k1/s0")


def _write_run(
    folder: Path,
    values: dict[str, float] | None = None,
    digest: str = "a" * 64,
    device: str = "CPU (x86_64, 2 threads)",
    **record,
) -> Path:
    """A run folder with three episodes (iAUROC 0.9, or ``values[episode]``) and provenance."""
    store = EpisodeStore(folder)
    for episode in EPISODES:
        category, variant, _, _ = episode.split("/")
        store.append(
            {
                "episode_id": episode,
                "kind": "sweep",
                "category": category,
                "variant": variant,
                "method": variant,
                "status": "ok",
                "iAUROC": (values or {}).get(episode, 0.9),
                "iAP": 0.8,
                "protocol": PROTOCOL_VERSION,
                "dataset_digest": digest,
                "weights_digest": "w" * 64,
            }
        )
    provenance = {"device": device, "precision": "fp32", "git_commit": "abc1234", **record}
    (folder / "provenance.json").write_text(json.dumps(provenance))
    return folder


def test_identical_rows_are_counted(tmp_path: Path) -> None:
    reference = _write_run(tmp_path / "results" / "sweep")
    run = _write_run(tmp_path / "runs" / "sweep")
    agreement = compare_runs(run, reference, "results/sweep")
    assert (agreement.shared, agreement.identical) == (3, 3)
    assert agreement.lines() == [
        "compare: 3 of 3 rows identical to results/sweep (CPU fp32, commit abc1234)"
    ]


def test_differences_name_metric_episode_values_and_versions(tmp_path: Path) -> None:
    reference = _write_run(
        tmp_path / "ref", versions={"numpy": "2.1.0", "opencv-python-headless": "5.0.0.93"}
    )
    run = _write_run(
        tmp_path / "run",
        values={EPISODES[0]: 0.91, EPISODES[2]: 0.95},
        versions={"numpy": "2.1.0", "opencv-python-headless": "5.1.0.95"},
        torch="2.15.0",
    )
    lines = compare_runs(run, reference, "results/sweep").lines()
    assert lines[0].startswith("compare: 1 of 3 rows identical to results/sweep")
    assert "recorded versions that differ: opencv-python-headless 5.0.0.93 vs 5.1.0.95" in lines[0]
    largest = [line for line in lines if line.startswith("    ")]
    assert largest[0] == f"    iAUROC {EPISODES[2]}: 0.9 vs 0.95 (0.05)"
    assert largest[1].startswith(f"    iAUROC {EPISODES[0]}: 0.9 vs 0.91")


def test_versions_recorded_by_one_side_only_are_not_named(tmp_path: Path) -> None:
    reference = _write_run(tmp_path / "ref", torch="2.14.1")  # an older record: no versions
    run = _write_run(tmp_path / "run", {EPISODES[0]: 0.5}, versions={"torch": "2.15.0", "x": "1"})
    lines = compare_runs(run, reference).lines()
    assert "recorded versions that differ: torch 2.14.1 vs 2.15.0" in lines[0]
    assert "x " not in lines[0]


def test_other_identity_is_one_line_without_comparing(tmp_path: Path) -> None:
    reference = _write_run(tmp_path / "ref", versions={"opencv": "5.0"})
    run = _write_run(
        tmp_path / "run", {EPISODES[0]: 0.1}, digest="b" * 64, versions={"opencv": "5.1"}
    )
    lines = compare_runs(run, reference, "results/sweep").lines()
    assert len(lines) == 1
    assert lines[0].startswith("compare: not compared with results/sweep")
    assert "dataset digest aaaaaaaaaaaa… there, bbbbbbbbbbbb… here" in lines[0]
    assert "opencv 5.0 vs 5.1" in lines[0] and "identical" not in lines[0]


def test_only_shared_episodes_are_compared(tmp_path: Path) -> None:
    reference = _write_run(tmp_path / "ref")
    run = tmp_path / "run"
    _write_run(run)
    EpisodeStore(run).append(
        {
            "episode_id": "c2/patchcore/k1/s0",
            "status": "ok",
            "protocol": PROTOCOL_VERSION,
            "dataset_digest": "a" * 64,
            "weights_digest": "w" * 64,
        }
    )
    line = compare_runs(run, reference, "results/sweep").lines()[0]
    assert line.startswith("compare: 3 of 3 rows identical to results/sweep")
    assert "1 of this run's episodes are not in it" in line


def test_reference_is_chosen_by_kind_device_and_precision(tmp_path: Path) -> None:
    _write_run(tmp_path / "results" / "sweep")
    _write_run(tmp_path / "results" / "gpu" / "sweep", device="NVIDIA H200")
    cpu = {"device": "CPU (x86_64, 2 threads)", "precision": "fp32"}
    gpu = {"device": "NVIDIA H100 80GB HBM3", "precision": "fp32"}
    assert reference_for("sweep", cpu, tmp_path) == tmp_path / "results" / "sweep"
    assert reference_for("sweep", gpu, tmp_path) == tmp_path / "results" / "gpu" / "sweep"
    assert reference_for("sweep", {**gpu, "precision": "bf16"}, tmp_path) is None
    assert reference_for("ablation", gpu, tmp_path) is None  # not committed in this tree
    assert reference_for("ablation", cpu, tmp_path) is None  # no CPU ablation reference


def test_no_lines_without_a_reference_and_a_note_for_the_reference_itself(tmp_path: Path) -> None:
    run = _write_run(tmp_path / "runs" / "sweep", precision="bf16")
    assert reference_report("sweep", run, tmp_path) == []
    reference = _write_run(tmp_path / "results" / "sweep")
    assert "wrote into the committed reference" in reference_report("sweep", reference, tmp_path)[0]


def test_default_out_is_the_ignored_runs_folder() -> None:
    assert RunConfig().out == Path("runs")
    ignored = (Path(__file__).resolve().parents[3] / ".gitignore").read_text().splitlines()
    assert "/runs/" in ignored


def _sweep(data: Path, config: Path, *extra: str) -> int:
    return main(
        [
            "sweep",
            "--config",
            str(config),
            "--data",
            str(data),
            "--shots",
            "1",
            "--seeds",
            "0",
            "--methods",
            "patchcore,linear_probe",
            *extra,
        ]
    )


def test_sweep_writes_runs_and_compares_with_the_committed_reference(
    tiny_data: Path, fast_config: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    repo = tmp_path / "repo"
    monkeypatch.setattr(compare, "repository_root", lambda: repo)
    assert _sweep(tiny_data, fast_config, "--out", str(repo / "results")) == 0
    assert "wrote into the committed reference" in capsys.readouterr().out
    monkeypatch.chdir(tmp_path)  # no --out: the run goes to ./runs
    assert _sweep(tiny_data, fast_config) == 0
    out = capsys.readouterr().out
    assert (tmp_path / "runs" / "sweep" / "episodes.csv").is_file()
    assert (tmp_path / "runs" / "sweep.md").is_file()
    assert "compare: 2 of 2 rows identical to results/sweep (CPU fp32" in out
    # the committed rows changed (say, another library version): the run names the difference
    shutil.rmtree(tmp_path / "runs")
    path = repo / "results" / "sweep" / "episodes.csv"
    text = path.read_text().splitlines()
    header = text[0].split(",")
    cells = text[1].split(",")
    cells[header.index("iAUROC")] = "0.125"
    path.write_text("\n".join([text[0], ",".join(cells), *text[2:]]) + "\n")
    assert _sweep(tiny_data, fast_config) == 0
    out = capsys.readouterr().out
    assert "compare: 1 of 2 rows identical to results/sweep" in out
    assert "    iAUROC line_space/" in out and ": 0.125 vs " in out


@pytest.mark.parametrize("kind", ["sweep", "ablation"])
def test_help_names_the_default_folder(kind: str, capsys) -> None:
    command = "sweep" if kind == "sweep" else "ablate"
    with pytest.raises(SystemExit):
        main([command, "--help"])
    assert "runs/" in capsys.readouterr().out
