"""Weights & Biases logging through Lightning's WandbLogger: one run per episode.

Never prompts, never blocks and never fails a sweep: with no API key the mode is offline; any
error from wandb disables logging for the rest of the run with a single warning.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

MODES = ("auto", "online", "offline", "disabled")


def resolve_mode(mode: str) -> str:
    """``auto`` is online when an API key is configured, otherwise offline."""
    if mode not in MODES:
        from semclip_bench.errors import UserError

        raise UserError(f"--wandb: unknown mode '{mode}'; choose from {', '.join(MODES)}")
    if mode != "auto":
        return mode
    if os.environ.get("WANDB_MODE") in {"disabled", "offline", "online"}:
        return os.environ["WANDB_MODE"]
    has_key = bool(os.environ.get("WANDB_API_KEY")) or _netrc_has_wandb()
    return "online" if has_key else "offline"


def _netrc_has_wandb() -> bool:
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    try:
        return "api.wandb.ai" in netrc.read_text()
    except OSError:
        return False


class Tracker:
    """Creates one WandbLogger per episode and logs its config, metrics and a few overlays."""

    def __init__(self, mode: str, project: str, save_dir: Path) -> None:
        self.mode = resolve_mode(mode)
        self.project = project
        self.save_dir = Path(save_dir)
        self.enabled = self.mode != "disabled"
        self.summary_rows: list[dict[str, Any]] = []
        if self.enabled:
            try:
                import wandb  # noqa: F401
            except Exception as exc:  # wandb missing or broken: the sweep goes on
                self._disable(exc)

    def _disable(self, exc: BaseException) -> None:
        if self.enabled:
            log.warning("W&B logging disabled for this run: %s", str(exc).splitlines()[0])
        self.enabled = False

    def start(self, name: str, group: str, config: dict[str, Any]):
        """A WandbLogger for one episode (or None when disabled)."""
        if not self.enabled:
            return None
        try:
            from lightning.pytorch.loggers import WandbLogger

            self.save_dir.mkdir(parents=True, exist_ok=True)
            os.environ.setdefault("WANDB_SILENT", "true")
            logger = WandbLogger(
                name=name,
                project=self.project,
                group=group,
                save_dir=str(self.save_dir),
                offline=self.mode == "offline",
                config=config,
                reinit="finish_previous",
                settings=_settings(),
            )
            _ = logger.experiment  # start the run now, so errors surface here
            return logger
        except Exception as exc:
            self._disable(exc)
            return None

    def log_history(self, logger, history: dict[str, list[float]]) -> None:
        """Log a training curve after the fit (one point per epoch per loss term), for episodes
        of a stacked fit, whose fit could not log to each episode's own run as it went."""
        if logger is None or not history:
            return
        try:
            for epoch in range(max(len(v) for v in history.values())):
                values = {f"train/{k}": v[epoch] for k, v in history.items() if epoch < len(v)}
                logger.log_metrics({**values, "epoch": epoch}, step=epoch)
        except Exception as exc:
            self._disable(exc)

    def finish(
        self,
        logger,
        metrics: dict[str, float],
        overlays: list[tuple[np.ndarray, np.ndarray, str]] | None = None,
    ) -> None:
        """Log final metrics (and overlay images), then close the episode's run."""
        if logger is None:
            return
        try:
            import wandb

            finite = {f"test/{k}": v for k, v in metrics.items() if isinstance(v, (int, float))}
            logger.log_metrics(finite)
            if overlays:
                logger.experiment.log(
                    {
                        "test/anomaly_maps": [
                            wandb.Image(img, caption=cap) for img, _, cap in overlays
                        ]
                    }
                )
            logger.experiment.finish()
        except Exception as exc:
            self._disable(exc)

    def log_summary(self, table_rows: list[dict[str, Any]], name: str) -> None:
        """One extra run holding the summary table of the whole sweep."""
        if not self.enabled or not table_rows:
            return
        try:
            import wandb

            run = wandb.init(
                project=self.project,
                name=f"{name}-summary",
                group=f"{name}-summary",
                dir=str(self.save_dir),
                mode=self.mode,
                reinit="finish_previous",
                settings=_settings(),
            )
            columns = list(table_rows[0])
            table = wandb.Table(columns=columns, data=[[r[c] for c in columns] for r in table_rows])
            run.log({"summary": table})
            run.finish()
        except Exception as exc:
            self._disable(exc)


def _settings():
    import wandb

    return wandb.Settings(console="off", silent=True, x_disable_stats=True)


def overlay(image: np.ndarray, anomaly_map: np.ndarray) -> np.ndarray:
    """RGB uint8 picture of ``image`` (H, W, 3 in [0, 1]) with a red heat overlay of the map."""
    heat = anomaly_map - anomaly_map.min()
    heat = heat / (heat.max() + 1e-12)
    rgb = np.clip(image, 0.0, 1.0).copy()
    rgb[..., 0] = np.clip(0.5 * rgb[..., 0] + 0.5 * heat, 0.0, 1.0)
    return (rgb * 255).astype(np.uint8)
