"""PatchCore (Roth et al., CVPR 2022) as a few-shot baseline: a memory bank of normal patches.

The method card ``docs/methods/patchcore.md`` describes the two feature sources (CLIP tokens,
the paper's timm CNN), the memory bank, the scores and the CLIP feature-space variants.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from semclip_bench.data.labels import NORMAL_LABEL
from semclip_bench.errors import UserError
from semclip_bench.models.base import Features, FewShotMethod, MethodOutput, SupportSet
from semclip_bench.models.common import gaussian_blur, upsample_maps

if TYPE_CHECKING:
    from semclip_bench.backbones import ClipBackbone

ClipNorm = Literal["none", "ln", "ln_post"]

# ---------------------------------------------------------------------------------------------
# Feature-space scoring (pure functions of tensors, tested directly)
# ---------------------------------------------------------------------------------------------

#: Extra nearest-neighbour candidates whose distances are recomputed exactly (see :func:`knn`).
_REFINE_EXTRA = 2
#: Largest query x memory distance block (float32 elements: 1 GiB).
_MAX_BLOCK_ELEMENTS = 1 << 28


def knn(query: Tensor, memory: Tensor, k: int = 1, chunk_size: int = 2048) -> tuple[Tensor, Tensor]:
    """The ``k`` nearest memory rows of every query row, by Euclidean distance.

    ``query`` (Q, D), ``memory`` (M, D) -> (distances (Q, k) ascending, indices (Q, k)).
    Candidates are found with the matmul expansion ||q||^2 + ||m||^2 - 2 q.m on features centred by
    the memory mean (translation-invariant; centring shrinks the norms and so the cancellation
    error), chunked over queries so that at most ``chunk_size`` x M distances (and never more than
    2^28) exist at once. The distances of the best ``k + 2`` candidates are then recomputed
    exactly from the differences, so an exact match scores exactly 0.
    """
    if memory.shape[0] == 0:
        raise ValueError("knn: empty memory bank")
    if query.shape[-1] != memory.shape[-1]:
        raise ValueError(f"knn: query dim {query.shape[-1]} != memory dim {memory.shape[-1]}")
    k = min(int(k), memory.shape[0])
    n_cand = min(k + _REFINE_EXTRA, memory.shape[0])
    memory = memory.float()
    query = query.float().to(memory.device)
    center = memory.mean(dim=0, keepdim=True)
    mem_c = memory - center
    mem_sq = (mem_c * mem_c).sum(dim=1)
    # Also bound the block by elements, whatever chunk_size says (a large full-data memory bank).
    step = max(1, min(int(chunk_size), _MAX_BLOCK_ELEMENTS // memory.shape[0]))
    dists, indices = [], []
    for start in range(0, query.shape[0], step):
        q = query[start : start + step]
        q_c = q - center
        d2 = (q_c * q_c).sum(dim=1, keepdim=True) + mem_sq[None, :] - 2.0 * (q_c @ mem_c.T)
        cand = d2.topk(n_cand, dim=1, largest=False).indices  # (q, n_cand)
        exact = (q[:, None, :] - memory[cand]).norm(dim=-1)  # (q, n_cand)
        exact, order = exact.sort(dim=1, stable=True)
        dists.append(exact[:, :k])
        indices.append(cand.gather(1, order)[:, :k])
    return torch.cat(dists), torch.cat(indices)


def nearest_neighbor_scores(
    query: Tensor, memory: Tensor, chunk_size: int = 2048
) -> tuple[Tensor, Tensor]:
    """Distance (Q,) of every query row to its nearest memory row and that row's index (Q,)."""
    dist, index = knn(query, memory, k=1, chunk_size=chunk_size)
    return dist[:, 0], index[:, 0]


def reweighted_scores(
    test_patch: Tensor,
    nn_index: Tensor,
    score: Tensor,
    memory: Tensor,
    num_neighbors: int = 9,
    chunk_size: int = 2048,
) -> Tensor:
    """PatchCore's image score: the maximal patch score s* reweighted by local memory density.

    For each image, ``test_patch`` (B, D) is the query patch m_test with the maximal score
    ``score`` = s* (B,), ``nn_index`` (B,) the index of its nearest memory patch m*. With N_b(m*)
    the b = ``num_neighbors`` nearest memory patches of m* (m* itself included, at distance 0):

        s = (1 - exp(||m_test - m*||) / sum_{m in N_b(m*)} exp(||m_test - m||)) * s*

    computed as ``(1 - softmax(d)[m*]) * s*`` over d = distances from m_test to N_b(m*), which
    subtracts the maximum before exponentiating (raw distances of ~50 would overflow exp).
    b <= 1 makes the weight 0 for every image, so it disables the reweighting (returns s*, the
    plain maximum that the authors' public code reports as the image score).
    """
    b = min(int(num_neighbors), memory.shape[0])
    if b <= 1:
        return score
    memory = memory.float()
    anchor = memory[nn_index]  # m*, (B, D)
    _, neigh = knn(anchor, memory, k=b, chunk_size=chunk_size)  # (B, b)
    # m* first, then the b - 1 nearest others (a duplicate of m* found elsewhere is dropped).
    order = (neigh == nn_index[:, None]).long().argsort(dim=1, stable=True)
    rest = neigh.gather(1, order)[:, : b - 1]
    ids = torch.cat([nn_index[:, None], rest], dim=1)  # (B, b)
    dists = (test_patch.float()[:, None, :] - memory[ids]).norm(dim=-1)  # (B, b)
    weight = 1.0 - torch.softmax(dists, dim=1)[:, 0]
    return weight * score


def random_projection(features: Tensor, dim: int, seed: int) -> Tensor:
    """Seeded Gaussian (Johnson-Lindenstrauss) projection of (M, D) to (M, dim) when D > dim."""
    if dim <= 0 or features.shape[1] <= dim:
        return features.float()
    gen = torch.Generator().manual_seed(int(seed))
    matrix = torch.randn(features.shape[1], dim, generator=gen) / math.sqrt(dim)
    return features.float() @ matrix.to(features.device)


def greedy_coreset(features: Tensor, n: int, seed: int = 0, proj_dim: int | None = 128) -> Tensor:
    """Indices (n,) of a greedy k-center coreset of ``features`` (M, D), in selection order.

    Selection runs on a seeded random projection to ``proj_dim`` dims (None: the raw features) from
    a seeded random start; each step adds the point farthest from the selected set and updates all
    M minimum distances in one vectorised operation (no host sync per step).
    """
    m = features.shape[0]
    n = int(n)
    if n >= m:
        return torch.arange(m, device=features.device)
    if n <= 0:
        raise ValueError("greedy_coreset: n must be positive")
    points = features.float() if proj_dim is None else random_projection(features, proj_dim, seed)
    gen = torch.Generator().manual_seed(int(seed))
    start = torch.randint(m, (1,), generator=gen).to(features.device)
    selected = torch.empty(n, dtype=torch.long, device=features.device)
    selected[0] = start[0]
    min_d2 = ((points - points.index_select(0, start)) ** 2).sum(dim=1)
    for step in range(1, n):
        nxt = min_d2.argmax().reshape(1)
        selected[step] = nxt[0]
        min_d2 = torch.minimum(min_d2, ((points - points.index_select(0, nxt)) ** 2).sum(dim=1))
    return selected


# ---------------------------------------------------------------------------------------------
# Patch features
# ---------------------------------------------------------------------------------------------


def aggregate_neighbourhood(fmap: Tensor) -> Tensor:
    """PatchCore's local aggregation: 3x3 average over each position's neighbourhood (B, C, H, W).

    Zero padding is counted in the border averages, as in the public code's zero-padded unfold.
    """
    return F.avg_pool2d(fmap, kernel_size=3, stride=1, padding=1, count_include_pad=True)


def _adaptive_channels(x: Tensor, dim: int) -> Tensor:
    """Adaptive average pooling of the last dimension of (N, C) to (N, dim)."""
    return F.adaptive_avg_pool1d(x[:, None, :], dim)[:, 0, :]


def default_clip_taps(num_blocks: int) -> tuple[int, ...]:
    """Two middle blocks, (6, 9) of 12 scaled to ``num_blocks`` (1-based, distinct)."""
    if num_blocks <= 1:
        return (1,)
    hi = min(num_blocks, max(2, round(num_blocks * 9 / 12)))
    lo = min(hi - 1, max(1, round(num_blocks * 6 / 12)))
    return (lo, hi)


# ---------------------------------------------------------------------------------------------
# The method
# ---------------------------------------------------------------------------------------------


class PatchCore(FewShotMethod):
    """PatchCore: nearest-normal-patch distances from a memory bank of the K normal images."""

    name: ClassVar[str] = "patchcore"
    supervision: ClassVar[str] = "normal"
    classifies: ClassVar[bool] = False
    trainable: ClassVar[bool] = False
    #: The anomaly map is a real per-pixel prediction (pixel metrics are meaningful).
    produces_maps: ClassVar[bool] = True

    def __init__(
        self,
        backbone: ClipBackbone | None,
        class_names: tuple[str, ...] = (NORMAL_LABEL,),
        *,
        extractor: Literal["clip", "timm"] = "clip",
        timm_name: str = "wide_resnet50_2",
        timm_weights: str | Path | None = None,
        timm_layers: Sequence[str | int] = ("layer2", "layer3"),
        image_size: int | None = None,
        embed_dim: int | None = None,
        taps: Sequence[int] | None = None,
        clip_norm: ClipNorm = "none",
        clip_project: bool = False,
        coreset_ratio: float = 1.0,
        coreset_dim: int = 128,
        num_neighbors: int = 9,
        chunk_size: int = 2048,
        sigma: float = 4.0,
        seed: int = 0,
    ) -> None:
        """Options (mirrored in configs/methods/patchcore.yaml).

        ``extractor``: "clip" (the shared backbone's tokens at ``taps``, normalised by
        ``clip_norm`` = "none" | "ln" | "ln_post" and projected into the joint space when
        ``clip_project``; see ``docs/methods/patchcore.md``) or "timm" (``timm_name``
        with weights from the local file ``timm_weights``, feature layers ``timm_layers``, input
        ``image_size``, default 256 as the paper). ``embed_dim``: optional channel reduction by
        adaptive average pooling (the paper's code uses 1024). ``coreset_ratio`` in (0, 1]: fraction
        of memory patches kept by greedy k-center on a ``coreset_dim`` random projection.
        ``num_neighbors``: b of the image-score reweighting (<= 1 disables it). ``chunk_size``:
        query patches per distance block. ``sigma``: Gaussian blur of the map at input resolution.
        """
        super().__init__()
        self.class_names = tuple(class_names)
        if extractor not in ("clip", "timm"):
            raise UserError(f"patchcore option extractor: '{extractor}' is not 'clip' or 'timm'")
        if not 0.0 < float(coreset_ratio) <= 1.0:
            raise UserError(f"patchcore option coreset_ratio: {coreset_ratio} is not in (0, 1]")
        if int(chunk_size) <= 0:
            raise UserError(f"patchcore option chunk_size: {chunk_size} must be positive")
        if embed_dim is not None and int(embed_dim) <= 0:
            raise UserError(f"patchcore option embed_dim: {embed_dim} must be positive")
        if clip_norm not in ("none", "ln", "ln_post"):
            raise UserError(f"patchcore option clip_norm: '{clip_norm}' is not none, ln or ln_post")
        if extractor == "timm" and (clip_norm != "none" or clip_project):
            raise UserError("patchcore options clip_norm/clip_project apply to extractor=clip only")
        self.clip_norm: ClipNorm = clip_norm
        self.clip_project = bool(clip_project)
        self.extractor = extractor
        self.embed_dim = None if embed_dim is None else int(embed_dim)
        self.coreset_ratio = float(coreset_ratio)
        self.coreset_dim = int(coreset_dim)
        self.num_neighbors = int(num_neighbors)
        self.chunk_size = int(chunk_size)
        self.sigma = float(sigma)
        self.seed = int(seed)
        self.backbone = None
        self.cnn = None
        if extractor == "clip":
            if backbone is None:
                raise UserError("patchcore option extractor=clip needs a CLIP backbone")
            if image_size is not None and int(image_size) != backbone.image_size:
                raise UserError(
                    f"patchcore option image_size: {image_size} differs from the CLIP backbone's "
                    f"{backbone.image_size} (only the timm extractor takes its own size)"
                )
            self.backbone = backbone
            n_blocks = int(backbone.num_blocks)
            self.taps = tuple(int(t) for t in taps) if taps else default_clip_taps(n_blocks)
            bad = [t for t in self.taps if not 1 <= t <= n_blocks]
            if bad or not self.taps:
                raise UserError(f"patchcore option taps: {list(self.taps)} not in 1..{n_blocks}")
            self.image_size = int(backbone.image_size)
            self.mean = tuple(backbone.mean)
            self.std = tuple(backbone.std)
            self.grid = tuple(int(g) for g in backbone.grid_size)
        else:
            from semclip_bench.backbones.timm_cnn import TimmFeatureExtractor

            self.taps = ()
            self.cnn = TimmFeatureExtractor(
                timm_name, timm_weights, timm_layers, image_size=image_size or 256
            )
            self.image_size = self.cnn.image_size
            self.mean = self.cnn.mean
            self.std = self.cnn.std
            with torch.no_grad():  # the finest layer's grid for this input size
                probe = self.cnn(torch.zeros(1, 3, self.image_size, self.image_size))
            self.grid = max(
                (tuple(int(s) for s in p.shape[-2:]) for p in probe), key=lambda g: g[0] * g[1]
            )
        self.register_buffer("memory", torch.empty(0), persistent=False)

    # -- extraction ----------------------------------------------------------------------------

    def feature_key(self) -> str:
        """Extractor identity (backbone spec or timm model + weights digest + size) and layers."""
        reduce = f":embed={self.embed_dim}" if self.embed_dim else ""
        if self.cnn is not None:
            return f"patchcore:{self.cnn.key()}:agg3{reduce}"
        taps = ",".join(str(t) for t in self.taps)
        space = f":{self.clip_norm}" + (":proj" if self.clip_project else "")
        return f"patchcore:clip:{self.backbone.spec.key()}:taps={taps}{space}:agg3{reduce}"

    def _layer_maps(self, images: Tensor) -> list[Tensor]:
        """Per-layer feature maps (B, C, h, w) of the chosen extractor."""
        if self.cnn is not None:
            return self.cnn(images)
        tokens = self.backbone.forward_features(images, taps=self.taps)
        gh, gw = tokens.grid
        maps = []
        for p in tokens.patches:  # (B, L, width) per tap
            p = self._clip_space(p.float())
            maps.append(p.transpose(1, 2).reshape(p.shape[0], p.shape[2], gh, gw))
        return maps

    def _clip_space(self, tokens: Tensor) -> Tensor:
        """Apply ``clip_norm`` and ``clip_project`` to raw tokens (..., width)."""
        visual = self.backbone.model.visual
        if self.clip_norm == "ln":
            tokens = F.layer_norm(tokens, tokens.shape[-1:])
        elif self.clip_norm == "ln_post":
            tokens = visual.ln_post(tokens)
        if self.clip_project and visual.proj is not None:
            tokens = tokens @ visual.proj.to(tokens.dtype)
        return tokens.float()

    @torch.no_grad()
    def extract(self, images: Tensor) -> Features:
        """{"patch": (B, L, D)}: aggregated, concatenated patch features on ``self.grid``."""
        maps = [aggregate_neighbourhood(m.float()) for m in self._layer_maps(images)]
        size = max((m.shape[-2:] for m in maps), key=lambda hw: hw[0] * hw[1])  # the finest grid
        maps = [
            m if m.shape[-2:] == size else F.interpolate(m, size=size, mode="bilinear")
            for m in maps
        ]
        b = maps[0].shape[0]
        flat = [m.flatten(2).transpose(1, 2).reshape(-1, m.shape[1]) for m in maps]  # (B*L, C_i)
        if self.embed_dim is not None:
            flat = [_adaptive_channels(f, self.embed_dim) for f in flat]
            patch = _adaptive_channels(torch.cat(flat, dim=1), self.embed_dim)
        else:
            patch = torch.cat(flat, dim=1)
        self.grid = (int(size[0]), int(size[1]))
        return {"patch": patch.reshape(b, size[0] * size[1], -1)}

    # -- memory --------------------------------------------------------------------------------

    @torch.no_grad()
    def setup_support(self, support: SupportSet) -> None:
        """Memory bank = patches of the normal support images (labels == 0), optionally coreset."""
        patches = support.features["patch"]
        normal = support.labels.to(patches.device) == 0
        if not bool(normal.any()):
            raise UserError("patchcore needs at least one normal support image (shots >= 1)")
        bank = patches[normal].reshape(-1, patches.shape[-1]).float()
        if self.coreset_ratio < 1.0:
            n = max(1, math.ceil(self.coreset_ratio * bank.shape[0]))
            bank = bank[greedy_coreset(bank, n, seed=self.seed, proj_dim=self.coreset_dim)]
        self.memory = bank.contiguous()

    # -- scoring -------------------------------------------------------------------------------

    def patch_scores(self, patch: Tensor) -> tuple[Tensor, Tensor]:
        """Nearest-memory distance (B, L) of each query patch, and the matched memory index."""
        if self.memory.numel() == 0:
            raise RuntimeError("PatchCore.predict called before setup_support")
        b, n_patch, d = patch.shape
        memory = self.memory.to(patch.device)
        flat = patch.reshape(b * n_patch, d)
        dist, index = nearest_neighbor_scores(flat, memory, self.chunk_size)
        return dist.reshape(b, n_patch), index.reshape(b, n_patch)

    @torch.no_grad()
    def predict(self, features: Features) -> MethodOutput:
        """Maps (B, S, S) at input resolution and reweighted image scores (B,)."""
        patch = features["patch"].float()
        b, n_patch, _ = patch.shape
        gh, gw = self.grid
        if n_patch != gh * gw:
            raise ValueError(f"PatchCore: {n_patch} patches do not fit the grid {gh}x{gw}")
        dist, index = self.patch_scores(patch)
        best = dist.argmax(dim=1)
        rows = torch.arange(b, device=patch.device)
        score = reweighted_scores(
            patch[rows, best],
            index[rows, best],
            dist[rows, best],
            self.memory.to(patch.device),
            self.num_neighbors,
            self.chunk_size,
        )
        maps = upsample_maps(dist, (gh, gw), self.image_size)  # bilinear, align_corners=False
        return MethodOutput(image_score=score, anomaly_map=gaussian_blur(maps, self.sigma))
