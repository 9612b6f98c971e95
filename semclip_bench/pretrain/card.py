"""MODEL_CARD.md of a pretrained checkpoint, written from the run summary."""

from __future__ import annotations

import math
import shlex
from pathlib import Path
from typing import Any

from semclip_bench.pretrain.captions import EXCLUDED_TYPES, SEEN_TYPES
from semclip_bench.pretrain.data import MIN_PRETRAIN_SEED, NORMAL_FRACTION, RETRIEVAL_SEED


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "n/a" if math.isnan(value) else f"{value:.3f}"
    return str(value)


def _evaluation_table(ev: dict[str, Any]) -> list[str]:
    names = [n for n in ("pretrained", "random_init") if n in ev]
    types = list(ev[names[0]]["zero_shot"]["per_type"])
    lines = [
        "| metric | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
    ]
    rows = [
        ("zero-shot iAUROC, seen types (mean)", lambda r: r["zero_shot"]["seen"]),
        ("zero-shot iAUROC, unseen types (mean)", lambda r: r["zero_shot"]["unseen"]),
        ("zero-shot iAUROC, all types (mean)", lambda r: r["zero_shot"]["all"]),
    ]
    rows += [
        (
            f"zero-shot iAUROC, {t} ({'unseen' if t in EXCLUDED_TYPES else 'seen'})",
            lambda r, t=t: r["zero_shot"]["per_type"][t],
        )
        for t in types
    ]
    rows += [
        ("retrieval image->text top-1", lambda r: r["retrieval"]["image_to_text_top1"]),
        ("retrieval text->image top-1", lambda r: r["retrieval"]["text_to_image_top1"]),
    ]
    for label, get in rows:
        lines.append(f"| {label} | " + " | ".join(_fmt(get(ev[n])) for n in names) + " |")
    return lines


def write_model_card(path: str | Path, summary: dict[str, Any]) -> Path:
    """Write the model card of a pretraining run (see :func:`run_pretrain` for ``summary``)."""
    o = summary["options"]
    synth = o["data"] == "sem-synth"
    command = " ".join(shlex.quote(a) for a in summary.get("command") or [])
    lines = [
        f"# {summary['arch']}: compact SEM-domain CLIP pretrained by semclip_bench",
        "",
        "Contrastive image-text pretraining from random init (open_clip model and ClipLoss, "
        "Lightning Trainer), with the project's own code; no external weights.",
        "",
        "## Model",
        f"- architecture: open_clip config `{summary['arch']}`, "
        f"{summary['parameters'] / 1e6:.2f} M parameters",
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
            "benchmark's sem-synth data uses seed 0, so no benchmark image is ever seen); each "
            "sample is a pure function of (seed, category, split, label, index)",
            f"- each render used {o['reuse']} time(s) on average (fresh augmentation and caption "
            "phrasing each time)",
            f"- rendered at {o['render_size']} px, resized to the model input; label mix "
            f"{NORMAL_FRACTION:.0%} normal, {1 - NORMAL_FRACTION:.0%} spread over the seen "
            f"defect types {', '.join(SEEN_TYPES)}",
            f"- held out: defect types {', '.join(EXCLUDED_TYPES)} are never rendered and never "
            "named in captions (checked in code), so evaluations report seen vs unseen types",
            "- captions from the render metadata (pattern family, pitch/CD, orientation, "
            "material, imaging conditions, defect type, size, rough location) in many phrasings",
            f"- augmentation: {'random 90-degree rotations and flips (captions follow)' if o['augment'] else 'none'}",  # noqa: E501
        ]
    else:
        lines += [f"- captions CSV `{o['data']}` (image_path, caption)"]
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
        "",
        "Reproduce:",
        "",
        "```",
        command or "python -m semclip_bench pretrain ...",
        "```",
        "",
    ]
    ev = summary.get("evaluation")
    lines += ["## Evaluation", ""]
    if ev:
        lines += [
            "Zero-shot: sem-synth benchmark test split (`SynthConfig()`, seed 0), expert prompt "
            "bank, image score = 1 - softmax(cos(image, class text) / 0.07)[good] over good + six "
            "defect types; iAUROC per category and type (type vs normal), mean over categories. "
            f"Retrieval: {ev['pretrained']['retrieval']['n_pairs']} held-out generated pairs "
            f"(data seed {RETRIEVAL_SEED}), top-1 within groups of "
            f"{ev['pretrained']['retrieval']['group']} (chance "
            f"{_fmt(ev['pretrained']['retrieval']['chance'])}). `random_init` is the same "
            "architecture with the backbone's seeded random init.",
            "",
            *_evaluation_table(ev),
            "",
        ]
    else:
        lines += ["Not evaluated in this run (`pretrain evaluate --checkpoint FILE`).", ""]
    lines += [
        "## Limitations",
        "- trained on synthetic SEM images only; real tools differ in noise, charging and "
        "pattern variety. Fine-tune on a fab archive with `--data captions.csv`.",
        "- a compact model: useful as an offline default, not a replacement for large CLIPs.",
        "",
    ]
    path = Path(path)
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


__all__ = ["write_model_card"]
