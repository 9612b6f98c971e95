"""Train the heads of several episodes as one stacked module (one Lightning fit, one optimiser).

Episodes that share a method variant and a support size (the runner groups every seed and every
category of one (variant, K) with the same number of classes) differ in their support images,
class prompts, initial head and shuffling order, not in shapes. Their heads are independent
problems of identical shape, so they are trained as one stack: every trainable parameter
gets a leading member dimension, one step evaluates every member's loss with ``torch.func.vmap``
over that dimension and back-propagates their sum (member ``i``'s gradient is that of its own
loss: the members share no parameter). AdamW is elementwise, so the stacked optimiser is each
member's own. Each member keeps its own batches: its own seeded :class:`DataLoader`, exactly as
:func:`~semclip_bench.models.lightning.fit_method` builds it, iterated in lockstep with the others.

What differs from training each alone: kernels see S problems at once (batched matrix products
instead of single ones), so results can differ from :func:`fit_method` in the last bits, which
training may amplify; they are deterministic given the group (the runner always trains the same
group for an episode: every seed and category of the run, also when resuming or verifying; so
a run over fewer seeds or categories can differ from it in those last bits). Attention runs in
its math form here (see :func:`fit_methods_stacked`), and two ops that vmap batches badly take
another form of the same formula when :func:`~semclip_bench.backbones.clip.is_vmapped` says they
run here: the text tower's attention (``backbones/clip.py``) and the bilinear resize of maps
(``models/common.upsample_maps``). A method opts in by declaring
``trains_stacked = True``: its ``training_loss`` must be free of data-dependent Python control
flow (no ``bool(tensor)`` / ``.item()`` on anything that differs between members).
"""

from __future__ import annotations

from collections.abc import Sequence

import lightning as L
import torch
from lightning.pytorch.utilities import CombinedLoader
from torch import Tensor, nn
from torch.func import functional_call, vmap
from torch.nn.attention import SDPBackend, sdpa_kernel

from semclip_bench.errors import UserError
from semclip_bench.models.base import Features, FewShotMethod, SupportSet
from semclip_bench.models.lightning import (
    FewShotModule,
    TrainingConfig,
    expected_fit_warnings,
    support_loader,
    support_trainer,
)


def can_fit_stacked(methods: Sequence[FewShotMethod], supports: Sequence[SupportSet]) -> bool:
    """Whether ``methods`` (one per support set) can be trained as one stack: two or more, one
    class that opts in, the same trainable parameter shapes and support sizes."""
    if len(methods) < 2 or len(methods) != len(supports):
        return False
    first = methods[0]
    if not first.trains_stacked or not first.trainable:
        return False
    shapes = [_trainable_shapes(m) for m in methods]
    sizes = {len(s.labels) for s in supports}
    return (
        all(type(m) is type(first) for m in methods)
        and len(sizes) == 1
        and sizes != {0}
        and all(s == shapes[0] for s in shapes)
    )


def _trainable_names(method: FewShotMethod) -> list[str]:
    """Names of the parameters ``trainable_parameters()`` returns, in that order."""
    wanted = {id(p) for p in method.trainable_parameters()}
    return [name for name, p in method.named_parameters() if id(p) in wanted]


def _trainable_shapes(method: FewShotMethod) -> list[tuple[str, tuple[int, ...]]]:
    params = dict(method.named_parameters())
    return [(n, tuple(params[n].shape)) for n in _trainable_names(method)]


class _Loss(nn.Module):
    """``forward`` = the wrapped method's ``training_loss`` (what ``functional_call`` calls)."""

    def __init__(self, method: FewShotMethod) -> None:
        super().__init__()
        self.method = method

    def forward(self, features: Features, labels: Tensor, masks: Tensor) -> dict[str, Tensor]:
        return self.method.training_loss(features, labels, masks)


class StackedFewShotModule(L.LightningModule):
    """The trainable parameters of S methods of one structure, stacked, trained as one module.

    ``methods[0]`` is the template whose code runs (under ``vmap``) with each member's parameters
    and with each member's own value of every buffer that differs between the members (support
    statistics); buffers equal in all members (text embeddings, flags) stay the template's.
    ``history[i]`` is member i's training curve, as :attr:`FewShotModule.history`.
    """

    def __init__(self, methods: Sequence[FewShotMethod], config: TrainingConfig) -> None:
        super().__init__()
        self.members = list(methods)
        self.config = config
        template = self.members[0]
        self._loss = _Loss(template)
        self.names = _trainable_names(template)
        params = [dict(m.named_parameters()) for m in self.members]
        self.stacked = nn.ParameterList(
            [nn.Parameter(torch.stack([p[n].detach() for p in params])) for n in self.names]
        )
        buffers = [dict(m.named_buffers()) for m in self.members]
        self.varying = [
            n
            for n, value in buffers[0].items()
            if not n.startswith("backbone.")
            and any(not torch.equal(value, b[n]) for b in buffers[1:])
        ]
        for i, n in enumerate(self.varying):
            self.register_buffer(f"varying_{i}", torch.stack([b[n] for b in buffers]))
        self.history: list[dict[str, list[float]]] = [{} for _ in self.members]
        self._epoch_sums: dict[str, Tensor] = {}
        self._epoch_count = 0

        def member_loss(params: dict, buffers: dict, features: Features, labels, masks):
            state = {f"method.{k}": v for k, v in (params | buffers).items()}
            return functional_call(self._loss, state, (features, labels, masks), strict=False)

        self._vmapped = vmap(member_loss, randomness="error")

    def cpu(self) -> StackedFewShotModule:
        """Stay put (see :meth:`FewShotModule.cpu`): the members hold the shared backbone."""
        return self

    def training_step(self, batch: list, batch_idx: int) -> Tensor:
        """``batch``: one (features, labels, masks) per member (CombinedLoader over a list)."""
        features = {k: torch.stack([p[0][k] for p in batch]) for k in batch[0][0]}
        labels = torch.stack([p[1] for p in batch])
        masks = torch.stack([p[2] for p in batch])
        params = dict(zip(self.names, self.stacked, strict=True))
        buffers = {n: getattr(self, f"varying_{i}") for i, n in enumerate(self.varying)}
        terms = self._vmapped(params, buffers, features, labels, masks)  # each (S,)
        n = labels.shape[1]
        for name, value in terms.items():
            total = value.detach().float() * n
            self._epoch_sums[name] = self._epoch_sums.get(name, 0) + total
        self._epoch_count += n
        return terms["loss"].sum()

    def on_train_epoch_end(self) -> None:
        """Append each member's epoch means (one host copy per epoch for all members)."""
        if self._epoch_count:
            means = {k: (v / self._epoch_count).tolist() for k, v in self._epoch_sums.items()}
            for i, history in enumerate(self.history):
                for name, values in means.items():
                    history.setdefault(name, []).append(values[i])
        self._epoch_sums, self._epoch_count = {}, 0

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(
            list(self.stacked),
            lr=self.config.lr,
            weight_decay=self.config.weight_decay,
            betas=self.config.betas,
        )

    @torch.no_grad()
    def unstack(self) -> None:
        """Copy member i's slice of every stacked parameter back into ``members[i]``."""
        for i, method in enumerate(self.members):
            params = dict(method.named_parameters())
            for name, stacked in zip(self.names, self.stacked, strict=True):
                params[name].copy_(stacked[i])


def fit_methods_stacked(
    methods: Sequence[FewShotMethod],
    supports: Sequence[SupportSet],
    config: TrainingConfig | None = None,
    seeds: Sequence[int] = (),
    **trainer_kwargs: object,
) -> list[FewShotModule]:
    """:func:`~semclip_bench.models.lightning.fit_method` for several episodes in one fit.

    Member ``i`` is prepared (``setup_support``) and batched exactly as ``fit_method(methods[i],
    supports[i], config, seeds[i])`` would, and trained with its own parameters and batches in
    one stacked optimisation (see the module docstring). Needs :func:`can_fit_stacked`.
    Returns one :class:`FewShotModule` per member, with that member's ``history``.
    """
    config = config or TrainingConfig()
    if len(seeds) != len(methods) or not can_fit_stacked(methods, supports):
        raise ValueError("fit_methods_stacked: these methods cannot be trained as one stack")
    loaders = []
    for method, support, seed in zip(methods, supports, seeds, strict=True):
        L.seed_everything(seed, workers=True, verbose=False)
        method.setup_support(support)
        loaders.append(support_loader(support, config, seed))
    modules = [FewShotModule(m, config) for m in methods]
    if config.epochs <= 0:
        return modules
    device = next(iter(methods[0].parameters()), torch.empty(0)).device
    stacked = StackedFewShotModule(methods, config)
    with expected_fit_warnings():
        trainer = support_trainer(config, len(supports[0].labels), **trainer_kwargs)
        # The fused attention kernels have no (CPU) or a wrong (CUDA, with an attention mask:
        # "attn_bias: wrong shape") batching rule under vmap; the math form is plain batched
        # matrix products (attention only runs in AnomalyCLIP's text tower here).
        try:
            with sdpa_kernel(SDPBackend.MATH):
                trainer.fit(stacked, train_dataloaders=CombinedLoader(loaders, mode="min_size"))
        except RuntimeError as exc:
            if "vmap" not in str(exc):
                raise
            first = str(exc).splitlines()[0]
            raise UserError(
                f"{type(methods[0]).__name__} declares trains_stacked but its training_loss "
                f"cannot run under vmap ({first}); train it with --fit-mode alone"
            ) from exc
    stacked.unstack()
    for method, module, history in zip(methods, modules, stacked.history, strict=True):
        method.to(device)
        method.eval()
        module.history = history
    return modules


__all__ = ["StackedFewShotModule", "can_fit_stacked", "fit_methods_stacked"]
