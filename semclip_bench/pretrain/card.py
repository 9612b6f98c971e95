"""MODEL_CARD.md of a pretrained checkpoint, written from the run summary."""

from __future__ import annotations

import math
import shlex
from pathlib import Path
from typing import Any

import numpy as np

from semclip_bench.data.labels import EXCLUDED_TYPES, NORMAL_LABEL, SEEN_TYPES
from semclip_bench.pretrain.captions import caption_from_meta
from semclip_bench.pretrain.data import (
    DEFAULT_PRETRAIN_SEED,
    MIN_PRETRAIN_SEED,
    NORMAL_FRACTION,
    RETRIEVAL_SEED,
)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "n/a" if math.isnan(value) else f"{value:.3f}"
    return str(value)


def _architecture(arch: str) -> str:
    """One line on the towers of open_clip config ``arch`` ("" when unknown)."""
    import open_clip

    import semclip_bench.backbones  # noqa: F401 - registers the project's model configs

    cfg = open_clip.get_model_config(arch)
    if not cfg:
        return ""
    v, t = cfg["vision_cfg"], cfg["text_cfg"]
    return (
        f"vision ViT {v['layers']} blocks x width {v['width']}, patch {v['patch_size']}, "
        f"{v['image_size']} px input; text transformer {t['layers']} blocks x width "
        f"{t['width']} (vocabulary {t.get('vocab_size', 49408)}, context "
        f"{t.get('context_length', 77)}); joint embedding {cfg['embed_dim']}"
    )


def example_captions(n_each: int = 2, seed: int = DEFAULT_PRETRAIN_SEED) -> list[str]:
    """Captions of the first ``n_each`` normal and defect renders of the pretraining stream."""
    from semclip_bench.data.synth import SynthConfig
    from semclip_bench.pretrain.data import render_sample, sample_plan

    config = SynthConfig(seed=seed)
    rng = np.random.default_rng(0)
    normal: list[str] = []
    defect: list[str] = []
    i = 0
    while len(normal) < n_each or len(defect) < n_each:
        target = normal if sample_plan(seed, i)[2] == NORMAL_LABEL else defect
        if len(target) < n_each:
            target.append(caption_from_meta(render_sample(config, i)[1], rng))
        i += 1
    return normal + defect


def _vocabulary_lines() -> list[str]:
    from semclip_bench.pretrain.vocabulary import checked_words, unchecked_words

    checked = checked_words()
    total = len({w for ws in checked.values() for w in ws})
    left_out = ", ".join(f"'{w}' ({why})" for w, why in unchecked_words().items())
    return [
        "- captions are written from the render metadata in varied plain English with a "
        "method-neutral vocabulary: domain terms (pattern family, pitch/CD, orientation, "
        "material, defect type names, size, location, imaging conditions) and the generic "
        "normal / anomalous words of anomaly detection (flawless, perfect, unblemished, intact, "
        "good, without flaw/defect/damage ...; damaged, flaw, defect, broken, anomaly, "
        "abnormal ...)",
        f"- all {total} words of the shipped prompt banks' normal and seen-type state phrases, "
        "WinCLIP's states and object names, AnomalyCLIP's prompt words and the banks' templates "
        f"occur in the captions; left out: {left_out or 'none'}. No bank sentence, template or "
        "multi-word state phrase is copied verbatim (a draw that would is redrawn). Both are "
        "checked by `tests/pretrain/test_captions.py`",
    ]


def _zero_shot_table(ev: dict[str, Any]) -> list[str]:
    names = [n for n in ("pretrained", "random_init") if n in ev]
    banks = list(ev[names[0]]["zero_shot"])
    types = list(ev[names[0]]["zero_shot"][banks[0]]["per_type"])
    cols = [(n, b) for n in names for b in banks]
    lines = [
        "| zero-shot iAUROC | " + " | ".join(f"{n} / {b}" for n, b in cols) + " |",
        "|---|" + "---:|" * len(cols),
    ]
    rows: list[tuple[str, Any]] = [
        ("seen types (mean)", lambda z: z["seen"]),
        ("unseen types (mean)", lambda z: z["unseen"]),
        ("all types (mean)", lambda z: z["all"]),
    ]
    rows += [
        (
            f"{t} ({'unseen' if t in EXCLUDED_TYPES else 'seen'})",
            lambda z, t=t: z["per_type"][t],
        )
        for t in types
    ]
    for label, get in rows:
        cells = [_fmt(get(ev[n]["zero_shot"][b])) for n, b in cols]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


def _retrieval_table(ev: dict[str, Any]) -> list[str]:
    names = [n for n in ("pretrained", "random_init") if n in ev]
    lines = ["| retrieval | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for label, key in (("image->text top-1", "image_to_text_top1"),
                       ("text->image top-1", "text_to_image_top1")):  # fmt: skip
        lines.append(
            f"| {label} | " + " | ".join(_fmt(ev[n]["retrieval"][key]) for n in names) + " |"
        )
    return lines


def _evaluation_lines(ev: dict[str, Any]) -> list[str]:
    protocol = ev.get("protocol", {})
    retrieval = ev["pretrained"]["retrieval"]
    data = protocol.get("zero_shot_data", "sem-synth validation split")
    config = protocol.get("zero_shot_config", {})
    sizes = (
        f" ({config['n_test_good']} normal and {config['n_per_defect']} per defect type test "
        "images per category)"
        if "n_test_good" in config
        else ""
    )
    return [
        f"Zero-shot: {data}{sizes}; the benchmark's test split (seed 0) is not used. Prompt "
        "banks as their methods use them: `expert` and `generic`: class texts of good + six "
        "defect types, image score = 1 - softmax(cos(image, class text) / 0.07)[good]; "
        "`winclip`: WinCLIP's compositional normal / anomalous ensemble with the category's "
        "object name, image score = softmax(cos(image, [normal, anomalous]) / 0.07)[anomalous]. "
        "iAUROC per category and type (type vs normal), mean over categories. "
        f"Retrieval: {retrieval['n_pairs']} held-out generated pairs (data seed "
        f"{protocol.get('retrieval_seed', RETRIEVAL_SEED)}), top-1 within groups of "
        f"{retrieval['group']} (chance {_fmt(retrieval['chance'])}). `random_init` is the same "
        "architecture with the backbone's seeded random init.",
        "",
        *_zero_shot_table(ev),
        "",
        *_retrieval_table(ev),
        "",
    ]


def _formula_lines(formula: dict[str, Any]) -> list[str]:
    """Data lines of the formula images of a stage (see ``train.stage_record``)."""
    c = formula["config"]
    return [
        f"- formula images (FractalDB-style, rendered on the fly): {c['classes']} classes, each a "
        f"random IFS of {c['min_maps']}-{c['max_maps']} contractive 2-D affine maps drawn from "
        f"seed ({c['seed']}, class), redrawn until its attractor fills >= "
        f"{c['fill_threshold']:g} of a {c['fill_grid']} x {c['fill_grid']} grid; instances vary "
        f"one map by +-{c['jitter']:g}, the point patch and the brightness; chaos game with "
        f"{c['chains']} parallel points x {c['iterations']} iterations, {c['render_size']} px gray",
        f"- formula data digest (generator code, NumPy, config) `{formula['digest']}`",
        f"- classification: linear head on the image embedding (not exported), cross-entropy "
        f"with label smoothing {formula['label_smoothing']:g}; loss weight {formula['weight']:g}",
    ]


def _stage_summary_lines(summary: dict[str, Any], depth: int = 1) -> list[str]:
    """One paragraph per earlier stage (``previous_stage``, recursively)."""
    stage = summary.get("stage") or {"data": summary["options"]["data"],
                                     "objective": "contrastive (ClipLoss)"}  # fmt: skip
    command = " ".join(shlex.quote(a) for a in summary.get("command") or [])
    lines = [
        f"### Stage -{depth}: {stage['data']}, {stage['objective']}",
        "",
        f"- file `{summary['checkpoint']}`, sha256 `{summary['sha256']}`",
        f"- steps {summary['steps']}, batch size {summary['batch_size']} per device, images seen "
        f"{summary['images_seen']:,}, wall time {summary['wall_seconds']:.0f} s on "
        f"{summary['device']}",
        f"- loss: first step {_fmt(summary['first_loss'])}, final {_fmt(summary['final_loss'])}",
    ]
    if stage.get("formula"):
        lines += _formula_lines(stage["formula"])
    if stage.get("init"):
        lines.append(f"- started from `{stage['init']['file']}` (sha256 {stage['init']['sha256']})")
    lines += [f"- command: `{command}`" if command else "- command: not recorded", ""]
    previous = summary.get("previous_stage")
    if previous:
        lines += _stage_summary_lines(previous, depth + 1)
    return lines


def write_model_card(path: str | Path, summary: dict[str, Any]) -> Path:
    """Write the model card of a pretraining run (see :func:`run_pretrain` for ``summary``)."""
    o = summary["options"]
    synth = o["data"] == "sem-synth"
    stage = summary.get("stage") or {}
    formula = stage.get("formula")
    command = " ".join(shlex.quote(a) for a in summary.get("command") or [])
    arch_line = _architecture(summary["arch"])
    if stage.get("data") == "formula":
        intro = (
            "Formula-driven supervised pretraining (FractalDB-style IFS classes; open_clip "
            "vision tower with a linear head, cross-entropy, Lightning Trainer), with the "
            "project's own code; no external data or weights. The text tower keeps its seeded "
            "random init."
        )
    else:
        intro = (
            "Contrastive image-text pretraining from random init (open_clip model and ClipLoss, "
            "Lightning Trainer), with the project's own code; no external weights."
        )
        if formula:
            intro += f" Objective: {stage['objective']}."
    if stage.get("init"):
        intro = intro.replace("from random init", "from an earlier stage's checkpoint")
    lines = [
        f"# {summary['arch']}: compact SEM-domain CLIP pretrained by semclip_bench",
        "",
        intro,
        "",
        "## Model",
        f"- architecture: open_clip config `{summary['arch']}`, "
        f"{summary['parameters'] / 1e6:.2f} M parameters" + (f"; {arch_line}" if arch_line else ""),
        f"- file: `{Path(summary['checkpoint']).name}`, fp16 state dict, "
        f"{summary['file_bytes']:,} bytes, sha256 `{summary['sha256']}`",
        f'- load: `BackboneSpec(name="{summary["arch"]}", pretrained="<path to file>")`',
        "",
        "## Data",
    ]
    if synth:
        lines += [
            "- sem-synth images rendered on the fly (procedural SEM simulator of this project), "
            f"data seed {o['synth_seed']} (pretraining seeds are >= {MIN_PRETRAIN_SEED}; the "
            "benchmark's sem-synth test split uses seed 0 and its validation split seed 1, so no "
            "benchmark image is ever seen); each sample is a pure function of (seed, category, "
            "split, label, index)",
            f"- each render used {o['reuse']} time(s) on average (fresh augmentation and caption "
            "phrasing each time)",
            f"- rendered at {o['render_size']} px, resized to the model input; label mix "
            f"{NORMAL_FRACTION:.0%} normal, {1 - NORMAL_FRACTION:.0%} spread over the seen "
            f"defect types {', '.join(SEEN_TYPES)}",
            f"- held out: defect types {', '.join(EXCLUDED_TYPES)} are never rendered and never "
            "named in captions (checked in code), so evaluations report seen vs unseen types",
            *_vocabulary_lines(),
            f"- augmentation: {'random 90-degree rotations and flips (captions follow)' if o['augment'] else 'none'}",  # noqa: E501
            "",
            "Example captions (first normal and defect renders of the stream):",
            "",
            *(f'- "{c}"' for c in example_captions()),
        ]
    elif o["data"] != "formula":
        lines += [f"- captions CSV `{o['data']}` (image_path, caption)"]
    if formula:
        lines += (["", "Formula data (with every step):"] if synth else []) + _formula_lines(
            formula
        )
    lines += [
        "",
        "## Training",
        f"- steps: {summary['steps']}, batch size {summary['batch_size']} per device "
        f"(global {summary['global_batch_size']}), images seen {summary['images_seen']:,}",
        f"- AdamW lr {o['lr']:g}, weight decay {o['weight_decay']:g}, "
        f"warmup {summary.get('warmup_steps', o['warmup'])} steps "
        "then cosine (progress = max of step and wall-clock fractions), grad clip 1.0",
        f"- precision {summary['precision']}, device {summary['device']}, "
        f"wall time {summary['wall_seconds']:.0f} s",
        f"- loss: first step {_fmt(summary['first_loss'])}, final (mean of last steps) "
        f"{_fmt(summary['final_loss'])}; curve in `loss_curve.csv` / `loss_curve.png`",
        f"- seed {o['seed']}",
        *(
            [f"- init: `{stage['init']['file']}` (sha256 `{stage['init']['sha256']}`)"]
            if stage.get("init")
            else []
        ),
        "",
        "Reproduce:",
        "",
        "```",
        command or "python -m semclip_bench pretrain ...",
        "```",
        "",
    ]
    if stage.get("init"):
        previous = summary.get("previous_stage")
        lines += ["## Earlier stages", ""]
        lines += (
            _stage_summary_lines(previous)
            if previous
            else ["The init checkpoint's summary was not next to it; stages not recorded.", ""]
        )
    lines += [
        "## Evaluation",
        "",
    ]
    ev = summary.get("evaluation")
    if ev:
        lines += _evaluation_lines(ev)
    else:
        lines += ["Not evaluated in this run (`pretrain evaluate --checkpoint FILE`).", ""]
    notes = list(summary.get("notes") or [])
    if summary.get("sha256_verified"):
        notes.append(
            "The evaluation above ran on this file after `pretrain evaluate --update-card` "
            "checked that its sha256 equals the digest the training run wrote into "
            "`pretrain_summary.json`."
        )
    if notes:
        lines += ["## How this file was produced", "", *(f"- {n}" for n in notes), ""]
    lines += [
        "## Limitations",
        "- trained on synthetic SEM images only; real tools differ in noise, charging and "
        "pattern variety. Fine-tune on a fab archive with `--data captions.csv`."
        if stage.get("data") != "formula"
        else "- trained on formula renders only (no SEM image, no caption): a first stage to "
        "continue with `--init` on sem-synth or a captions CSV; its text tower is untrained.",
        "- a compact model: useful as an offline default, not a replacement for large CLIPs.",
        "",
    ]
    path = Path(path)
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


__all__ = ["example_captions", "write_model_card"]
