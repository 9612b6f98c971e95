"""Tables: chance levels (defect fraction, flag-all F1, AUROC 50), the chance-aware bold rule, and
episode notes, on hand-made rows (no model runs)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from semclip_bench.runner.record.report import (
    DETECTION,
    build_report,
    metric_table,
    per_category_table,
    per_type_table,
)
from semclip_bench.runner.record.row_store import COLUMNS, METRIC_COLUMNS, EpisodeStore


def _row(variant: str, seed: int, category: str = "c1", shots: int = 1, **metrics) -> dict:
    row = {c: "" for c in COLUMNS}
    row.update(
        episode_id=f"{category}/{variant}/k{shots}/s{seed}",
        kind="sweep",
        dataset="d",
        category=category,
        variant=variant,
        method=variant,
        supervision="K normal images",
        shots=shots,
        seed=seed,
        status="ok",
        n_query=100,
        n_query_normal=75,
        n_query_defect=25,  # p = 0.25: chance iAP 25.0, flag-all F1 = 0.5 / 1.25 = 40.0
        per_type_auroc=json.dumps({"t": metrics.get("iAUROC", 0.5)}),
        na_reasons="{}",
        protocol="v2",
        dataset_digest="a" * 64,
        weights_digest="b" * 64,
    )
    for column in METRIC_COLUMNS:
        row[column] = metrics.get(column, float("nan"))
    return row


def _frame(rows: list[dict]) -> pd.DataFrame:
    return pd.DataFrame(rows)


def _line(table: str, first: str) -> list[str]:
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if cells[0] == first:
            return cells
    raise AssertionError(f"no row {first!r} in\n{table}")


def test_constant_score_row_states_chance_levels() -> None:
    rows = [_row("a", s, iAUROC=0.7, iAP=0.5, iF1max=0.6) for s in (0, 1)]
    rows += [_row("b", s, iAUROC=0.6, iAP=0.4, iF1max=0.5) for s in (0, 1)]
    table = metric_table(_frame(rows), DETECTION, ["a", "b"], chance=True)
    chance = _line(table, "_constant score_")
    # Method, Shots, Supervision, iAUROC, iAP, iF1-max, pAUROC, pF1-max, AUPRO
    assert chance[1:7] == ["1", "none (chance level)", "50.0", "25.0", "40.0", "50.0"]
    assert chance[7:] == ["n/a (no per-image scores)"] * 2  # pixel chance needs stored scores


def test_bold_dropped_when_every_method_is_within_one_std_of_chance() -> None:
    # iF1-max: a = 40 ± 2.8, b = 41 ± 1.4 around the flag-all F1 of 40: no bold;
    # iAUROC: a clearly above 50: bold stays.
    rows = [
        _row("a", 0, iAUROC=0.80, iAP=0.30, iF1max=0.38),
        _row("a", 1, iAUROC=0.82, iAP=0.32, iF1max=0.42),
        _row("b", 0, iAUROC=0.60, iAP=0.26, iF1max=0.40),
        _row("b", 1, iAUROC=0.62, iAP=0.24, iF1max=0.42),
    ]
    table = metric_table(_frame(rows), DETECTION, ["a", "b"], chance=True)
    a, b = _line(table, "a"), _line(table, "b")
    assert a[3].startswith("**81.0") and not b[3].startswith("**")  # iAUROC
    assert a[4].startswith("**31.0")  # iAP: a is 6 points above p = 25, std 1.4
    assert not a[5].startswith("**") and not b[5].startswith("**")  # iF1-max within std of 40
    # without the chance rule the higher mean would be bold
    plain = metric_table(_frame(rows), DETECTION, ["a", "b"])
    assert _line(plain, "b")[5].startswith("**")


def test_auroc_rule_in_per_category_and_per_type_tables() -> None:
    rows = [
        _row("a", 0, iAUROC=0.49, pAUROC=0.70, pF1max=0.2),
        _row("a", 1, iAUROC=0.53, pAUROC=0.72, pF1max=0.2),
        _row("b", 0, iAUROC=0.50, pAUROC=0.60, pF1max=0.1),
        _row("b", 1, iAUROC=0.52, pAUROC=0.62, pF1max=0.1),
    ]
    table = per_category_table(_frame(rows), ["a", "b"], ("iAUROC", "pAUROC", "pF1max"))
    assert "**" not in table.split("\n")[2].split("|")[4]  # a's iAUROC: near 50, no bold
    assert "**" not in table.split("\n")[3].split("|")[4]
    assert "**71.0" in table  # pAUROC far from 50
    per_type = per_type_table(_frame(rows), ["a", "b"])
    assert "**" not in per_type  # every type's iAUROC is within a std of 50


def test_notes_and_skips_are_printed(tmp_path: Path) -> None:
    store = EpisodeStore(tmp_path / "sweep")
    note = "scratch: support pool of 12 images (fewer than 20 + 5 test images)"
    for seed in (0, 1):
        row = _row("a", seed, iAUROC=0.7, iAP=0.4, iF1max=0.5)
        row["notes"] = [note]
        store.append(row)
    skipped = _row("a", 0, shots=20)
    skipped.update(status="skipped", reason="K = 20 exceeds the scratch pool (12)", notes=[note])
    store.append(skipped)
    text, _ = build_report([tmp_path / "sweep"], "sweep")
    notes = text.split("## Notes on the episodes")[1].split("##")[0]
    assert f"| {note} | 3 |" in notes
    assert "K = 20 exceeds the scratch pool (12)" in text.split("## Skipped episodes")[1]


def test_best_value_at_chance_is_not_bold() -> None:
    # a = 51 ± 1.4 is the best iAUROC but within a std of 50; b = 31 is far below chance
    rows = [
        _row("a", 0, iAUROC=0.50),
        _row("a", 1, iAUROC=0.52),
        _row("b", 0, iAUROC=0.30),
        _row("b", 1, iAUROC=0.32),
    ]
    table = metric_table(_frame(rows), ("iAUROC",), ["a", "b"], chance=True)
    assert "**" not in table


def test_random_init_control_is_named_in_title_and_banner(tmp_path: Path) -> None:
    store = EpisodeStore(tmp_path / "sweep")
    for seed in (0, 1):
        row = _row("a", seed, iAUROC=0.5)
        row["weights_digest"] = "random-init:semclip-vit-m16:seed0"
        store.append(row)
    text, _ = build_report([tmp_path / "sweep"], "sweep")
    first_line = text.splitlines()[0]
    assert "CONTROL: randomly initialised backbone" in first_line
    assert "`random-init:semclip-vit-m16:seed0`" in text
    assert "`--pretrained none`" in text


def test_pretrained_rows_have_no_control_banner(tmp_path: Path) -> None:
    store = EpisodeStore(tmp_path / "sweep")
    store.append(_row("a", 0, iAUROC=0.7))
    text, _ = build_report([tmp_path / "sweep"], "sweep")
    assert "CONTROL" not in text and "randomly initialised" not in text


def test_elpv_tables_say_what_the_images_are(tmp_path: Path) -> None:
    store = EpisodeStore(tmp_path / "sweep")
    row = _row("a", 0, iAUROC=0.7)
    row["dataset"] = "elpv-soft"
    store.append(row)
    text, _ = build_report([tmp_path / "sweep"], "sweep")
    assert text.splitlines()[0].endswith("electroluminescence images of solar cells (elpv-soft)")
