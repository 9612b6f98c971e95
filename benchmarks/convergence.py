"""Convergence check of a trainable method's training budget, on validation data.

Run: ``python -m benchmarks.convergence --method semclip --data sem-synth:val`` (``--help``).
For every (category, K, seed) episode (default K in {1, 20}) the method (a registered method or a
named variant of ``configs/methods``) is trained for 2E epochs, E = its config's ``epochs``
(or ``--epochs``), under the benchmark's budget rule (``TrainingConfig``) without its step floor,
so that E counts the epochs at every K. It prints

- the training loss of every epoch (``FewShotModule.history``: per-epoch mean over the support
  images), and
- the query iAUROC and pAUROC after E/4, E/2, E and 2E epochs,

then the means over categories and seeds per K: if E is on a plateau, the metrics at E and 2E
agree and the loss has flattened. The metrics are read from one 2E run at those epochs: with a
constant learning rate and a seeded data order, the model after e epochs of a 2E run is the model
of an e-epoch run. Use validation data only (``sem-synth:val``, or a user validation folder):
settings are never chosen on the test split. ``--out FILE`` also writes the report as Markdown.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from semclip_bench.errors import UserError


def _int_list(text: str) -> list[int]:
    from semclip_bench.runner.plan.config import parse_int_list

    try:
        return parse_int_list(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def checkpoints(epochs: int) -> list[int]:
    """The epochs E/4, E/2, E and 2E (at least 1, distinct, ascending)."""
    return sorted({max(1, epochs // 4), max(1, epochs // 2), epochs, 2 * epochs})


@dataclass
class Curve:
    """One episode's training curve and query metrics at the checkpoint epochs."""

    category: str
    shots: int
    seed: int
    n_support: int
    loss: list[float] = field(default_factory=list)
    metrics: dict[int, dict[str, float]] = field(default_factory=dict)  # epoch -> name -> value


def _predict(method, features: dict[str, torch.Tensor], batch_size: int):
    """Batched no-grad prediction of the query features (image scores, maps on the CPU)."""
    scores, maps = [], []
    n = next(iter(features.values())).shape[0]
    with torch.no_grad():
        for begin in range(0, n, batch_size):
            out = method.predict({k: v[begin : begin + batch_size] for k, v in features.items()})
            scores.append(out.image_score.float().cpu())
            maps.append(out.anomaly_map.float().cpu())
    return torch.cat(scores).numpy(), torch.cat(maps).numpy()


def _query_metrics(method, features, labels: np.ndarray, masks: np.ndarray, batch_size: int):
    """Exact iAUROC and pAUROC of the query set (NaN when undefined, e.g. no masks)."""
    from semclip_bench.metrics import image_auroc, pixel_auroc

    scores, maps = _predict(method, features, batch_size)
    return {"iAUROC": float(image_auroc(scores, labels)), "pAUROC": float(pixel_auroc(maps, masks))}


def _metric_callback(curve: Curve, wanted: list[int], evaluate_query):
    """A Lightning callback evaluating the query after each epoch in ``wanted``."""
    import lightning as L

    class _AtEpochs(L.Callback):
        def on_train_epoch_end(self, trainer, pl_module) -> None:
            epoch = trainer.current_epoch + 1
            if epoch not in wanted:
                return
            was_training = pl_module.training
            pl_module.eval()
            curve.metrics[epoch] = evaluate_query(pl_module.method)
            pl_module.train(was_training)

    return _AtEpochs()


def run_episode(method_cls, variant, training, wanted, backbone, cache, episode, device, batch):
    """Train one episode for ``training.epochs`` epochs, evaluating the query after the epochs in
    ``wanted``; the :class:`Curve` it gives."""
    from semclip_bench.models.base import SupportSet
    from semclip_bench.models.lightning import fit_method

    torch.manual_seed(episode.seed)
    method = method_cls(backbone, episode.class_names, **variant.options).to(device)
    method.eval()
    geometry = method.input_geometry(backbone)
    size, mean, std = geometry.size, geometry.mean, geometry.std
    support = method_cls.support_of(episode.normal_support, episode.defect_support_flat)
    index = {name: i for i, name in enumerate(episode.class_names)}
    support_features = cache.features(method, support, size, mean, std)
    support_set = SupportSet(
        features={k: v.to(device) for k, v in support_features.items()},
        labels=torch.tensor([index[s.label] for s in support], dtype=torch.long, device=device),
        masks=cache.masks(support, size).to(device),
        class_names=episode.class_names,
        category=episode.category,
    )
    query = list(episode.query)
    features = {k: v.to(device) for k, v in cache.features(method, query, size, mean, std).items()}
    labels = np.array([int(s.is_anomalous) for s in query])
    masks = cache.masks(query, size).numpy()
    curve = Curve(episode.category, episode.shots, episode.seed, len(support))
    callback = _metric_callback(
        curve, wanted, lambda m: _query_metrics(m, features, labels, masks, batch)
    )
    module = fit_method(
        method,
        support_set,
        training,
        seed=episode.seed,
        accelerator="gpu" if device.type == "cuda" else "cpu",
        devices=[device.index or 0] if device.type == "cuda" else 1,
        callbacks=[callback],
    )
    curve.loss = list(module.loss_history)
    return curve


def format_report(curves: list[Curve], label: str, epochs: int, command: str) -> str:
    """Markdown: per-episode loss curves and checkpoint metrics, then the means per K."""
    marks = checkpoints(epochs)
    lines = [f"# Convergence of `{label}` (E = {epochs} epochs)", "", f"Command: `{command}`", ""]
    for c in curves:
        lines.append(
            f"## {c.category}, K = {c.shots}, seed {c.seed} ({c.n_support} support images)"
        )
        lines.append("")
        losses = ", ".join(f"{v:.4f}" for v in c.loss)
        lines += [f"Training loss per epoch (1..{len(c.loss)}): {losses}", ""]
        lines += ["| epochs | loss | iAUROC | pAUROC |", "|---|---|---|---|"]
        for e in marks:
            m = c.metrics.get(e, {})
            lines.append(
                f"| {e} | {c.loss[e - 1]:.4f} | {m.get('iAUROC', float('nan')):.4f} | "
                f"{m.get('pAUROC', float('nan')):.4f} |"
            )
        lines.append("")
    lines += ["## Mean over categories and seeds", ""]
    lines += ["| K | epochs | loss | iAUROC | pAUROC | episodes |", "|---|---|---|---|---|---|"]
    for shots in sorted({c.shots for c in curves}):
        group = [c for c in curves if c.shots == shots]
        for e in marks:
            loss = np.mean([c.loss[e - 1] for c in group])
            i_auc = np.nanmean([c.metrics[e]["iAUROC"] for c in group])
            p_auc = np.nanmean([c.metrics[e]["pAUROC"] for c in group])
            lines.append(
                f"| {shots} | {e} | {loss:.4f} | {i_auc:.4f} | {p_auc:.4f} | {len(group)} |"
            )
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.convergence",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--method", default="semclip", help="trainable method or named variant")
    parser.add_argument("--data", default="sem-synth:val", help="validation dataset")
    parser.add_argument("--categories", default=None, help="comma-separated (default: all)")
    parser.add_argument("--shots", type=_int_list, default=[1, 20])
    parser.add_argument("--seeds", type=_int_list, default=[0])
    parser.add_argument("--epochs", type=int, default=None, help="E (default: the config's)")
    parser.add_argument("--backbone", default=None, help="open_clip model (default: the package's)")
    parser.add_argument("--pretrained", default=None, help="open_clip tag or checkpoint file")
    parser.add_argument("--image-size", type=int, default=None, help="input size override")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--batch-size", type=int, default=32, help="extraction/prediction batch")
    parser.add_argument("--out", type=Path, default=None, help="also write the report here")
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if args.categories:
        args.categories = [c.strip() for c in args.categories.split(",") if c.strip()]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=".*module\\(s\\) in eval mode.*")
    try:
        report = _run(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(report, end="")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(report)
    return 0


def _run(args: argparse.Namespace) -> str:
    from semclip_bench.backbones import BackboneSpec, build_backbone, default_backbone_spec
    from semclip_bench.data import load_dataset
    from semclip_bench.data.episodes import make_episode
    from semclip_bench.models import method_class
    from semclip_bench.models.lightning import TrainingConfig
    from semclip_bench.runner.execute.episode import no_uninitialized_fill
    from semclip_bench.runner.execute.features import FeatureCache
    from semclip_bench.runner.execute.processes import resolve_device
    from semclip_bench.runner.plan.config import load_variant

    variant = load_variant(args.method)
    method_cls = method_class(variant.method)
    if not method_cls.trainable:
        raise UserError(f"--method: {args.method} ({variant.method}) is not trainable")
    training = TrainingConfig(**variant.training)
    epochs = training.epochs if args.epochs is None else int(args.epochs)
    if epochs < 1:
        raise UserError(f"--epochs: need E >= 1, got {epochs}")
    # The curve is over epochs: no step floor, so E counts every epoch at every K.
    training = replace(training, epochs=2 * epochs, min_steps=0)
    dataset = load_dataset(args.data)
    categories = args.categories or dataset.categories()
    unknown = sorted(set(categories) - set(dataset.categories()))
    if unknown:
        raise UserError(f"--categories: unknown category '{unknown[0]}' in {dataset.name}")

    no_uninitialized_fill()
    device = resolve_device(args.device)
    default = default_backbone_spec()
    same = not args.backbone or args.backbone == default.name
    spec = BackboneSpec(
        name=args.backbone or default.name,
        pretrained=args.pretrained if args.pretrained is not None else (
            default.pretrained if same else None),
        image_size=args.image_size,
    )  # fmt: skip
    backbone = build_backbone(spec, device=device)
    cache = FeatureCache(device, batch_size=args.batch_size)
    curves = []
    for category in categories:
        for shots in args.shots:
            for seed in args.seeds:
                episode = make_episode(dataset, category, shots, seed)
                if episode.skipped:
                    print(f"skipped {category} K={shots} seed {seed}: {episode.skipped}")
                    continue
                curves.append(
                    run_episode(
                        method_cls, variant, training, checkpoints(epochs), backbone, cache,
                        episode, device, args.batch_size,
                    )
                )  # fmt: skip
    if not curves:
        raise UserError("no episode could be formed (see the skipped lines above)")
    command = "python -m benchmarks.convergence " + shlex.join(args.argv)
    return format_report(curves, args.method, epochs, command)


if __name__ == "__main__":
    raise SystemExit(main())
