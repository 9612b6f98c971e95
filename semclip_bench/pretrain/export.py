"""Export of a pretrained model: fp16 state dict, its sha256, loss curve (CSV + PNG)."""

from __future__ import annotations

import csv
import hashlib
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

#: Largest size of a shipped checkpoint file, in bytes.
MAX_SHIPPED_BYTES = 25_000_000


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def read_sha256_file(path: str | Path) -> str:
    """The digest in a ``sha256sum``-style file (first word)."""
    return Path(path).read_text(encoding="utf-8").split()[0].strip().lower()


def export_checkpoint(model: nn.Module, out_dir: str | Path, arch: str) -> Path:
    """Write ``<out_dir>/<arch>.pt`` (plain fp16 state dict of the open_clip model) and
    ``<arch>.pt.sha256`` (``sha256sum`` format); returns the checkpoint path.

    Floating tensors are stored as fp16 (the backbone loader casts them back to the model's
    dtype); other tensors keep their dtype.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = {
        k: (v.detach().cpu().half() if v.is_floating_point() else v.detach().cpu()).contiguous()
        for k, v in model.state_dict().items()
    }
    path = out / f"{arch}.pt"
    tmp = path.with_suffix(".pt.tmp")
    torch.save(state, tmp)
    tmp.replace(path)
    digest = sha256_file(path)
    (out / f"{arch}.pt.sha256").write_text(f"{digest}  {path.name}\n", encoding="utf-8")
    return path


def write_loss_curve(
    history: Sequence[tuple[int, float]], out_dir: str | Path, ylabel: str | None = None
) -> list[Path]:
    """Write ``loss_curve.csv`` (step, loss) and ``loss_curve.png`` (y axis ``ylabel``, default
    the contrastive loss); returns the written paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    csv_path = out / "loss_curve.csv"
    with csv_path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["step", "loss"])
        writer.writerows((int(s), f"{float(v):.6f}") for s, v in history)
    paths = [csv_path]
    if history:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import numpy as np

        steps = np.array([s for s, _ in history], dtype=float)
        loss = np.array([v for _, v in history], dtype=float)
        fig, ax = plt.subplots(figsize=(6, 3.5), dpi=120)
        ax.plot(steps, loss, lw=0.6, alpha=0.4, label="loss per step")
        window = max(1, len(loss) // 50)
        if window > 1:
            smooth = np.convolve(loss, np.ones(window) / window, mode="valid")
            ax.plot(steps[window - 1 :], smooth, lw=1.5, label=f"mean of {window} steps")
        ax.set_xlabel("step")
        ax.set_ylabel(ylabel or "contrastive loss (ClipLoss)")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        png = out / "loss_curve.png"
        fig.savefig(png)
        plt.close(fig)
        paths.append(png)
    return paths


__all__ = [
    "MAX_SHIPPED_BYTES",
    "export_checkpoint",
    "read_sha256_file",
    "sha256_file",
    "write_loss_curve",
]
