"""End-to-end sweep / ablate / report on the tiny model and a tiny generated dataset."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from semclip_bench.cli import main
from semclip_bench.runner.record.row_store import METRIC_COLUMNS, read_rows

ALL = "semclip,winclip,anomalyclip,patchcore,linear_probe"


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
            "1,2",
            *extra,
        ]
    )


def _metrics(rows: pd.DataFrame) -> pd.DataFrame:
    columns = ["episode_id", "status", "reason", *METRIC_COLUMNS, "per_type_auroc"]
    return rows[columns].sort_values("episode_id").reset_index(drop=True)


@pytest.fixture(scope="module")
def full_run(tiny_data: Path, fast_config: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sweep")
    assert _sweep(tiny_data, fast_config, out, "--methods", ALL) == 0
    return out


def test_sweep_writes_rows_tables_and_plots(full_run: Path) -> None:
    rows = read_rows([full_run / "sweep"])
    # 1 category x 2 shots x 2 seeds x 5 methods
    assert len(rows) == 20
    assert set(rows["status"]) == {"ok"}
    assert rows["episode_id"].is_unique
    ok = rows.set_index("variant")
    assert ok.loc["semclip", "cls_accuracy"].notna().all()
    assert ok.loc["patchcore", "cls_accuracy"].isna().all()
    reasons = json.loads(ok.loc["patchcore", "na_reasons"].iloc[0])
    assert "cls_accuracy" in reasons
    text = (full_run / "sweep.md").read_text()
    assert "## Provenance" in text and "semclip-tiny" in text and "Wall-clock" in text
    assert "n/a (" in text
    # every cell has its bootstrap interval; bold needs a paired interval excluding 0, which
    # random tiny weights rarely give, so only the decisions' summary is required
    assert "## Wins / ties / losses" in text and " [" in text
    assert len(list((full_run / "sweep" / "scores").glob("*.npz"))) == 20
    assert (full_run / "sweep_iAUROC.png").stat().st_size > 0
    supports = (full_run / "sweep" / "supports.jsonl").read_text().splitlines()
    assert len(supports) == 4  # (shots, seed) pairs of the one category
    files = json.loads(supports[0])["files"]
    assert files, "support files are recorded"


def test_feature_cache_is_reused(full_run: Path) -> None:
    provenance = json.loads((full_run / "sweep" / "provenance.json").read_text())
    cache = provenance["cache"]
    hits = int(cache.split(" hits")[0].split()[-1])
    misses = int(cache.split(" misses")[0].split()[-1])
    assert hits > misses  # 4 episodes share every query image


def test_rerun_skips_finished_and_resume_is_identical(
    full_run: Path, tiny_data: Path, fast_config: Path, tmp_path: Path
) -> None:
    # an "interrupted" copy: the first 7 rows plus a half-written line
    src = (full_run / "sweep" / "episodes.csv").read_text().splitlines(keepends=True)
    folder = tmp_path / "sweep"
    folder.mkdir()
    (folder / "episodes.csv").write_text("".join(src[:8]) + src[8][:20])
    assert _sweep(tiny_data, fast_config, tmp_path, "--methods", ALL) == 0
    resumed = read_rows([folder])
    assert len(resumed) == 20 and resumed["episode_id"].is_unique
    pd.testing.assert_frame_equal(_metrics(resumed), _metrics(read_rows([full_run / "sweep"])))
    # a rerun does nothing new
    before = (folder / "episodes.csv").read_text()
    assert _sweep(tiny_data, fast_config, tmp_path, "--methods", ALL) == 0
    assert (folder / "episodes.csv").read_text() == before


@pytest.fixture(scope="module")
def stacked_run(tiny_data: Path, fast_config: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("stacked")
    assert _sweep(tiny_data, fast_config, out, "--methods", ALL, "--fit-mode", "stacked") == 0
    return out


def test_stacked_training_agrees_with_training_alone(full_run: Path, stacked_run: Path) -> None:
    """--fit-mode stacked (the CUDA default) vs alone (the CPU default): the same rows within
    1e-3 (the issue's bound), and each table header says how its heads were trained."""
    alone = _metrics(read_rows([full_run / "sweep"]))
    stacked = _metrics(read_rows([stacked_run / "sweep"]))
    pd.testing.assert_frame_equal(alone, stacked, check_exact=False, atol=1e-3, rtol=0)
    assert "- Training: each episode trained alone" in (full_run / "sweep.md").read_text()
    assert "trained as one stacked module" in (stacked_run / "sweep.md").read_text()


def test_bf16_runs_train_heads_in_float32_so_stacked_agrees_with_alone(
    tiny_data: Path, fast_config: Path, tmp_path: Path
) -> None:
    """--precision bf16 moves only the frozen extraction to bf16: the heads still train in
    float32, so stacking keeps its 1e-3 bound there too (bf16-mixed training did not: stacking
    regrouped its bf16 roundings)."""
    runs = {}
    for mode in ("alone", "stacked"):
        out = tmp_path / mode
        extra = ("--methods", "semclip,anomalyclip", "--precision", "bf16", "--fit-mode", mode)
        assert _sweep(tiny_data, fast_config, out, *extra) == 0
        runs[mode] = _metrics(read_rows([out / "sweep"]))
    assert len(runs["alone"]) == 8
    pd.testing.assert_frame_equal(
        runs["alone"], runs["stacked"], check_exact=False, atol=1e-3, rtol=0
    )


def test_resume_inside_a_stack_retrains_the_whole_stack(
    stacked_run: Path, tiny_data: Path, fast_config: Path, tmp_path: Path
) -> None:
    """One member of a stacked group missing: the group is trained again in full, so the missing
    row equals the uninterrupted run's."""
    rows = (stacked_run / "sweep" / "episodes.csv").read_text().splitlines(keepends=True)
    missing = [i for i, line in enumerate(rows) if "/anomalyclip/k1/s1" in line]
    assert len(missing) == 1
    folder = tmp_path / "sweep"
    folder.mkdir()
    (folder / "episodes.csv").write_text("".join(r for i, r in enumerate(rows) if i != missing[0]))
    assert _sweep(tiny_data, fast_config, tmp_path, "--methods", ALL, "--fit-mode", "stacked") == 0
    resumed = read_rows([folder])
    assert len(resumed) == 20
    pd.testing.assert_frame_equal(_metrics(resumed), _metrics(read_rows([stacked_run / "sweep"])))


def test_stacks_are_split_by_their_support_bytes(
    stacked_run: Path, tiny_data: Path, fast_config: Path, tmp_path: Path, monkeypatch
) -> None:
    """The run asks the stack-size rule with each group's support bytes and trains stacks of at
    most what it answers: the same rows as the full stacks within the stacked-vs-alone tolerance
    (the members train independently)."""
    import semclip_bench.models.stacked as stacked_fits
    from semclip_bench.backbones import BackboneSpec, build_backbone
    from semclip_bench.models import method_class
    from semclip_bench.runner.execute import engine
    from semclip_bench.runner.execute.features import feature_bytes

    sizes, asked = [], []
    fit = stacked_fits.fit_methods_stacked

    def recording(methods, *args, **kwargs):
        sizes.append(len(methods))
        return fit(methods, *args, **kwargs)

    def two(support_bytes: int) -> int:
        asked.append(support_bytes)
        return 2

    monkeypatch.setattr(stacked_fits, "fit_methods_stacked", recording)
    monkeypatch.setattr(engine, "members_per_stack", two)
    assert _sweep(tiny_data, fast_config, tmp_path, "--methods", ALL, "--fit-mode", "stacked") == 0
    assert sizes and max(sizes) == 2
    backbone = build_backbone(BackboneSpec(name="semclip-tiny"))
    per_image = {
        name: feature_bytes(method_class(name)(backbone, ("good", "x")), backbone, backbone.device)
        for name in ("semclip", "anomalyclip")
    }
    # K images per class, each class of the support: a multiple of one image's features
    assert asked and all(any(b % n == 0 for n in per_image.values()) for b in asked)
    split = _metrics(read_rows([tmp_path / "sweep"]))
    full = _metrics(read_rows([stacked_run / "sweep"]))
    pd.testing.assert_frame_equal(split, full, check_exact=False, atol=1e-3, rtol=0)


def test_two_shards_merge_to_single_run(
    full_run: Path, tiny_data: Path, fast_config: Path, tmp_path: Path
) -> None:
    for i in range(2):
        assert (
            _sweep(
                tiny_data, fast_config, tmp_path / f"s{i}", "--methods", ALL, "--shard", f"{i}/2"
            )
            == 0
        )
    parts = [len(read_rows([tmp_path / f"s{i}"])) for i in range(2)]
    # Shards split work items: the seeds of a stacked group are in one shard.
    assert sum(parts) == 20 and min(parts) > 0
    assert (
        main(
            [
                "report",
                "--from",
                str(tmp_path / "s0"),
                str(tmp_path / "s1"),
                "--out",
                str(tmp_path / "merged"),
            ]
        )
        == 0
    )
    merged = read_rows([tmp_path / "s0", tmp_path / "s1"])
    pd.testing.assert_frame_equal(_metrics(merged), _metrics(read_rows([full_run / "sweep"])))
    assert "Part 2" in (tmp_path / "merged" / "sweep.md").read_text()


def test_ablate_reports_deltas(tiny_data: Path, fast_config: Path, tmp_path: Path) -> None:
    code = main(
        [
            "ablate",
            "--config",
            str(fast_config),
            "--data",
            str(tiny_data),
            "--out",
            str(tmp_path),
            "--shots",
            "2",
            "--seeds",
            "0",
        ]
    )
    assert code == 0
    rows = read_rows([tmp_path / "ablation"])
    assert set(rows["variant"]) == {
        "semclip",
        "semclip-generic_prompts",
        "semclip-single_path",
        "semclip-no_text_guidance",
        "semclip-all",
    }
    text = (tmp_path / "ablation.md").read_text()
    assert "Δ iAUROC vs semclip" in text


def test_wandb_offline_run_is_written(tiny_data: Path, fast_config: Path, tmp_path: Path) -> None:
    code = _sweep(
        tiny_data,
        fast_config,
        tmp_path,
        "--methods",
        "patchcore",
        "--seeds",
        "0",
        "--shots",
        "1",
        "--wandb",
        "offline",
    )
    assert code == 0
    runs = list((tmp_path / "sweep" / "wandb").rglob("offline-run-*"))
    assert runs, "an offline W&B run directory exists"
    # offline runs keep their history in the binary run file; the metric keys are in it
    contents = [f.read_bytes() for run in runs for f in run.glob("run-*.wandb")]
    assert any(b"test/iAUROC" in c for c in contents), "an episode run holds the metrics"
    assert any(b"summary.table.json" in c for c in contents), "a summary run logs the table"


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--methods", "nosuch"], "--methods"),
        (["--shots", "500"], "--shots"),
        (["--data", "/no/such/folder"], "/no/such/folder"),
        (["--shots", "x"], "shots"),
    ],
)
def test_bad_inputs_give_one_line(
    args: list[str], needle: str, tiny_data: Path, fast_config: Path, tmp_path: Path, capsys
) -> None:
    base = ["sweep", "--config", str(fast_config), "--data", str(tiny_data), "--out", str(tmp_path)]
    assert main(base + args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0] and "Traceback" not in err[0]


def test_unreadable_config_gives_one_line(tmp_path: Path, capsys) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("shots: [1, 2\n  nope: {")
    assert main(["sweep", "--config", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(bad) in err[0]
    assert main(["sweep", "--config", str(tmp_path / "missing.yaml")]) == 2


def test_unseen_types_marked_only_for_the_shipped_backbone() -> None:
    from semclip_bench.backbones import default_backbone_spec
    from semclip_bench.runner.record.report import _unseen_types

    shipped = str(default_backbone_spec().pretrained)
    assert _unseen_types([{"weights": shipped}]) == ["infilm", "scratch"]
    assert _unseen_types([{"weights": shipped}, {"weights": "random init"}]) == []
    assert _unseen_types([]) == []


def test_out_of_gpu_memory_is_one_line_and_keeps_finished_rows(
    full_run: Path, tiny_data: Path, fast_config: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    """A fit that runs out of GPU memory ends the run with one line naming the options that use
    less memory; the episodes finished before it are on disk, and a rerun completes the table."""
    from semclip_bench.runner.execute import engine

    real_fit, calls = engine.fit, []

    def failing_fit(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 198.00 MiB.")
        return real_fit(*args, **kwargs)

    monkeypatch.setattr(engine, "fit", failing_fit)
    code = _sweep(tiny_data, fast_config, tmp_path, "--methods", "semclip,patchcore")
    err = [line for line in capsys.readouterr().err.splitlines() if "error" in line.lower()]
    assert code != 0
    assert len(err) == 1 and err[0].startswith("error: GPU out of memory in the run")
    assert "--batch-size 16" in err[0] and "to resume" in err[0]
    assert "--procs-per-device" not in err[0] and "--fit-mode" not in err[0]  # one CPU process
    kept = read_rows([tmp_path / "sweep"])
    assert 0 < len(kept) < 8  # what finished before the failure (of 2 methods x 4 episodes)
    monkeypatch.setattr(engine, "fit", real_fit)
    assert _sweep(tiny_data, fast_config, tmp_path, "--methods", "semclip,patchcore") == 0
    resumed = _metrics(read_rows([tmp_path / "sweep"]))
    full = _metrics(read_rows([full_run / "sweep"]))
    pd.testing.assert_frame_equal(
        resumed, full[full["episode_id"].isin(resumed["episode_id"])].reset_index(drop=True)
    )


def test_out_of_memory_message_names_what_uses_less_memory() -> None:
    from types import SimpleNamespace

    from semclip_bench.runner.execute.engine import out_of_memory_message
    from semclip_bench.runner.plan.config import RunConfig

    fabric = SimpleNamespace(world_size=8, global_rank=3)
    oom = torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 198.00 MiB.\nmore")
    line = out_of_memory_message(oom, RunConfig(devices=1), fabric, torch.device("cuda", 0))
    assert "\n" not in line
    assert line.startswith("GPU out of memory in rank 3 of 8 processes on cuda:0 (CUDA out of")
    assert "--procs-per-device 4 (now 8 per GPU) or --fit-mode alone or --batch-size 16" in line
    two = out_of_memory_message(oom, RunConfig(devices=2, fit_mode="alone"), fabric, "cuda")
    assert "--procs-per-device 2 (now 4 per GPU) or --batch-size 16" in two


def test_every_kernel_of_a_run_runs_in_its_deterministic_mode(
    tiny_data: Path, fast_config: Path, tmp_path: Path, monkeypatch
) -> None:
    """The run's deterministic-algorithm mode holds from its first kernel (here: a training-free
    method's extraction, which no Lightning fit precedes), and the caller's mode comes back."""
    from semclip_bench.models.patchcore import PatchCore

    real_extract, modes = PatchCore.extract, []

    def recording_extract(self, images):
        modes.append(torch.are_deterministic_algorithms_enabled())
        return real_extract(self, images)

    monkeypatch.setattr(PatchCore, "extract", recording_extract)
    before = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(False)  # as in a fresh process (an earlier fit turns it on)
    try:
        code = _sweep(
            tiny_data, fast_config, tmp_path, "--methods", "patchcore", "--no-feature-cache"
        )
        assert code == 0
        assert modes and all(modes)
        assert not torch.are_deterministic_algorithms_enabled()  # restored after the run
    finally:
        torch.use_deterministic_algorithms(before, warn_only=warn_only)
