"""Scoring an episode: exact metrics of its outputs into its row, optionally overlapped.

:func:`score_episode` turns one episode's outputs into the metric columns of its row;
:class:`Scorer` runs those calls in episode order, on one background thread when allowed, so the
CPU-side metric work of an episode overlaps the next episode's fitting and prediction.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np
import torch

from semclip_bench.models.base import MethodOutput
from semclip_bench.runner.record.row_store import METRIC_COLUMNS, SCORES_KEY

#: Score an episode (exact metrics) on a background thread while the next episode fits and
#: predicts. Rows are still appended in episode order, each once its metrics are done.
OVERLAP_SCORING = True


class Scorer:
    """Runs each episode's scoring call, in order, on one background thread when allowed.

    ``submit`` returns the rows finished by now, oldest first: with background scoring, the
    previous episode's row (its metrics ran while this episode fitted and predicted); otherwise
    this episode's row. At most one episode waits for its metrics, so an interrupted run loses at
    most the episode being scored and the one in flight.
    """

    def __init__(self, background: bool) -> None:
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="scoring") if background else None
        self._pending: Future | None = None

    def submit(
        self, row: dict[str, Any], score: Callable[[], dict[str, Any]] | None, in_background: bool
    ) -> list[dict[str, Any]]:
        future = None
        if score is not None and in_background and self._pool is not None:
            future = self._pool.submit(score)  # queued behind the previous episode's scoring
        finished = self._drain()
        if future is not None:
            self._pending = future
        else:
            finished.append(score() if score is not None else row)
        return finished

    def _drain(self) -> list[dict[str, Any]]:
        if self._pending is None:
            return []
        pending, self._pending = self._pending, None
        return [pending.result()]

    def close(self) -> list[dict[str, Any]]:
        """The last pending row (if any); stops the thread."""
        try:
            return self._drain()
        finally:
            if self._pool is not None:
                self._pool.shutdown(wait=True)


def score_episode(
    *,
    row: dict[str, Any],
    outputs: MethodOutput,
    query: Sequence,
    truth,
    masks_reason: str | None = None,
    class_index: dict[str, int],
    method_name: str,
    produces_maps: bool,
    device: torch.device,
    stages,
) -> dict[str, Any]:
    """Exact metrics of one episode's outputs into its row (may run on the scoring thread).

    ``truth`` is the query masks' side of the pixel metrics (None when the query lacks masks:
    ``masks_reason`` then says why, and the pixel metrics read n/a).

    On CUDA the maps are still on the GPU: the pixel metrics sort and reduce them there and only
    the metric values come back. On the CPU the numpy path runs (the rows of results/sweep).
    """
    from semclip_bench.metrics import NotAvailable, evaluate

    t0 = time.perf_counter()
    labels = np.array([int(s.is_anomalous) for s in query])
    maps = None
    if produces_maps:
        maps = outputs.anomaly_map if device.type == "cuda" else outputs.anomaly_map.numpy()
    metrics = evaluate(
        outputs.image_score.numpy(),
        labels,
        maps=maps,
        types=[s.label for s in query],
        class_pred=None
        if outputs.class_logits is None
        else outputs.class_logits.argmax(dim=1).numpy(),
        class_target=np.array([class_index[s.label] for s in query]),
        num_classes=len(class_index),
        device=device if device.type == "cuda" else None,
        pixel_truth=truth,
        masks_reason=masks_reason,
    )
    row[SCORES_KEY] = episode_scores(outputs, query, labels, truth, maps, class_index)
    stages.add("metrics", time.perf_counter() - t0)

    reasons: dict[str, str] = {}
    per_type: dict[str, float | None] = {}
    for key, value in metrics.items():
        if isinstance(value, NotAvailable):
            reasons[key] = value.reason
        if key.startswith("iAUROC/"):
            per_type[key.split("/", 1)[1]] = None if np.isnan(value) else float(value)
    for column in METRIC_COLUMNS:
        if column in {"pAUROC", "pF1max", "AUPRO"} and not produces_maps:
            reasons[column] = f"{method_name} produces no anomaly maps"
        if column.startswith("cls_") and outputs.class_logits is None:
            reasons[column] = f"{method_name} does not classify defect types"
        value = metrics.get(column)
        row[column] = float("nan") if value is None else float(value)
    row.update(
        status="ok",
        n_query=len(query),
        n_query_normal=int((labels == 0).sum()),
        n_query_defect=int(labels.sum()),
        per_type_auroc=per_type,
        na_reasons=reasons,
    )
    return row


def episode_scores(
    outputs: MethodOutput,
    query: Sequence,
    labels: np.ndarray,
    truth,
    maps,
    class_index: dict[str, int],
):
    """The per-image statistics of an episode that ``report`` bootstraps (``scores/*.npz``):
    image scores, labels, types, class logits and, with maps and masks, the pixel histograms."""
    from semclip_bench.metrics.bootstrap import EpisodeScores, pixel_statistics

    stats = EpisodeScores(
        image_score=outputs.image_score.numpy().astype(np.float64),
        label=labels.astype(np.int8),
        types=np.array([s.label for s in query], dtype=str),
        class_names=list(class_index),
        class_logits=None
        if outputs.class_logits is None
        else outputs.class_logits.numpy().astype(np.float32),
    )
    if maps is not None and truth is not None and truth.regions is not None:
        stats.edges, stats.normal_hist, stats.region_hist, stats.region_image = pixel_statistics(
            maps, truth
        )
    return stats
