"""Intervals, the paired bold rule, gains over K = 0 and the chance rows, on synthetic episodes
whose per-image statistics are stored as a run stores them (no model runs)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from semclip_bench.metrics import evaluate, pixel_truth
from semclip_bench.metrics.bootstrap import EpisodeScores, pixel_statistics
from semclip_bench.runner.record.report import build_report
from semclip_bench.runner.record.row_store import COLUMNS, SCORES_KEY, EpisodeStore

TYPES = ("bridge", "hole")


def _query(category: str):
    rng = np.random.default_rng(len(category))
    n = 40
    labels = np.r_[np.zeros(20), np.ones(20)].astype(np.int8)
    types = np.array(["good"] * 20 + [TYPES[i % 2] for i in range(20)])
    masks = np.zeros((n, 16, 16), dtype=np.uint8)
    for i in range(20, n):
        y, x = rng.integers(0, 10, 2)
        masks[i, y : y + 4, x : x + 5] = 1
    return labels, types, masks


def _episode(variant: str, category: str, shots: int, seed: int, strength: float) -> dict:
    labels, types, masks = _query(category)
    rng = np.random.default_rng([seed, shots, len(variant)])
    maps = rng.normal(size=masks.shape).astype(np.float32) + strength * masks
    scores = maps.reshape(len(labels), -1).max(1) + rng.normal(scale=0.3, size=len(labels))
    names = ["good", *TYPES]
    logits = rng.normal(size=(len(labels), 3)).astype(np.float32)
    truth_ids = np.array([names.index(t) for t in types])
    logits[np.arange(len(labels)), truth_ids] += strength
    metrics = evaluate(
        scores,
        labels,
        maps=maps,
        masks=masks,
        types=types,
        class_pred=logits.argmax(1),
        class_target=truth_ids,
        num_classes=3,
    )
    truth = pixel_truth(masks, [m.shape for m in maps])
    stats = EpisodeScores(scores, labels, types, names, logits, *pixel_statistics(maps, truth))
    row = {c: "" for c in COLUMNS}
    row.update(
        episode_id=f"{category}/{variant}/k{shots}/s{seed}",
        kind="sweep",
        dataset="d",
        category=category,
        variant=variant,
        method=variant,
        supervision="s",
        shots=shots,
        seed=seed,
        status="ok",
        n_query=40,
        n_query_normal=20,
        n_query_defect=20,
        na_reasons="{}",
        protocol="v2",
        dataset_digest="a" * 64,
        weights_digest="b" * 64,
        per_type_auroc=json.dumps({t: float(metrics[f"iAUROC/{t}"]) for t in TYPES}),
    )
    for key in ("iAUROC", "iAP", "iF1max", "pAUROC", "pF1max", "AUPRO"):
        row[key] = float(metrics[key])
    for key in ("accuracy", "precision", "recall", "f1"):
        row[f"cls_{key}"] = float(metrics[f"cls_{key}"])
    row[SCORES_KEY] = stats
    return row


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("run") / "sweep"
    store = EpisodeStore(folder)
    for category in ("c1", "c2"):
        for shots in (0, 1):
            for seed in (0, 1):
                store.append(_episode("strong", category, shots, seed, 3.0 + shots))
                store.append(_episode("weak", category, shots, seed, 0.3))
    return folder


def _line(text: str, section: str, first: str, shots: str) -> list[str]:
    for line in text.split(f"## {section}")[1].split("\n## ")[0].splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if cells[0] == first and cells[1] == shots:
            return cells
    raise AssertionError(f"no row {first} {shots} in {section}")


def test_cells_carry_intervals_and_the_paired_bold_rule(run: Path) -> None:
    text, _ = build_report([run], "sweep", resamples=300)
    strong = _line(text, "Detection", "strong", "1")
    weak = _line(text, "Detection", "weak", "1")
    assert strong[3].startswith("**") and "[" in strong[3]  # iAUROC: clearly ahead, bold
    assert not weak[3].startswith("**") and "[" in weak[3]
    # the gain over its own K = 0 with a paired interval
    assert strong[9].startswith("+") and "[" in strong[9]


def test_wins_ties_losses_and_equal_methods_tie(run: Path) -> None:
    text, _ = build_report([run], "sweep", resamples=300)
    table = text.split("## Wins / ties / losses")[1].split("\n## ")[0]
    rows = {
        line.split("|")[1].strip(): [int(x) for x in line.strip("|").split("|")[1:]]
        for line in table.splitlines()
        if line.startswith("| strong") or line.startswith("| weak")
    }
    assert rows["strong"][0] > 0 and rows["weak"][2] > 0
    assert rows["weak"][0] == 0


def test_constant_score_row_is_computed_from_the_data(run: Path) -> None:
    text, _ = build_report([run], "sweep", resamples=200)
    chance = _line(text, "Detection", "_constant score_", "1")
    _, _, masks = _query("c1")
    q1 = masks.mean()
    _, _, masks = _query("c2")
    q2 = masks.mean()
    expected = np.mean([2 * q / (1 + q) for q in (q1, q2)]) * 100
    assert chance[7].startswith(f"{expected:.1f} [")
    assert chance[8].startswith("15.0")  # AUPRO@0.3 of a constant map: (0.3 * 0.3 / 2) / 0.3


def test_defect_type_table_and_chance_rows(run: Path) -> None:
    text, _ = build_report([run], "sweep", resamples=200)
    strong = _line(text, "Defect type on defect images", "strong", "1")
    assert strong[2].startswith("**")
    majority = _line(text, "Defect type on defect images", "_majority class_", "1")
    assert majority[2].startswith("50.0")  # two balanced types
    uniform = _line(text, "Defect type on defect images", "_uniform guess_", "1")
    assert uniform[2].startswith("50.0")


def test_without_resamples_the_seed_std_is_labelled(run: Path) -> None:
    text, _ = build_report([run], "sweep", resamples=0)
    assert "± " in _line(text, "Detection", "strong", "1")[3]
    assert _line(text, "Detection", "strong", "1")[3].strip("*").endswith("(seed std)")
    assert "have no bootstrap interval" in text


def test_intervals_are_paired_across_methods(run: Path) -> None:
    from semclip_bench.runner.record.row_store import read_rows
    from semclip_bench.runner.record.uncertainty import episode_replicates

    rows = read_rows([run])
    reps = episode_replicates(rows, 100)
    a = reps.cell(rows[(rows.variant == "strong") & (rows.shots == 1)], "iAUROC")
    b = reps.cell(rows[(rows.variant == "weak") & (rows.shots == 1)], "iAUROC")
    assert a.shape == b.shape == (100,)
    again = episode_replicates(rows, 100).cell(
        rows[(rows.variant == "strong") & (rows.shots == 1)], "iAUROC"
    )
    assert np.array_equal(a, again)  # fixed protocol seed: the same intervals every time


def test_write_report_links_confusion_matrices(run: Path, tmp_path: Path) -> None:
    from semclip_bench.runner.record.report import write_report

    path, _ = write_report([run], "sweep", tmp_path, resamples=100)
    text = path.read_text()
    assert (tmp_path / "sweep_confusion_strong.png").stat().st_size > 0
    assert "[K = 1](sweep_confusion_strong.png)" in text
    assert (tmp_path / "sweep_iAUROC.png").stat().st_size > 0


def test_paired_differences_with_the_best(run: Path) -> None:
    text, _ = build_report([run], "sweep", resamples=200)
    section = "Paired differences with the best (detection)"
    assert _line(text, section, "strong", "1")[2] == "best"  # iAUROC
    weak = _line(text, section, "weak", "1")[2]
    difference, share = weak.split("], ")
    assert difference.startswith("+") and share == "100%"


def test_paired_gain_benchmark_bolds_only_separated_gains(run: Path) -> None:
    from benchmarks.paired_gain import paired_gains

    table = paired_gains(run, [("strong", "weak"), ("weak", "strong"), ("weak", "weak")], 200)
    rows = {
        (cells[0], cells[1], cells[2]): cells[3:]
        for cells in (
            [c.strip() for c in line.strip("|").split("|")] for line in table.splitlines()
        )
    }
    ahead, behind, same = (
        rows["strong", "weak", "1"],
        rows["weak", "strong", "1"],
        rows["weak", "weak", "1"],
    )
    assert ahead[0].startswith("**+") and ahead[0].endswith("100%")  # iAUROC: clearly ahead
    assert behind[0].startswith("**-") and behind[0].endswith(" 0%")
    assert same[0] == "+0.0 [+0.0, +0.0] 0%"  # a variant against itself: no gain, never ahead
    with pytest.raises(SystemExit, match="no finished episodes of missing"):
        paired_gains(run, [("missing", "weak")], 10)
