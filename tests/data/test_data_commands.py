"""The ``data`` CLI group through :func:`semclip_bench.cli.main`."""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from semclip_bench.cli import build_parser, main
from semclip_bench.data import load_dataset
from semclip_bench.data.images import image_info


def test_check_ok_exit_0(handmade: Callable[..., Path], capsys: pytest.CaptureFixture) -> None:
    root = handmade(categories=("cat_a", "cat_b"))
    assert main(["data", "check", str(root)]) == 0
    out = capsys.readouterr().out
    assert "dataset ds: 24 images, 2 categories" in out
    assert re.search(r"^\s+cat_b\s+test\s+bridge\s+3$", out, re.MULTILINE)
    assert "8-bit: 24" in out and "24x32: 24" in out
    assert "OK: no problems found" in out


def test_check_problems_exit_1(
    handmade: Callable[..., Path], write_img: Callable, capsys: pytest.CaptureFixture
) -> None:
    root = handmade()
    write_img(
        root / "cat_a" / "ground_truth" / "bridge" / "000_mask.png", np.ones((5, 5), np.uint8)
    )
    (root / "cat_a" / "ground_truth" / "particle" / "001_mask.png").unlink()
    assert main(["data", "check", str(root)]) == 1
    out = capsys.readouterr().out
    assert "problem: " in out and "000_mask.png: mask size 5x5 (HxW) differs" in out
    assert "001.png: defect image without a mask" in out
    assert "FAILED: 2 problem(s) found" in out


def test_check_names_an_unknown_manifest_column(
    handmade: Callable[..., Path], capsys: pytest.CaptureFixture
) -> None:
    root = handmade()
    lines = ["image_path,category,split,label,mask"]
    for sample in load_dataset(root).samples:
        mask = "" if sample.mask_path is None else str(sample.mask_path)
        lines.append(f"{sample.image_path},{sample.category},{sample.split},{sample.label},{mask}")
    manifest = root / "manifest.csv"
    manifest.write_text("\n".join(lines) + "\n")
    assert main(["data", "check", str(manifest)]) == 1
    out = capsys.readouterr().out
    problems = [line for line in out.splitlines() if line.startswith("problem: ")]
    assert len(problems) == 1
    assert "unknown column 'mask' (did you mean 'mask_path'?)" in problems[0]
    assert str(manifest) in problems[0] and "FAILED: 1 problem(s) found" in out


def test_check_missing_path_exit_1(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["data", "check", str(tmp_path / "nope")]) == 1
    assert "nope: no such dataset folder" in capsys.readouterr().out


def test_synth_writes_dataset_and_preview(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out_dir = tmp_path / "gen"
    preview = tmp_path / "sheet.png"
    argv = [
        "data",
        "synth",
        "--out",
        str(out_dir),
        "--image-size",
        "32",
        "--bit-depth",
        "16",
        "--n-train-good",
        "2",
        "--n-test-good",
        "1",
        "--n-per-defect",
        "2",
        "--categories",
        "contact_array",
        "--defect-types",
        "hole,scratch",
        "--workers",
        "1",
        "--preview",
        str(preview),
    ]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert f"wrote 7 images to {out_dir}" in printed and "images/s" in printed
    recorded = json.loads((out_dir / "synth.json").read_text())["content_digest"]
    assert f"content digest {recorded}" in printed
    assert f"wrote preview sheet to {preview}" in printed and preview.is_file()
    dataset = load_dataset(out_dir)
    assert dataset.categories() == ["contact_array"]
    assert dataset.defect_types("contact_array") == ["hole", "scratch"]
    assert image_info(dataset.samples[0].image_path).bit_depth == 16
    assert main(["data", "check", str(out_dir)]) == 0
    # The same folder again: refused with one line naming it, nothing overwritten.
    assert main(argv) == 2
    assert "gen: already exists and is not an empty folder" in capsys.readouterr().err


def test_synth_bad_option_is_user_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["data", "synth", "--out", str(tmp_path / "x"), "--categories", "nope"]) == 2
    assert "categories" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_data_without_action_prints_help(capsys: pytest.CaptureFixture) -> None:
    assert main(["data"]) == 2
    assert "synth" in capsys.readouterr().out


def test_every_option_has_help() -> None:
    parser = build_parser()
    group = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[
        "data"
    ]
    actions = next(a for a in group._actions if isinstance(a, argparse._SubParsersAction))
    assert set(actions.choices) == {"synth", "check"}
    for sub in actions.choices.values():
        for action in sub._actions:
            assert action.help, f"{sub.prog} {action.dest} has no help"
    help_text = actions.choices["synth"].format_help()
    assert "(default: 256)" in help_text  # defaults come from SynthConfig
