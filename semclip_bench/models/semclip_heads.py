"""SEM-CLIP's trainable Transformation Layers and the frozen projection they may start from.

Split from :mod:`semclip_bench.models.semclip` (the method) by responsibility: these are the
layers that map raw CLIP tokens into the joint text space (APRIL-GAN style).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class TransformationLayers(nn.Module):
    """``n`` Transformation Layers at once: ``T_l(x) = W0 LN(x) + b0 + W_l z_l(x) + b_l``.

    Maps raw width-d tokens of level ``l`` into the joint embedding space. ``LN`` is a LayerNorm
    without affine parameters; ``z_l = (LN(x) - mu_l) / sigma_l`` standardises it per channel with
    support statistics (identity without them). ``W0``, ``b0`` are frozen buffers (the backbone's
    folded ``ln_post`` + projection, absent with random init); ``W_l``, ``b_l`` are trainable
    (zero-initialised when a base is given, else ``nn.Linear``'s default init). One ``einsum``
    serves every level.
    """

    def __init__(
        self,
        n_levels: int,
        width: int,
        embed_dim: int,
        base_weight: Tensor | None = None,
        base_bias: Tensor | None = None,
        eps: float = 1e-5,
    ) -> None:
        super().__init__()
        self.width = width
        self.eps = eps
        self.weight = nn.Parameter(torch.zeros(n_levels, embed_dim, width))
        self.bias = nn.Parameter(torch.zeros(n_levels, embed_dim))
        if base_weight is None:
            bound = 1.0 / width**0.5  # nn.Linear's default: U(-1/sqrt(fan_in), 1/sqrt(fan_in))
            nn.init.uniform_(self.weight, -bound, bound)
            nn.init.uniform_(self.bias, -bound, bound)
        self.has_base = base_weight is not None
        if base_weight is None:
            base_weight = torch.zeros(embed_dim, width)
        if base_bias is None:
            base_bias = torch.zeros(embed_dim)
        self.register_buffer("base_weight", base_weight.detach().clone().float())
        self.register_buffer("base_bias", base_bias.detach().clone().float())

    def normalise(
        self, tokens: Tensor, mean: Tensor | None = None, std: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """``(LN(x), z)`` of raw tokens (B, M, L, width): the frozen inputs of :meth:`forward`.

        ``z = (LN(x) - mean_m) / std_m`` with per-map statistics (M, width), else ``LN(x)``.
        Both depend on the frozen tokens and statistics only, so a fit may compute them once for
        its whole support set and pass them to :meth:`on_normalised` per step: each is an
        elementwise or per-row op, so a row's values do not depend on the rows it is computed
        with.
        """
        y = F.layer_norm(tokens, (self.width,), eps=self.eps)
        z = y if mean is None or std is None else (y - mean[:, None, :]) / std[:, None, :]
        return y, z

    def forward(
        self,
        tokens: Tensor,
        levels: Tensor | None = None,
        mean: Tensor | None = None,
        std: Tensor | None = None,
    ) -> Tensor:
        """(B, M, L, width) -> (B, M, L, embed_dim); map m uses layer ``levels[m]`` (default m).

        The base acts on ``LN(x)``; the trainable part on ``(LN(x) - mean_m) / std_m`` when the
        per-map statistics ``mean``, ``std`` (M, width) are given (well-conditioned steps).
        """
        y, z = self.normalise(tokens, mean, std)
        return self.on_normalised(y, z, levels)

    def base_output(self, y: Tensor) -> Tensor:
        """``W0 LN(x) + b0`` of normalised tokens ``y`` (..., width): the frozen base's part of
        :meth:`on_normalised`. A per-row product with frozen weights, so a fit may compute it once
        for its whole support set (its rows equal the product on a batch's rows, bit for bit:
        ``tests/models/test_semclip.py``)."""
        return F.linear(y, self.base_weight, self.base_bias)

    def on_normalised(
        self, y: Tensor, z: Tensor, levels: Tensor | None = None, *, base: Tensor | None = None
    ) -> Tensor:
        """The layers on already normalised tokens ``y = LN(x)``, ``z`` (see :meth:`normalise`).

        ``base``: :meth:`base_output` of ``y`` when already computed (then ``y`` is not used).
        """
        weight, bias = self.weight, self.bias  # (n, D, W), (n, D)
        if levels is not None:  # select by a one-hot matmul: deterministic backward on CUDA
            sel = F.one_hot(levels, weight.shape[0]).to(weight.dtype)  # (M, n)
            weight = (sel @ weight.flatten(1)).view(len(levels), *weight.shape[1:])
            bias = sel @ bias
        out = torch.einsum("bmlw,mdw->bmld", z, weight) + bias[None, :, None, :]
        if self.has_base:
            out = out + (self.base_output(y) if base is None else base)
        return out


def folded_projection(backbone) -> tuple[Tensor, Tensor, float]:
    """(W0 (embed_dim, width), b0 (embed_dim,), eps) with ``project_tokens(x) = W0 LN(x) + b0``.

    Folds the affine of the visual ``ln_post`` into the projection matrix.
    """
    visual = backbone.model.visual
    ln = visual.ln_post
    proj = visual.proj
    width = backbone.width
    gamma = ln.weight.detach().float() if ln.weight is not None else torch.ones(width)
    beta = ln.bias.detach().float() if ln.bias is not None else torch.zeros(width)
    p = proj.detach().float() if proj is not None else torch.eye(width, device=gamma.device)
    weight = (gamma[:, None] * p).t().contiguous()
    bias = beta @ p
    return weight.cpu(), bias.cpu(), float(ln.eps)


__all__ = ["TransformationLayers", "folded_projection"]
