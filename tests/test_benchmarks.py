"""Smoke test of ``python -m benchmarks.throughput`` on the CPU with the tiny backbone."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/ is not installed

from benchmarks._sections import read_sections, write_section
from benchmarks.throughput import ALL_METHODS, main


def test_throughput_writes_a_row_per_method_and_the_floor(tmp_path: Path, capsys) -> None:
    out = tmp_path / "performance.md"
    write_section(out, "other | device | backbone | bf16", "kept\n")
    argv = ["--backbone", "semclip-tiny", "--device", "cpu", "--batch-sizes", "2", "--repeats",
            "1", "--warmup", "0", "--shots", "1", "--epochs", "1", "--threads", "2", "--out",
            str(out)]  # fmt: skip
    assert main(argv) == 0
    sections = read_sections(out)
    assert next(iter(sections)) == "other | device | backbone | bf16"  # another key is kept
    key = next(k for k in sections if k.startswith("throughput | "))
    assert key.endswith("| semclip-tiny | fp32")
    body = sections[key]
    tables = [t for t in body.split("\n\n") if t.startswith("| ")]
    rows = [line for line in tables[0].splitlines() if "---" not in line]
    names = [row.split("|")[1].strip() for row in rows[1:]]
    assert names == ["floor: encode_image", *ALL_METHODS]
    split = [line for line in tables[1].splitlines() if "---" not in line]
    assert split[0].startswith("| method | extract ms @2 | predict ms @2 | floor ms @2 |")
    assert [row.split("|")[1].strip() for row in split[1:]] == list(ALL_METHODS)
    for row in split[1:]:
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert float(cells[1]) > 0 and float(cells[2]) > 0 and float(cells[3]) > 0
    for row in rows[1:]:
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert float(cells[2]) > 0  # images/s
        assert cells[3].endswith("%")
    assert "randomly initialised weights; timing only" in body and "(partial)" not in body
    assert "torch " in body and "open_clip " in body and "--backbone semclip-tiny" in body
    assert "Targets at batch 2" in capsys.readouterr().out

    assert main(argv) == 0  # a re-run replaces its own section, keeps the other one
    again = read_sections(out)
    assert len(again) == 2 and again["other | device | backbone | bf16"].endswith("kept\n\n")


def _write_rows(folder, values):
    from semclip_bench.runner.record.row_store import EpisodeStore

    store = EpisodeStore(folder)
    for (method, seed), auroc in values.items():
        store.append(
            {
                "episode_id": f"cat/{method}/k1/s{seed}",
                "category": "cat",
                "variant": method,
                "method": method,
                "shots": 1,
                "seed": seed,
                "status": "ok",
                "iAUROC": auroc,
                "pAUROC": float("nan"),
            }
        )


def test_compare_runs_reports_largest_gap_and_verdict(tmp_path, capsys):
    from benchmarks import compare_runs

    _write_rows(
        tmp_path / "a",
        {("patchcore", 0): 0.80, ("patchcore", 1): 0.70, ("semclip", 0): 0.9, ("winclip", 0): 0.6},
    )
    _write_rows(
        tmp_path / "b",
        {
            ("patchcore", 0): 0.8004,
            ("patchcore", 1): 0.69,
            ("semclip", 0): 0.8,
            ("winclip", 0): 0.6,
        },
    )
    table = compare_runs.compare(
        compare_runs.read_rows([tmp_path / "a"]), compare_runs.read_rows([tmp_path / "b"])
    )
    row = table.set_index("method").loc["patchcore"]
    assert row["episodes"] == 2 and row["identical"] == 0
    assert table.set_index("method").loc["winclip", "identical"] == 1  # NaN pAUROC in both: equal
    assert abs(row["iAUROC"] - 0.01) < 1e-9
    assert row["pAUROC"] == 0.0  # NaN in both runs counts as equal
    assert compare_runs.verdict("patchcore", 0.01, "fp32") == "MISS"
    assert compare_runs.verdict("patchcore", 0.0004, "fp32") == "PASS"
    assert compare_runs.verdict("semclip", 0.1, "fp32").startswith("stated")
    means = compare_runs.compare_means(
        compare_runs.read_rows([tmp_path / "a"]), compare_runs.read_rows([tmp_path / "b"])
    ).set_index("method")
    assert abs(means.loc["patchcore", "iAUROC"] - 0.0048) < 1e-9  # |0.74520 - 0.75|, one cell
    assert abs(means.loc["semclip", "iAUROC"] - 0.1) < 1e-9 and means.loc["winclip", "iAUROC"] == 0
    assert means.loc["patchcore", "cells"] == 1
    assert means.loc["patchcore", "at"] == "patchcore, K = 1"
    out = tmp_path / "perf.md"
    assert compare_runs.main([str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(out)]) == 0
    assert "| patchcore | 2 | 0 |" in out.read_text() and "| winclip | 1 | 1 |" in out.read_text()
    assert "| patchcore | 1 | 0.480 |" in out.read_text()


def test_stack_bench_times_alone_and_stacked(tmp_path: Path, capsys) -> None:
    from benchmarks.stack_bench import main as stack_main

    out = tmp_path / "perf.md"
    argv = ["--method", "semclip,anomalyclip", "--shots", "1", "--members", "2"]
    argv += ["--epochs", "1", "--backbone", "semclip-tiny", "--device", "cpu", "--out", str(out)]
    assert stack_main(argv) == 0
    (body,) = read_sections(out).values()
    rows = [line for line in body.splitlines() if line.startswith("| semclip |")]
    rows += [line for line in body.splitlines() if line.startswith("| anomalyclip |")]
    assert len(rows) == 2
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        alone, stacked, ratio, diff, repeat, support_mib = map(float, cells[3:9])
        assert alone > 0 and stacked > 0 and ratio > 0
        assert diff < 1e-4  # each stacked member trained as it would alone
        assert repeat == 0.0  # deterministic on the CPU: the second stacked fit is bit-identical
        assert support_mib >= 0 and cells[9:11] == ["n/a", "n/a"]  # no peak memory on a CPU
    assert "Kernels without a deterministic implementation that the fits ran: none" in body


def test_backbone_candidates_gains_and_targets(tmp_path: Path, capsys) -> None:
    from benchmarks import backbone_candidates

    study = tmp_path / "study"
    _write_rows(study / "random_init" / "sweep", {("patchcore", 0): 0.80, ("winclip", 0): 0.78})
    _write_rows(study / "good" / "sweep", {("patchcore", 0): 0.85, ("winclip", 0): 0.80})
    _write_rows(study / "bad" / "sweep", {("patchcore", 0): 0.70, ("winclip", 0): 0.74})
    (study / "not_a_run").mkdir()
    out = tmp_path / "candidates.md"
    assert backbone_candidates.main([str(study), "--resamples", "0", "--out", str(out)]) == 0
    text = out.read_text()
    assert text == capsys.readouterr().out
    # the reference first, then the others by name; gains are candidate - reference
    assert (
        "| method | K | random_init | bad | good | bad - random_init | good - random_init |" in text
    )
    assert "| patchcore | 1 | 80.0 | 70.0 | 85.0 | -10.0 | +5.0 |" in text
    assert "| winclip | 1 | 78.0 | 74.0 | 80.0 | -4.0 | +2.0 |" in text
    assert "| bad | 2 of 2 | -10.0 (patchcore, K = 1) | 74.0 | no |" in text
    assert "| good | 0 of 2 | — | 80.0 | yes |" in text
    with pytest.raises(SystemExit, match="no candidate folder named 'nope'"):
        backbone_candidates.main([str(study), "--resamples", "0", "--reference", "nope"])
    (study / "bad" / "sweep" / "episodes.csv").write_bytes(b"\x00\xff\xfe broken")
    with pytest.raises(SystemExit, match=r"cannot read episode rows .*bad"):
        backbone_candidates.main([str(study), "--resamples", "0"])


def _write_evaluation(path: Path, banks: dict[str, tuple[float, float]], baseline=None) -> None:
    def zero_shot(values: dict[str, tuple[float, float]]) -> dict:
        return {b: {"seen": s, "unseen": u, "all": (s + u) / 2} for b, (s, u) in values.items()}

    result = {"pretrained": {"zero_shot": zero_shot(banks)}, "protocol": {}}
    if baseline is not None:
        result["random_init"] = {"zero_shot": zero_shot(baseline)}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result))


def test_backbone_candidates_zero_shot_target(tmp_path: Path, capsys) -> None:
    from benchmarks import backbone_candidates

    study = tmp_path / "study"
    _write_rows(study / "random_init" / "sweep", {("patchcore", 0): 0.80})
    _write_rows(study / "shipped" / "sweep", {("patchcore", 0): 0.70})
    evals = tmp_path / "zero_shot"
    _write_evaluation(
        evals / "shipped.json",
        {"expert": (0.865, 0.773), "generic": (0.864, 0.775)},
        baseline={"expert": (0.50, 0.49), "generic": (0.48, 0.49)},
    )
    _write_evaluation(evals / "keeps.json", {"expert": (0.87, 0.78), "generic": (0.869, 0.774)})
    _write_evaluation(evals / "spread.json", {"expert": (0.90, 0.80), "generic": (0.88, 0.79)})
    _write_evaluation(evals / "lower.json", {"expert": (0.86, 0.80), "generic": (0.86, 0.80)})
    argv = [str(study), "--resamples", "0", "--no-targets", "--zero-shot", str(evals)]
    assert backbone_candidates.main(argv) == 0
    text = capsys.readouterr().out
    assert "Targets at K >= 1" not in text  # --no-targets: no real-image target table
    assert "--no-targets --zero-shot" in text.splitlines()[2]  # the command that wrote it
    assert "at or above shipped's lowest (seen 0.864, unseen 0.773)" in text
    rows = [line for line in text.splitlines() if line.startswith("| ") and "/" in line]
    assert [r.split(" | ")[0][2:] for r in rows[1:]] == [
        "shipped", "keeps", "lower", "random_init", "spread"
    ]  # fmt: skip
    assert rows[1].endswith("| 0.865 / 0.773 | 0.864 / 0.775 | 0.002 | yes |")
    assert rows[2].endswith("| 0.006 | yes |")  # unseen 0.780 - 0.774
    assert rows[3].endswith("| no |")  # seen 0.86 < 0.864
    assert rows[4].startswith("| random_init | 0.500 / 0.490 | 0.480 / 0.490 |")  # the baseline
    assert rows[5].endswith("| 0.020 | no |")  # banks 0.02 apart
    with pytest.raises(SystemExit, match="no zero-shot file for 'nope'"):
        backbone_candidates.main([*argv, "--zero-shot-reference", "nope"])
    (evals / "broken.json").write_text("{")
    with pytest.raises(SystemExit, match=r"broken.json: not a pretrain evaluate --json file"):
        backbone_candidates.main(argv)
