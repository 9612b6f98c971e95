"""Training lowers the loss; export loads through the backbone; CLI runs end to end (CPU)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from semclip_bench.backbones import BackboneSpec, build_backbone
from semclip_bench.cli import main
from semclip_bench.models.base import SupportSet
from semclip_bench.pretrain.data import SynthCaptionStream, normalise_batch
from semclip_bench.pretrain.evaluate import (
    bank_scores,
    render_test_split,
    retrieval_accuracy,
    validation_config,
    zero_shot_auroc,
    zero_shot_banks,
)
from semclip_bench.pretrain.export import export_checkpoint, read_sha256_file, sha256_file
from semclip_bench.pretrain.module import ClipPretrainModule, PretrainConfig, lr_factor

ARCH = "semclip-tiny"


@pytest.fixture(scope="module")
def batch() -> dict[str, torch.Tensor]:
    stream = SynthCaptionStream(ARCH, 64, render_size=64)
    items = [stream.item(i) for i in range(8)]
    return {
        "image": normalise_batch(torch.stack([it["image"] for it in items])),
        "text": torch.stack([it["text"] for it in items]),
    }


def _train(module: ClipPretrainModule, batch: dict, steps: int) -> list[float]:
    opt = module.configure_optimizers()
    for group in opt.param_groups:
        group["lr"] = 1e-3
    losses = []
    module.train()
    for _ in range(steps):
        loss = module.contrastive_loss(batch["image"], batch["text"])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses


def test_a_few_steps_lower_the_loss(batch: dict) -> None:
    module = ClipPretrainModule(PretrainConfig(arch=ARCH))
    losses = _train(module, batch, 12)
    assert np.mean(losses[-3:]) < np.mean(losses[:3]) - 0.1, losses


def test_lr_schedule_warms_up_and_decays_by_steps_or_time() -> None:
    cfg = PretrainConfig(warmup_steps=10, max_steps=100, min_lr_ratio=0.0)
    assert lr_factor(0, 0, cfg) == pytest.approx(0.1)
    assert lr_factor(9, 0, cfg) == pytest.approx(1.0)
    assert lr_factor(55, 0, cfg) == pytest.approx(0.5)
    assert lr_factor(100, 0, cfg) == pytest.approx(0.0, abs=1e-9)
    timed = PretrainConfig(warmup_steps=10, max_seconds=60.0, min_lr_ratio=0.0)
    assert lr_factor(50, 30.0, timed) == pytest.approx(0.5)
    assert lr_factor(50, 90.0, timed) == pytest.approx(0.0, abs=1e-9)


def test_export_loads_through_backbone_and_reproduces_encode_image(
    batch: dict, tmp_path: Path
) -> None:
    module = ClipPretrainModule(PretrainConfig(arch=ARCH))
    _train(module, batch, 3)
    model = module.model.eval()
    path = export_checkpoint(model, tmp_path, ARCH)
    assert path.name == f"{ARCH}.pt"
    assert read_sha256_file(tmp_path / f"{ARCH}.pt.sha256") == sha256_file(path)
    state = torch.load(path, weights_only=True)
    assert all(v.dtype == torch.float16 for v in state.values() if v.is_floating_point())
    backbone = build_backbone(BackboneSpec(ARCH, str(path)))
    assert next(backbone.model.parameters()).dtype == torch.float32
    rounded = copy.deepcopy(model)
    rounded.load_state_dict({k: v.float() for k, v in state.items()})
    x = batch["image"][:4]
    with torch.no_grad():
        ref, trained = rounded.encode_image(x), model.encode_image(x)
    got = backbone.encode_image(x)
    assert torch.allclose(got, ref, atol=1e-5)
    assert torch.allclose(got, trained, atol=2e-2 * float(trained.abs().max()))
    random = build_backbone(BackboneSpec(ARCH, None))
    assert not torch.allclose(random.encode_image(x), got, atol=1e-3)


def test_evaluation_functions_on_a_tiny_split() -> None:
    backbone = build_backbone(BackboneSpec(ARCH, None))
    config = validation_config(
        image_size=64, categories=("line_space",), n_train_good=0, n_test_good=3, n_per_defect=2
    )
    assert config.seed == 1  # the validation split, never the benchmark's test seed 0
    rendered = render_test_split(config)
    banks = zero_shot_banks(backbone, config, rendered=rendered)
    assert list(banks) == ["expert", "generic", "winclip"]
    for zs in banks.values():
        assert zs["n_images"] == 3 + 6 * 2
        assert set(zs["per_type"]) == set(config.defect_types)
        for value in (*zs["per_type"].values(), zs["seen"], zs["unseen"]):
            assert 0.0 <= value <= 1.0
    one = zero_shot_auroc(backbone, config, "generic", rendered=rendered)
    assert one == banks["generic"]
    # the three banks score differently (different texts, WinCLIP a two-way softmax)
    img = torch.nn.functional.normalize(backbone.encode_image(torch.zeros(1, 3, 64, 64)), dim=-1)
    scores = {b: bank_scores(backbone, img, rendered[:1], config, b)[0] for b in banks}
    assert len({round(float(v), 6) for v in scores.values()}) == 3, scores
    ret = retrieval_accuracy(backbone, 10, group=5, render_size=64)
    assert ret["n_pairs"] == 10 and ret["chance"] == pytest.approx(0.2)
    assert 0.0 <= ret["image_to_text_top1"] <= 1.0


def test_winclip_bank_score_is_the_methods_two_way_softmax() -> None:
    from semclip_bench.models.winclip import WinClip

    backbone = build_backbone(BackboneSpec(ARCH, None))
    config = validation_config(image_size=64, categories=("contact_array",))
    img = torch.nn.functional.normalize(torch.randn(4, backbone.embed_dim), dim=-1)
    rendered = [("contact_array", "good", None)] * 4
    got = bank_scores(backbone, img, rendered, config, "winclip")
    classes = ("good", *config.defect_types)
    method = WinClip(backbone, classes)
    empty = torch.zeros(0)
    method.setup_support(SupportSet({}, empty.long(), empty, classes, "contact_array"))
    assert method.prompt_object == "contact hole array on a wafer"
    expected = method._zero_shot_score(img)
    assert np.allclose(got, expected.numpy(), atol=1e-6)


def test_cli_pretrain_on_captions_csv(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    rows = []
    for i in range(8):
        cv2.imwrite(str(tmp_path / f"{i}.png"), rng.integers(0, 255, (40, 40), dtype=np.uint8))
        rows.append(f"{i}.png,lot A wafer {i} M1 recipe")
    csv_path = tmp_path / "captions.csv"
    csv_path.write_text("image_path,caption\n" + "\n".join(rows) + "\n", encoding="utf-8")
    out = tmp_path / "out"
    code = main(
        ["pretrain", "--data", str(csv_path), "--arch", ARCH, "--out", str(out), "--steps", "3",
         "--batch-size", "4", "--workers", "0", "--no-eval", "--accelerator", "cpu"]
    )  # fmt: skip
    assert code == 0
    for name in (f"{ARCH}.pt", f"{ARCH}.pt.sha256", "loss_curve.csv", "loss_curve.png",
                 "MODEL_CARD.md"):  # fmt: skip
        assert (out / name).is_file(), name
    summary = json.loads((out / "pretrain_summary.json").read_text())
    assert summary["steps"] == 3
    assert len((out / "loss_curve.csv").read_text().splitlines()) == 1 + 3
    assert "captions.csv" in (out / "MODEL_CARD.md").read_text()


def test_cli_pretrain_sem_synth_and_errors(tmp_path: Path, capsys) -> None:
    out = tmp_path / "synth"
    code = main(
        ["pretrain", "--data", "sem-synth", "--arch", ARCH, "--out", str(out), "--steps", "2",
         "--batch-size", "4", "--workers", "0", "--render-size", "64", "--no-eval",
         "--accelerator", "cpu"]
    )  # fmt: skip
    assert code == 0
    card = (out / "MODEL_CARD.md").read_text()
    assert "100000" in card and "scratch" in card and "infilm" in card
    assert main(["pretrain", "--data", "sem-synth", "--out", str(out), "--steps", "1",
                 "--synth-seed", "0"]) == 2  # fmt: skip
    assert "--synth-seed" in capsys.readouterr().err
    assert main(["pretrain", "--data", str(tmp_path / "x.csv"), "--out", str(out),
                 "--steps", "1"]) == 2  # fmt: skip
    assert main(["pretrain", "--data", "sem-synth", "--out", str(out)]) == 2


def test_cli_evaluate_a_checkpoint(tmp_path: Path, capsys) -> None:
    module = ClipPretrainModule(PretrainConfig(arch=ARCH))
    path = export_checkpoint(module.model, tmp_path, ARCH)
    out = tmp_path / "eval.json"
    code = main(
        ["pretrain", "evaluate", "--checkpoint", str(path), "--arch", ARCH, "--device", "cpu",
         "--n-test-good", "2", "--n-per-defect", "1", "--render-size", "64",
         "--retrieval-images", "8", "--json", str(out)]
    )  # fmt: skip
    assert code == 0
    result = json.loads(out.read_text())
    assert set(result) == {"pretrained", "random_init", "protocol"}
    assert result["protocol"]["zero_shot_config"]["seed"] == 1
    zero_shot = result["pretrained"]["zero_shot"]
    assert list(zero_shot) == ["expert", "generic", "winclip"]
    assert zero_shot["winclip"]["n_images"] == 3 * (2 + 6)
    assert set(zero_shot["expert"]["per_type"]) >= {"scratch", "infilm"}
    assert main(["pretrain", "evaluate", "--checkpoint", str(tmp_path / "none.pt")]) == 2
    assert "--checkpoint" in capsys.readouterr().err
    assert main(["pretrain", "evaluate", "--checkpoint", str(path), "--banks", "expert,nope"]) == 2
    assert "--banks" in capsys.readouterr().err


def test_cli_evaluate_updates_the_runs_card(tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    assert main(
        ["pretrain", "--data", "sem-synth", "--arch", ARCH, "--out", str(run), "--steps", "1",
         "--batch-size", "4", "--workers", "0", "--render-size", "64", "--no-eval",
         "--accelerator", "cpu"]
    ) == 0  # fmt: skip
    assert "| seen types (mean) |" not in (run / "MODEL_CARD.md").read_text()
    args = ["pretrain", "evaluate", "--arch", ARCH, "--device", "cpu", "--n-test-good", "2",
            "--n-per-defect", "1", "--render-size", "64", "--retrieval-images", "4",
            "--no-baseline", "--update-card", str(run)]  # fmt: skip
    other = export_checkpoint(ClipPretrainModule(PretrainConfig(arch=ARCH)).model, tmp_path, ARCH)
    assert main([*args, "--checkpoint", str(other)]) == 2  # not this run's file
    assert "sha256" in capsys.readouterr().err
    ckpt = run / f"{ARCH}.pt"
    assert main([*args, "--checkpoint", str(ckpt), "--note", "brought back in 2 parts"]) == 0
    summary = json.loads((run / "pretrain_summary.json").read_text())
    assert summary["sha256_verified"] is True
    assert set(summary["evaluation"]) == {"pretrained", "protocol"}
    card = (run / "MODEL_CARD.md").read_text()
    assert "| seen types (mean) |" in card and "pretrained / winclip" in card
    assert "brought back in 2 parts" in card and "validation split" in card


def test_cli_profile_data_measures_the_loader(tmp_path: Path, capsys) -> None:
    code = main(
        ["pretrain", "--arch", ARCH, "--out", str(tmp_path / "p"), "--steps", "1",
         "--batch-size", "4", "--workers", "0", "--render-size", "64", "--reuse", "2",
         "--profile-data", "0.5"]
    )  # fmt: skip
    assert code == 0
    assert "img/s" in capsys.readouterr().out
    assert not (tmp_path / "p").exists()


def test_model_card_reports_banks_seen_unseen_and_baseline(tmp_path: Path) -> None:
    from semclip_bench.pretrain.card import write_model_card

    def bank(seen: float) -> dict:
        per_type = {t: seen for t in ("bridge", "copper_residue", "hole", "particle")}
        per_type.update(scratch=0.55, infilm=0.56)
        return {"per_type": per_type, "seen": seen, "unseen": 0.555, "all": 0.6}

    def result(seen: float) -> dict:
        return {
            "zero_shot": {"expert": bank(seen), "generic": bank(seen - 0.1),
                          "winclip": bank(seen + 0.1)},
            "retrieval": {"image_to_text_top1": 0.3, "text_to_image_top1": 0.25,
                          "n_pairs": 1000, "group": 100, "chance": 0.01},
        }  # fmt: skip

    summary = {
        "arch": "semclip-vit-m16", "checkpoint": "semclip-vit-m16.pt", "sha256": "ab" * 32,
        "file_bytes": 24_289_075, "parameters": 12_109_537, "steps": 6000,
        "images_seen": 3_072_000, "batch_size": 512, "global_batch_size": 1024,
        "wall_seconds": 510.0, "warmup_steps": 300, "device": "2 x NVIDIA H200",
        "precision": "bf16-mixed", "final_loss": 1.23, "first_loss": 6.2,
        "options": {"data": "sem-synth", "synth_seed": 100000, "render_size": 256, "reuse": 4,
                    "augment": True, "lr": 8e-4, "weight_decay": 0.1, "warmup": 300, "seed": 0},
        "command": ["python", "-m", "semclip_bench", "pretrain", "--max-minutes", "8.5"],
        "evaluation": {"pretrained": result(0.81), "random_init": result(0.49),
                       "protocol": {"zero_shot_data": "sem-synth validation split, "
                                    "SynthConfig(seed=1)", "retrieval_seed": 900000}},
        "notes": ["split into 3 parts on the device"],
    }  # fmt: skip
    text = write_model_card(tmp_path / "MODEL_CARD.md", summary).read_text()
    header = (
        "| zero-shot iAUROC | pretrained / expert | pretrained / generic | pretrained / winclip "
        "| random_init / expert | random_init / generic | random_init / winclip |"
    )
    assert header in text
    assert "| seen types (mean) | 0.810 | 0.710 | 0.910 | 0.490 | 0.390 | 0.590 |" in text
    assert "| scratch (unseen) | 0.550 | 0.550 | 0.550 | 0.550 | 0.550 | 0.550 |" in text
    assert "| image->text top-1 | 0.300 | 0.300 |" in text
    assert "pretrain --max-minutes 8.5" in text and "split into 3 parts" in text
    assert "100000" in text and "scratch, infilm" in text and "2 x NVIDIA H200" in text
    assert "vision ViT 12 blocks x width 240" in text and "SynthConfig(seed=1)" in text
    assert "'jpeg'" in text and "Example captions" in text


# ------------------------------------------------------------------------ formula stage and --init
CPU_RUN = ["--arch", ARCH, "--steps", "2", "--batch-size", "4", "--workers", "0",
           "--render-size", "64", "--no-eval", "--accelerator", "cpu"]  # fmt: skip


def test_formula_module_trains_vision_and_head_only() -> None:
    from semclip_bench.pretrain.module import FormulaPretrainModule, MixedPretrainModule

    module = FormulaPretrainModule(PretrainConfig(arch=ARCH), classes=5, label_smoothing=0.1)
    trainable = {n for n, p in module.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith(("model.visual.", "head.")) for n in trainable)
    assert "head.weight" in trainable and not any(k.startswith("head") for k in
                                                  module.model.state_dict())  # fmt: skip
    optimised = {id(p) for g in module.configure_optimizers().param_groups for p in g["params"]}
    assert id(module.head.weight) in optimised
    x = torch.randn(6, 3, 64, 64)
    loss = module.classification_loss(x, torch.tensor([0, 1, 2, 3, 4, 0]))
    loss.backward()
    assert module.model.visual.conv1.weight.grad is not None and torch.isfinite(loss)
    mixed = MixedPretrainModule(PretrainConfig(arch=ARCH), classes=5, formula_weight=0.5)
    assert all(p.requires_grad for p in mixed.model.parameters())


def test_cli_formula_stage_then_sem_stage_from_its_checkpoint(tmp_path: Path) -> None:
    from semclip_bench.pretrain.module import create_clip

    s1, s2, s3 = tmp_path / "formula", tmp_path / "sem", tmp_path / "mixed"
    assert main(["pretrain", "--data", "formula", "--formula-classes", "7", "--out", str(s1),
                 *CPU_RUN]) == 0  # fmt: skip
    ckpt1 = s1 / f"{ARCH}.pt"
    summary1 = json.loads((s1 / "pretrain_summary.json").read_text())
    assert summary1["steps"] == 2 and summary1["sha256"] == sha256_file(ckpt1)
    formula = summary1["stage"]["formula"]
    assert summary1["stage"]["data"] == "formula" and formula["config"]["classes"] == 7
    assert len(formula["digest"]) == 64 and len(summary1["loss_curve"]) == 2
    card1 = (s1 / "MODEL_CARD.md").read_text()
    assert "Formula-driven supervised" in card1 and formula["digest"] in card1
    # the file loads as a backbone; the text tower is still the seeded random init
    state = torch.load(ckpt1, weights_only=True)
    assert not any(k.startswith("head") for k in state)
    build_backbone(BackboneSpec(ARCH, str(ckpt1)))
    init = create_clip(ARCH, 0).state_dict()
    assert torch.equal(state["token_embedding.weight"], init["token_embedding.weight"].half())
    assert not torch.equal(state["visual.conv1.weight"], init["visual.conv1.weight"].half())

    assert main(["pretrain", "--data", "sem-synth", "--init", str(ckpt1), "--out", str(s2),
                 *CPU_RUN]) == 0  # fmt: skip
    summary2 = json.loads((s2 / "pretrain_summary.json").read_text())
    assert summary2["stage"]["init"]["sha256"] == summary1["sha256"]
    assert summary2["previous_stage"]["sha256"] == summary1["sha256"]
    assert summary2["previous_stage"]["stage"]["formula"]["digest"] == formula["digest"]
    card2 = (s2 / "MODEL_CARD.md").read_text()
    assert "## Earlier stages" in card2 and "Stage -1: formula" in card2
    assert "- command: `" in card2 and summary1["sha256"] in card2

    # mixed objective, itself started from stage 2: the card lists both earlier stages
    assert main(["pretrain", "--data", "sem-synth", "--formula-weight", "0.5",
                 "--formula-classes", "7", "--init", str(s2 / f"{ARCH}.pt"), "--out", str(s3),
                 *CPU_RUN]) == 0  # fmt: skip
    summary3 = json.loads((s3 / "pretrain_summary.json").read_text())
    assert summary3["stage"]["formula"]["weight"] == 0.5
    assert summary3["previous_stage"]["previous_stage"]["sha256"] == summary1["sha256"]
    card3 = (s3 / "MODEL_CARD.md").read_text()
    assert "0.5 x formula classification" in card3 and "Stage -2: formula" in card3


def test_init_that_is_missing_or_of_another_arch_is_one_line(tmp_path: Path, capsys) -> None:
    out = str(tmp_path / "out")
    missing = tmp_path / "none.pt"
    assert main(["pretrain", "--init", str(missing), "--out", out, *CPU_RUN]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--init" in err and str(missing) in err
    state = ClipPretrainModule(PretrainConfig(arch=ARCH)).model.state_dict()
    state.pop("visual.proj")
    state["ln_final.weight"] = torch.ones(3)
    other = tmp_path / "other.pt"
    torch.save(state, other)
    assert main(["pretrain", "--init", str(other), "--out", out, *CPU_RUN]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--init" in err and str(other) in err
    assert "missing" in err and "shape" in err and not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (["--data", "formula", "--formula-classes", "1"], "--formula-classes"),
        (["--data", "formula", "--formula-seed", "-1"], "--formula-seed"),
        (["--data", "formula", "--label-smoothing", "1.5"], "--label-smoothing"),
        (["--data", "formula", "--formula-weight", "0.5"], "--formula-weight"),
        (["--formula-weight", "-1"], "--formula-weight"),
        (["--formula-weight", "nan"], "--formula-weight"),
        (["--formula-classes", "10"], "--formula-classes"),
        (["--data", "formuls"], "--data"),
        (["--data", "formula", "--reuse", "4"], "--reuse"),
    ],
)
def test_bad_formula_options_are_one_line_errors(
    args: list[str], option: str, tmp_path: Path, capsys
) -> None:
    assert main(["pretrain", *args, "--out", str(tmp_path / "o"), *CPU_RUN]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and option in err, err
