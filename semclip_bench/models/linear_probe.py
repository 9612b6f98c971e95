"""Linear-probe classification baseline: logistic regression on frozen CLIP image embeddings.

Fitted by deterministic full-batch L-BFGS in ``setup_support``; no anomaly maps (``produces_maps =
False``). The method card ``docs/methods/linear_probe.md`` gives the objective and scores.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import torch
from torch import Tensor

from semclip_bench.errors import UserError
from semclip_bench.models.base import Features, FewShotMethod, MethodOutput, SupportSet

if TYPE_CHECKING:
    from semclip_bench.backbones import ClipBackbone

#: Logit given to classes with no support example: never predicted, p = 0 in float32.
ABSENT_CLASS_LOGIT = -1e4


def fit_logistic_regression(
    x: Tensor,
    y: Tensor,
    num_classes: int,
    c: float = 1.0,
    max_iter: int = 500,
    tol: float = 1e-10,
) -> tuple[Tensor, Tensor]:
    """Multinomial L2-regularised logistic regression by full-batch L-BFGS (float64, CPU).

    ``x`` (N, D), ``y`` (N,) in [0, num_classes). Minimises ``C * sum CE + 0.5 ||W||^2`` (bias
    unpenalised, scikit-learn's ``LogisticRegression(C=c)`` objective) from zero weights, so the
    result is deterministic. Returns weight (num_classes, D) and bias (num_classes,) in float64.
    """
    if c <= 0:
        raise UserError(f"linear_probe option C: {c} must be positive")
    xd = x.detach().to("cpu", torch.float64)
    yd = y.detach().to("cpu", torch.long)
    weight = torch.zeros(num_classes, xd.shape[1], dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(num_classes, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS(
        [weight, bias],
        lr=1.0,
        max_iter=max_iter,
        tolerance_grad=tol,
        tolerance_change=tol * 1e-2,
        history_size=20,
        line_search_fn="strong_wolfe",
    )

    def closure() -> Tensor:
        optimizer.zero_grad()
        logits = xd @ weight.T + bias
        loss = c * torch.nn.functional.cross_entropy(logits, yd, reduction="sum")
        loss = loss + 0.5 * (weight * weight).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    return weight.detach(), bias.detach()


class LinearProbe(FewShotMethod):
    """Logistic regression on the normalised CLIP image embedding; a classification baseline."""

    name: ClassVar[str] = "linear_probe"
    supervision: ClassVar[str] = "normal+defects"
    classifies: ClassVar[bool] = True
    trainable: ClassVar[bool] = False
    #: The anomaly map is the image score broadcast: pixel metrics are not meaningful (report n/a).
    produces_maps: ClassVar[bool] = False

    def __init__(
        self,
        backbone: ClipBackbone,
        class_names: tuple[str, ...],
        *,
        C: float = 1.0,
        max_iter: int = 500,
    ) -> None:
        """``C``: inverse L2 strength (scikit-learn convention); ``max_iter``: L-BFGS iterations."""
        super().__init__()
        if float(C) <= 0:
            raise UserError(f"linear_probe option C: {C} must be positive")
        if int(max_iter) <= 0:
            raise UserError(f"linear_probe option max_iter: {max_iter} must be positive")
        if len(class_names) < 1:
            raise UserError("linear_probe: class_names is empty")
        self.backbone = backbone
        self.class_names = tuple(class_names)
        self.C = float(C)
        self.max_iter = int(max_iter)
        self.image_size = int(backbone.image_size)
        self.mean = tuple(backbone.mean)
        self.std = tuple(backbone.std)
        n = len(self.class_names)
        self.register_buffer("weight", torch.zeros(n, int(backbone.embed_dim)), persistent=False)
        self.register_buffer("bias", torch.zeros(n), persistent=False)
        self.register_buffer("present", torch.zeros(n, dtype=torch.bool), persistent=False)

    def feature_key(self) -> str:
        """The backbone's identity: the embedding is ``encode_image`` normalised."""
        return f"linear_probe:{self.backbone.spec.key()}:image-embedding-l2"

    @torch.no_grad()
    def extract(self, images: Tensor) -> Features:
        """{"embedding": (B, embed_dim)} the L2-normalised CLIP image embedding."""
        return {"embedding": self.backbone.encode_image(images, normalize=True).float()}

    @torch.no_grad()
    def setup_support(self, support: SupportSet) -> None:
        """Fit the logistic regression on the support embeddings (classes present in the support).

        Classes without a support example get the logit :data:`ABSENT_CLASS_LOGIT`.
        """
        x = support.features["embedding"]
        y = support.labels.long().cpu()
        if y.numel() == 0:
            raise UserError("linear_probe needs a support set (shots >= 1)")
        n = len(self.class_names)
        if int(y.min()) < 0 or int(y.max()) >= n:
            raise ValueError(f"linear_probe: support labels outside 0..{n - 1}")
        present = torch.zeros(n, dtype=torch.bool)
        present[y] = True
        classes = present.nonzero().flatten()
        weight = torch.zeros(n, x.shape[1], dtype=torch.float64)
        bias = torch.full((n,), ABSENT_CLASS_LOGIT, dtype=torch.float64)
        if len(classes) == 1:  # one class only: predict it (logits 0 vs absent)
            bias[classes] = 0.0
        else:
            remap = torch.full((n,), -1, dtype=torch.long)
            remap[classes] = torch.arange(len(classes))
            w, b = fit_logistic_regression(x, remap[y], len(classes), self.C, self.max_iter)
            weight[classes] = w
            bias[classes] = b
        device = self.weight.device
        self.weight = weight.float().to(device)
        self.bias = bias.float().to(device)
        self.present = present.to(device)

    @torch.no_grad()
    def predict(self, features: Features) -> MethodOutput:
        """Class logits (B, C); image score 1 - p(normal); constant map (B, S, S) of that score."""
        if not bool(self.present.any()):
            raise RuntimeError("LinearProbe.predict called before setup_support")
        # float64 logits: CLIP embeddings of similar images differ little, keep their ranks exact.
        emb = features["embedding"].double()
        logits = emb @ self.weight.to(emb.device).double().T + self.bias.to(emb.device).double()
        # 1 - p(normal) = p(any defect), in log space so that confident normals keep their ranks.
        score = torch.exp(logits[:, 1:].logsumexp(dim=1) - logits.logsumexp(dim=1))
        maps = score[:, None, None].expand(-1, self.image_size, self.image_size).contiguous()
        return MethodOutput(
            image_score=score.float(), anomaly_map=maps.float(), class_logits=logits.float()
        )
