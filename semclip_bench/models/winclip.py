"""WinCLIP / WinCLIP+ (Jeong et al., CVPR 2023): window-based zero- and few-normal-shot CLIP.

The method card ``docs/methods/winclip.md`` describes the zero-shot and few-shot scores and the
named options where the paper is silent (the reference form and the ``winclip_projected`` variant).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Literal

import torch
import torch.nn.functional as F
import yaml
from torch import Tensor

from semclip_bench.errors import UserError
from semclip_bench.models.base import Features, FewShotMethod, MethodOutput, SupportSet
from semclip_bench.models.common import gaussian_blur, upsample_maps
from semclip_bench.prompts import embed_prompt_groups, group_sums, prompt_dirs

if TYPE_CHECKING:
    from semclip_bench.backbones import ClipBackbone

PatchSpace = Literal["projected", "ln_post"]
PromptAverage = Literal["raw", "normalized"]

#: Lower bound on scores before taking reciprocals in the harmonic mean (few-shot distances can be
#: exactly 0 for a query equal to a memory item).
_EPS = 1e-6


# ----------------------------------------------------------------------------------------------
# Windows and harmonic aggregation
# ----------------------------------------------------------------------------------------------
def window_indices(grid: tuple[int, int], k: int) -> Tensor:
    """Patch indices (row-major on the ``grid``) of every k x k window with stride 1.

    Returns a LongTensor (W, k*k) with W = (gh - k + 1) * (gw - k + 1); windows are ordered
    row-major by their top-left patch, patches inside a window row-major.
    """
    gh, gw = grid
    if k < 1 or k > gh or k > gw:
        raise UserError(f"window size {k} does not fit the {gh}x{gw} patch grid (window_sizes)")
    rows = torch.arange(gh - k + 1)
    cols = torch.arange(gw - k + 1)
    top_left = (rows[:, None] * gw + cols[None, :]).reshape(-1)  # (W,)
    di = torch.arange(k)
    offsets = (di[:, None] * gw + di[None, :]).reshape(-1)  # (k*k,)
    return top_left[:, None] + offsets[None, :]


def incidence_matrix(indices: Tensor, num_patches: int) -> Tensor:
    """Bool (L, W) matrix: entry (p, w) is True when window w covers patch p."""
    num_windows = indices.shape[0]
    inc = torch.zeros(num_patches, num_windows, dtype=torch.bool, device=indices.device)
    window_ids = torch.arange(num_windows, device=indices.device)[:, None].expand_as(indices)
    inc[indices.reshape(-1), window_ids.reshape(-1)] = True
    return inc


def harmonic_aggregate(scores: Tensor, incidence: Tensor, eps: float = _EPS) -> Tensor:
    """Per-patch harmonic mean of the scores of the windows covering it.

    ``scores``: (B, W) positive window scores; ``incidence``: (L, W) bool. Returns (B, L):
    ``n_p / sum_{w covers p} 1 / s_w`` as one matmul (no loop over patches). Scores are clamped to
    ``eps`` so that a zero score gives a (near-)zero mean instead of a division by zero.
    """
    inc = incidence.to(scores.dtype)
    reciprocal_sum = scores.clamp_min(eps).reciprocal() @ inc.T  # (B, L)
    counts = inc.sum(dim=1)  # (L,)
    return counts / reciprocal_sum


def min_cosine_distance(queries: Tensor, memory: Tensor, max_elements: int = 1 << 24) -> Tensor:
    """``min over memory of (1 - cos) / 2`` for every query vector, by chunked matmul.

    ``queries``: (..., D) and ``memory``: (M, D), both L2-normalised, on the same device. The
    memory is processed in chunks so that a similarity block never exceeds ``max_elements``.
    Returns (...) distances in [0, 1].
    """
    shape = queries.shape[:-1]
    flat = queries.reshape(-1, queries.shape[-1])
    best = torch.full((flat.shape[0],), -1.0, dtype=flat.dtype, device=flat.device)
    chunk = max(1, max_elements // max(1, flat.shape[0]))
    for start in range(0, memory.shape[0], chunk):
        sims = flat @ memory[start : start + chunk].to(flat.dtype).T
        best = torch.maximum(best, sims.amax(dim=1))
    return ((1.0 - best) / 2.0).clamp(0.0, 1.0).reshape(shape)


# ----------------------------------------------------------------------------------------------
# Prompts
# ----------------------------------------------------------------------------------------------
def default_prompt_file() -> Path:
    """``configs/prompts/winclip.yaml`` of the package (installed) or of the repository."""
    for folder in prompt_dirs():
        path = folder / "winclip.yaml"
        if path.is_file():
            return path
    raise UserError("WinCLIP prompt file configs/prompts/winclip.yaml not found (option prompts)")


def load_prompt_config(path: str | Path | None = None) -> dict[str, object]:
    """The WinCLIP prompt file: normal_states, anomalous_states, templates, object_names."""
    path = Path(path) if path is not None else default_prompt_file()
    if not path.is_file():
        raise UserError(f"WinCLIP prompt file {path} not found (option prompts)")
    with path.open() as fh:
        data = yaml.safe_load(fh) or {}
    for key in ("normal_states", "anomalous_states", "templates"):
        values = data.get(key)
        if (
            not isinstance(values, list)
            or not values
            or not all(isinstance(v, str) for v in values)
        ):
            raise UserError(f"{path}: '{key}' must be a non-empty list of strings")
        if not all("{}" in v for v in values):
            raise UserError(f"{path}: every entry of '{key}' must contain '{{}}'")
    names = data.get("object_names") or {}
    if not isinstance(names, dict):
        raise UserError(f"{path}: 'object_names' must map category names to strings")
    data["object_names"] = {str(k): str(v) for k, v in names.items()}
    return data


def compose_prompts(states: list[str], templates: list[str], object_name: str) -> list[str]:
    """All ``template.format(state.format(object_name))`` combinations (state-major order)."""
    return [t.format(s.format(object_name)) for s in states for t in templates]


@torch.no_grad()
def average_raw_embeddings(backbone: ClipBackbone, groups: list[list[str]]) -> Tensor:
    """(G, D): per group, the mean of the raw (un-normalised) text embeddings, normalised once.

    All prompts go through one ``encode_text`` call; the group sums are :func:`group_sums` (the
    same bits on every run and device).
    """
    texts = [t for g in groups for t in g]
    emb = backbone.encode_text(texts, normalize=False).float()
    sizes = [len(g) for g in groups]
    counts = torch.tensor(sizes, device=emb.device)
    return F.normalize(group_sums(emb, sizes) / counts[:, None], dim=-1)


# ----------------------------------------------------------------------------------------------
# The method
# ----------------------------------------------------------------------------------------------
class WinClip(FewShotMethod):
    """WinCLIP (zero-shot) and WinCLIP+ (K normal shots); see ``docs/methods/winclip.md``."""

    name: ClassVar[str] = "winclip"
    supervision: ClassVar = "normal"
    classifies: ClassVar[bool] = False
    trainable: ClassVar[bool] = False
    #: K = 0 is a valid episode (zero-shot WinCLIP); the runner reads this flag.
    zero_shot: ClassVar[bool] = True

    def __init__(
        self,
        backbone: ClipBackbone,
        class_names: tuple[str, ...],
        *,
        object_name: str | None = None,
        window_sizes: tuple[int, ...] | list[int] = (2, 3),
        temperature: float = 0.07,
        sigma: float = 0.0,
        patch_space: PatchSpace = "ln_post",
        prompt_average: PromptAverage = "raw",
        prompts: str | Path | None = None,
        memory_chunk_elements: int = 1 << 24,
    ) -> None:
        super().__init__()
        if temperature <= 0:
            raise UserError(f"winclip option temperature must be > 0, got {temperature}")
        if sigma < 0:
            raise UserError(f"winclip option sigma must be >= 0, got {sigma}")
        if patch_space not in ("projected", "ln_post"):
            raise UserError(f"winclip option patch_space must be projected|ln_post: {patch_space}")
        if prompt_average not in ("raw", "normalized"):
            raise UserError(
                f"winclip option prompt_average must be raw|normalized: {prompt_average}"
            )
        sizes = tuple(int(k) for k in window_sizes)
        if len(set(sizes)) != len(sizes):
            raise UserError(f"winclip option window_sizes has duplicates: {list(sizes)}")
        self.backbone = backbone
        self.class_names = tuple(class_names)
        self.object_name = object_name
        self.window_sizes = sizes
        self.temperature = float(temperature)
        self.sigma = float(sigma)
        self.patch_space: PatchSpace = patch_space
        self.prompt_average: PromptAverage = prompt_average
        self.prompt_config = load_prompt_config(prompts)
        self.memory_chunk_elements = int(memory_chunk_elements)

        grid = tuple(backbone.grid_size)
        self.grid: tuple[int, int] = (int(grid[0]), int(grid[1]))
        num_patches = self.grid[0] * self.grid[1]
        for k in sizes:
            idx = window_indices(self.grid, k)
            self.register_buffer(f"_win_idx{k}", idx, persistent=False)
            self.register_buffer(
                f"_win_inc{k}", incidence_matrix(idx, num_patches), persistent=False
            )

        self.text_embeddings: Tensor | None = None  # (2, D): [normal, anomalous]
        self.prompt_object: str | None = None
        self.memory: dict[str, Tensor] = {}  # "patch", "win2", ... -> (M, D) normalised
        self._text_cache: dict[str, Tensor] = {}  # object name -> (2, D); prompts are fixed

    # -- helpers ---------------------------------------------------------------------------------
    def window_index(self, k: int) -> Tensor:
        """(W_k, k*k) patch indices of the k x k windows."""
        return getattr(self, f"_win_idx{k}")

    def window_incidence(self, k: int) -> Tensor:
        """(L, W_k) bool patch x window incidence matrix."""
        return getattr(self, f"_win_inc{k}")

    def resolve_object_name(self, category: str) -> str:
        """The ``{}`` of the state phrases for ``category`` (see ``docs/methods/winclip.md``)."""
        if self.object_name:
            return self.object_name
        names: dict[str, str] = self.prompt_config["object_names"]  # type: ignore[assignment]
        if category in names:
            return names[category]
        return category.replace("_", " ").strip() or "object"

    @torch.no_grad()
    def build_text_embeddings(self, object_name: str) -> Tensor:
        """(2, D) normalised [normal, anomalous] ensemble text vectors for ``object_name``."""
        cfg = self.prompt_config
        templates: list[str] = cfg["templates"]  # type: ignore[assignment]
        groups = [
            compose_prompts(cfg[key], templates, object_name)  # type: ignore[arg-type]
            for key in ("normal_states", "anomalous_states")
        ]
        if self.prompt_average == "normalized":
            return embed_prompt_groups(self.backbone, groups)
        return average_raw_embeddings(self.backbone, groups)

    def _set_text(self, object_name: str) -> None:
        """Make ``object_name``'s ensemble vectors the active text embeddings (cached per name)."""
        if object_name not in self._text_cache:
            self._text_cache[object_name] = self.build_text_embeddings(object_name)
        self.prompt_object = object_name
        self.text_embeddings = self._text_cache[object_name]

    def _zero_shot_score(self, embeddings: Tensor) -> Tensor:
        """Anomalous probability softmax(cos(x, [t_n, t_a]) / T)[1] for (..., D) embeddings."""
        assert self.text_embeddings is not None
        x = F.normalize(embeddings.float(), dim=-1)
        logits = x @ self.text_embeddings.to(x.device).T / self.temperature
        return logits.softmax(dim=-1)[..., 1]

    def _to_grid(self, per_patch: Tensor) -> Tensor:
        return per_patch.reshape(per_patch.shape[0], *self.grid)

    # -- contract --------------------------------------------------------------------------------
    def feature_key(self) -> str:
        sizes = "-".join(str(k) for k in self.window_sizes)
        return f"winclip|{self.backbone.spec.key()}|win{sizes}|patch-{self.patch_space}"

    @torch.no_grad()
    def extract(self, images: Tensor) -> Features:
        """Image embedding, last-block patch embeddings and k x k window embeddings (frozen)."""
        backbone = self.backbone
        tokens = backbone.forward_features(images, taps=(backbone.num_blocks,))
        raw = tokens.patches[-1]
        if self.patch_space == "projected":
            patch = backbone.project_tokens(raw)
        else:
            patch = backbone.model.visual.ln_post(raw)
        feats: Features = {"cls": tokens.cls.float(), "patch": patch.float()}
        for k in self.window_sizes:
            feats[f"win{k}"] = backbone.encode_token_subsets(images, self.window_index(k)).float()
        return feats

    @torch.no_grad()
    def setup_support(self, support: SupportSet) -> None:
        """Text vectors for the category; memory banks from the normal (label 0) support images."""
        self._set_text(self.resolve_object_name(support.category))
        self.memory = {}
        labels = support.labels
        if labels.numel() == 0:
            return
        normal = labels.reshape(-1) == 0
        if not bool(normal.any()):
            return
        for key in ("patch", *(f"win{k}" for k in self.window_sizes)):
            if key not in support.features:
                raise ValueError(f"support features lack '{key}' (extracted by another method?)")
            bank = support.features[key][normal.to(support.features[key].device)]
            self.memory[key] = F.normalize(bank.float().reshape(-1, bank.shape[-1]), dim=-1)

    @property
    def has_memory(self) -> bool:
        """Whether the few-shot (WinCLIP+) branch is active: memory from >= 1 normal image."""
        return bool(self.memory)

    @torch.no_grad()
    def components(self, features: Features) -> dict[str, Tensor]:
        """Score components on the patch grid.

        Returns ``zero_shot_image`` (B,), ``zero_shot_map`` (B, gh, gw) and, when the memory is set,
        ``few_shot_map`` (B, gh, gw); also the per-scale maps ``zero_shot_win{k}`` and
        ``few_shot_patch`` / ``few_shot_win{k}``.
        """
        if self.text_embeddings is None:
            # Never set up: zero-shot with the configured (or generic) object name.
            self._set_text(self.object_name or "object")
        out: dict[str, Tensor] = {}
        image_score = self._zero_shot_score(features["cls"])  # (B,)
        out["zero_shot_image"] = image_score
        num_patches = self.grid[0] * self.grid[1]
        reciprocal = image_score.clamp_min(_EPS).reciprocal()[:, None].expand(-1, num_patches)
        reciprocal = reciprocal.clone()
        for k in self.window_sizes:
            scores = self._zero_shot_score(features[f"win{k}"])  # (B, W)
            per_patch = harmonic_aggregate(scores, self.window_incidence(k).to(scores.device))
            out[f"zero_shot_win{k}"] = self._to_grid(per_patch)
            reciprocal = reciprocal + per_patch.clamp_min(_EPS).reciprocal()
        out["zero_shot_map"] = self._to_grid((len(self.window_sizes) + 1) / reciprocal)

        if self.memory:
            maps = []
            for key in ("patch", *(f"win{k}" for k in self.window_sizes)):
                query = F.normalize(features[key].float(), dim=-1)
                memory = self.memory[key].to(query.device)
                dist = min_cosine_distance(query, memory, self.memory_chunk_elements)
                if key != "patch":
                    k = int(key[3:])
                    dist = harmonic_aggregate(dist, self.window_incidence(k).to(dist.device))
                grid_map = self._to_grid(dist)
                out[f"few_shot_{key}"] = grid_map
                maps.append(grid_map)
            out["few_shot_map"] = torch.stack(maps).mean(dim=0)
        return out

    @torch.no_grad()
    def predict(self, features: Features) -> MethodOutput:
        """Image scores (B,) and anomaly maps (B, S, S) at the backbone's input size S."""
        parts = self.components(features)
        grid_map = parts["zero_shot_map"]
        image_score = parts["zero_shot_image"]
        if "few_shot_map" in parts:
            few = parts["few_shot_map"]
            grid_map = (grid_map + few) / 2
            image_score = (image_score + few.flatten(1).amax(dim=1)) / 2
        size = int(self.backbone.image_size)
        maps = upsample_maps(grid_map.flatten(1), self.grid, size)  # bilinear, align_corners=False
        maps = gaussian_blur(maps, self.sigma)
        return MethodOutput(image_score=image_score, anomaly_map=maps)
