"""PatchCore: nearest-neighbour scoring, reweighting, coreset, and the method contract."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from semclip_bench.errors import UserError
from semclip_bench.models.base import SupportSet
from semclip_bench.models.patchcore import (
    PatchCore,
    aggregate_neighbourhood,
    default_clip_taps,
    greedy_coreset,
    knn,
    nearest_neighbor_scores,
    random_projection,
    reweighted_scores,
)

CLASSES = ("good", "bridge", "particle")


def _exact_cdist(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.cdist(a.double(), b.double(), compute_mode="donot_use_mm_for_euclid_dist")


# ---------------------------------------------------------------------------- nearest neighbours
def test_nearest_neighbor_toy_case_with_known_answer() -> None:
    memory = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    query = torch.tensor([[1.0, 0.0], [9.0, 1.0], [0.0, 11.0], [0.0, 0.0]])
    dist, index = nearest_neighbor_scores(query, memory, chunk_size=2)
    torch.testing.assert_close(dist, torch.tensor([1.0, math.sqrt(2.0), 1.0, 0.0]))
    assert index.tolist() == [0, 1, 2, 0]


@pytest.mark.parametrize("chunk", [1, 7, 64, 100_000])
def test_nearest_neighbor_matches_cdist_min(chunk: int) -> None:
    gen = torch.Generator().manual_seed(1)
    query = torch.randn(150, 24, generator=gen) * 3 + 5
    memory = torch.randn(90, 24, generator=gen) * 3 + 5
    dist, index = nearest_neighbor_scores(query, memory, chunk_size=chunk)
    ref = _exact_cdist(query, memory)
    torch.testing.assert_close(dist.double(), ref.min(dim=1).values, rtol=1e-5, atol=1e-5)
    assert torch.equal(index, ref.argmin(dim=1))


@pytest.mark.parametrize("chunk", [3, 1000])
def test_knn_matches_cdist_topk(chunk: int) -> None:
    gen = torch.Generator().manual_seed(2)
    query, memory = torch.randn(40, 6, generator=gen), torch.randn(30, 6, generator=gen)
    dist, index = knn(query, memory, k=5, chunk_size=chunk)
    ref = _exact_cdist(query, memory).topk(5, dim=1, largest=False)
    torch.testing.assert_close(dist.double(), ref.values, rtol=1e-5, atol=1e-5)
    assert torch.equal(index, ref.indices)
    assert knn(query, memory[:3], k=9)[0].shape == (40, 3)  # k clamped to the memory size


def test_exact_match_scores_exactly_zero_despite_large_norms() -> None:
    gen = torch.Generator().manual_seed(3)
    memory = torch.randn(200, 64, generator=gen) * 0.1 + 1000.0  # mm expansion alone cancels badly
    dist, index = nearest_neighbor_scores(memory[50:80], memory, chunk_size=16)
    assert torch.equal(dist, torch.zeros(30))
    assert torch.equal(index, torch.arange(50, 80))


# ---------------------------------------------------------------------------- reweighting
def _direct_reweight(test_patch, nn_index, score, memory, b):
    """The paper's formula evaluated literally in float64."""
    out = []
    for i in range(len(score)):
        m_star = memory[nn_index[i]].double()
        to_star = _exact_cdist(m_star[None], memory)[0]
        neigh = to_star.argsort()[:b]  # N_b(m*), m* itself first (distance 0)
        d = (test_patch[i].double()[None] - memory[neigh].double()).norm(dim=1)
        d_star = (test_patch[i].double() - m_star).norm()
        out.append((1 - torch.exp(d_star) / torch.exp(d).sum()) * score[i].double())
    return torch.stack(out)


@pytest.mark.parametrize("b", [2, 3, 9])
def test_reweighting_matches_direct_formula(b: int) -> None:
    gen = torch.Generator().manual_seed(4)
    memory = torch.randn(60, 5, generator=gen)
    test_patch = torch.randn(4, 5, generator=gen)
    dist, index = nearest_neighbor_scores(test_patch, memory)
    fast = reweighted_scores(test_patch, index, dist, memory, num_neighbors=b)
    ref = _direct_reweight(test_patch, index, dist, memory, b)
    torch.testing.assert_close(fast.double(), ref, rtol=1e-5, atol=1e-6)
    assert bool((fast <= dist + 1e-6).all()) and bool((fast >= 0).all())


def test_reweighting_is_stable_for_large_distances_and_b1_disables_it() -> None:
    gen = torch.Generator().manual_seed(5)
    memory = torch.randn(40, 8, generator=gen) * 500.0
    test_patch = torch.randn(3, 8, generator=gen) * 500.0 + 2000.0
    dist, index = nearest_neighbor_scores(test_patch, memory)
    assert float(dist.min()) > 1000  # exp(d) overflows float64: only the softmax form survives
    fast = reweighted_scores(test_patch, index, dist, memory, num_neighbors=9)
    assert torch.isfinite(fast).all() and bool((fast > 0).all())
    assert torch.equal(reweighted_scores(test_patch, index, dist, memory, num_neighbors=1), dist)


def test_reweighting_drops_a_duplicate_of_the_anchor() -> None:
    memory = torch.tensor([[0.0, 0.0], [0.0, 0.0], [3.0, 0.0], [0.0, 4.0]])
    test_patch, score = torch.tensor([[-1.0, 0.0]]), torch.tensor([1.0])
    index = torch.tensor([1])  # the anchor m* = row 1; row 0 duplicates it
    out = reweighted_scores(test_patch, index, score, memory, num_neighbors=2)
    d = torch.tensor([1.0, 1.0])  # m* and its nearest other (the duplicate at 0)
    torch.testing.assert_close(out, 1 - torch.softmax(d, 0)[:1])


# ---------------------------------------------------------------------------- coreset
def _naive_greedy(points: torch.Tensor, n: int, start: int) -> list[int]:
    dist = _exact_cdist(points, points)
    chosen = [start]
    while len(chosen) < n:
        cover = dist[:, chosen].min(dim=1).values
        chosen.append(int(cover.argmax()))
    return chosen


def _seeded_start(m: int, seed: int) -> int:
    return int(torch.randint(m, (1,), generator=torch.Generator().manual_seed(seed)))


@pytest.mark.parametrize("proj_dim", [None, 4])
def test_greedy_coreset_matches_naive_reference(proj_dim: int | None) -> None:
    gen = torch.Generator().manual_seed(6)
    features = torch.randn(120, 16, generator=gen)
    fast = greedy_coreset(features, 25, seed=3, proj_dim=proj_dim)
    points = features if proj_dim is None else random_projection(features, proj_dim, seed=3)
    assert points.shape[1] == (16 if proj_dim is None else 4)
    assert fast.tolist() == _naive_greedy(points, 25, _seeded_start(120, 3))
    assert len(set(fast.tolist())) == 25


def test_greedy_coreset_is_deterministic_and_seeded() -> None:
    features = torch.randn(300, 200, generator=torch.Generator().manual_seed(7))
    a = greedy_coreset(features, 30, seed=0)
    assert torch.equal(a, greedy_coreset(features.clone(), 30, seed=0))
    assert not torch.equal(a, greedy_coreset(features, 30, seed=1))
    assert torch.equal(greedy_coreset(features, 500, seed=0), torch.arange(300))


# ---------------------------------------------------------------------------- the method
@pytest.fixture(scope="module")
def backbone():
    from semclip_bench.backbones import BackboneSpec, build_backbone

    return build_backbone(BackboneSpec(name="semclip-tiny"))


def _images(size: int, n: int, seed: int) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _support(method: PatchCore, images: torch.Tensor, labels: list[int]) -> SupportSet:
    s = method.image_size
    return SupportSet(
        features=method.extract(images),
        labels=torch.tensor(labels),
        masks=torch.zeros(len(labels), s, s),
        class_names=CLASSES,
        category="line_space",
    )


def test_default_clip_taps_scale_with_depth() -> None:
    assert default_clip_taps(12) == (6, 9)
    assert default_clip_taps(24) == (12, 18)
    assert default_clip_taps(4) == (2, 3)
    assert default_clip_taps(2) == (1, 2)
    assert default_clip_taps(1) == (1,)


def test_clip_extract_is_aggregated_concatenated_tokens(backbone) -> None:
    method = PatchCore(backbone, CLASSES, taps=(1, 3))
    images = _images(backbone.image_size, 2, 0)
    feats = method.extract(images)
    gh, gw = backbone.grid_size
    assert feats["patch"].shape == (2, gh * gw, 2 * backbone.width)
    assert method.grid == (gh, gw)
    tokens = backbone.forward_features(images, taps=(1, 3))
    parts = []
    for p in tokens.patches:
        grid = p.transpose(1, 2).reshape(2, backbone.width, gh, gw)
        pooled = F.avg_pool2d(grid, 3, stride=1, padding=1)
        parts.append(pooled.flatten(2).transpose(1, 2))
    torch.testing.assert_close(feats["patch"], torch.cat(parts, dim=2))
    assert method.mean == tuple(backbone.mean) and method.image_size == backbone.image_size


@pytest.mark.parametrize(
    ("norm", "project"), [("ln", False), ("ln_post", False), ("ln_post", True), ("ln", True)]
)
def test_clip_feature_space_options(backbone, norm: str, project: bool) -> None:
    """clip_norm / clip_project act per tap before the 3x3 aggregation and the concatenation."""
    method = PatchCore(backbone, CLASSES, taps=(1, 3), clip_norm=norm, clip_project=project)
    images = _images(backbone.image_size, 2, 0)
    feats = method.extract(images)
    gh, gw = backbone.grid_size
    visual = backbone.model.visual
    dim = backbone.embed_dim if project else backbone.width
    assert feats["patch"].shape == (2, gh * gw, 2 * dim)
    parts = []
    for p in backbone.forward_features(images, taps=(1, 3)).patches:
        p = F.layer_norm(p, (backbone.width,)) if norm == "ln" else visual.ln_post(p)
        if project:
            p = p @ visual.proj
        grid = p.transpose(1, 2).reshape(2, dim, gh, gw)
        parts.append(F.avg_pool2d(grid, 3, stride=1, padding=1).flatten(2).transpose(1, 2))
    torch.testing.assert_close(feats["patch"], torch.cat(parts, dim=2), rtol=1e-4, atol=1e-5)
    if norm == "ln" and not project:  # LayerNorm: zero mean over the channels of every token
        tokens = backbone.forward_features(images, taps=(1,)).patches[0]
        normed = method._clip_space(tokens)
        torch.testing.assert_close(normed.mean(-1), torch.zeros(2, gh * gw), atol=1e-5, rtol=0)
    if norm == "ln_post" and project:  # exactly the joint space of the CLIP methods
        tokens = backbone.forward_features(images, taps=(3,)).patches[0]
        torch.testing.assert_close(method._clip_space(tokens), backbone.project_tokens(tokens))


def test_clip_feature_variant_configs(backbone) -> None:
    from semclip_bench.runner.plan.config import load_variant

    spaces = {}
    for name in ("patchcore", "patchcore_ln", "patchcore_ln_post", "patchcore_projected"):
        variant = load_variant(name)
        assert variant.method == "patchcore"
        method = PatchCore(backbone, CLASSES, **variant.options)
        spaces[name] = (method.clip_norm, method.clip_project, method.feature_key())
    assert spaces["patchcore"][:2] == ("none", False)  # default unchanged until validated
    assert spaces["patchcore_ln"][:2] == ("ln", False)
    assert spaces["patchcore_ln_post"][:2] == ("ln_post", False)
    assert spaces["patchcore_projected"][:2] == ("ln_post", True)
    assert len({key for *_, key in spaces.values()}) == 4  # each its own feature cache entry


def test_feature_key_names_backbone_and_taps(backbone) -> None:
    key = PatchCore(backbone, CLASSES).feature_key()
    assert backbone.spec.key() in key and "taps=2,3" in key
    assert PatchCore(backbone, CLASSES, taps=(1, 2)).feature_key() != key
    assert PatchCore(backbone, CLASSES, embed_dim=32).feature_key() != key
    # Scoring options do not change the features.
    assert PatchCore(backbone, CLASSES, coreset_ratio=0.5, sigma=0).feature_key() == key


def test_output_contract_and_identity_query(backbone) -> None:
    method = PatchCore(backbone, CLASSES)
    s = backbone.image_size
    support_images = _images(s, 3, 1)
    method.setup_support(_support(method, support_images, [0, 0, 1]))
    gh, gw = backbone.grid_size
    assert method.memory.shape == (2 * gh * gw, 2 * backbone.width)  # the defect image is left out
    query = torch.cat([support_images[:2], _images(s, 2, 2)])
    out = method(query)
    assert out.image_score.shape == (4,) and out.anomaly_map.shape == (4, s, s)
    assert out.class_logits is None
    assert torch.isfinite(out.anomaly_map).all() and torch.isfinite(out.image_score).all()
    # A query identical to a normal support image: 0 everywhere before (and after) smoothing.
    dist, _ = method.patch_scores(method.extract(query)["patch"])
    assert torch.equal(dist[:2], torch.zeros(2, gh * gw))
    assert torch.equal(out.anomaly_map[:2], torch.zeros(2, s, s))
    assert torch.equal(out.image_score[:2], torch.zeros(2))
    assert bool((out.image_score[2:] > 0).all())
    # The defect support image is not in the memory bank: it is not a perfect match.
    dist_defect, _ = method.patch_scores(method.extract(support_images[2:])["patch"])
    assert float(dist_defect.max()) > 0


def test_map_is_blurred_bilinear_upsampling_of_patch_scores(backbone) -> None:
    method = PatchCore(backbone, CLASSES, sigma=0.0, num_neighbors=1)
    s = backbone.image_size
    method.setup_support(_support(method, _images(s, 2, 3), [0, 0]))
    feats = method.extract(_images(s, 2, 4))
    out = method.predict(feats)
    dist, _ = method.patch_scores(feats["patch"])
    gh, gw = method.grid
    up = F.interpolate(dist.reshape(2, 1, gh, gw), size=(s, s), mode="bilinear")[:, 0]
    torch.testing.assert_close(out.anomaly_map, up)
    torch.testing.assert_close(out.image_score, dist.max(dim=1).values)  # b = 1: no reweighting
    blurred = PatchCore(backbone, CLASSES)
    blurred.setup_support(_support(blurred, _images(s, 2, 3), [0, 0]))
    smooth = blurred.predict(feats).anomaly_map
    assert float(smooth.std()) < float(out.anomaly_map.std())  # sigma 4 smooths
    torch.testing.assert_close(smooth.mean(), out.anomaly_map.mean(), rtol=0.05, atol=0.0)


def test_coreset_ratio_shrinks_memory_deterministically(backbone) -> None:
    s = backbone.image_size
    images = _images(s, 3, 5)
    a = PatchCore(backbone, CLASSES, coreset_ratio=0.25, coreset_dim=8)
    a.setup_support(_support(a, images, [0, 0, 0]))
    b = PatchCore(backbone, CLASSES, coreset_ratio=0.25, coreset_dim=8)
    b.setup_support(_support(b, images, [0, 0, 0]))
    n_all = 3 * backbone.grid_size[0] * backbone.grid_size[1]
    assert a.memory.shape[0] == math.ceil(0.25 * n_all)
    assert torch.equal(a.memory, b.memory)
    query = a.extract(_images(s, 2, 6))
    torch.testing.assert_close(a.predict(query).anomaly_map, b.predict(query).anomaly_map)


def test_user_errors(backbone) -> None:
    with pytest.raises(UserError, match="extractor"):
        PatchCore(backbone, CLASSES, extractor="vgg")
    with pytest.raises(UserError, match="coreset_ratio"):
        PatchCore(backbone, CLASSES, coreset_ratio=0.0)
    with pytest.raises(UserError, match="taps"):
        PatchCore(backbone, CLASSES, taps=(0, 99))
    with pytest.raises(UserError, match="backbone"):
        PatchCore(None, CLASSES)
    with pytest.raises(UserError, match="clip_norm"):
        PatchCore(backbone, CLASSES, clip_norm="batchnorm")
    method = PatchCore(backbone, CLASSES)
    with pytest.raises(UserError, match="normal support"):
        method.setup_support(_support(method, _images(backbone.image_size, 1, 0), [1]))


def test_timm_extractor_method(tmp_path) -> None:
    timm = pytest.importorskip("timm")
    path = tmp_path / "test_resnet.pth"
    torch.save(timm.create_model("test_resnet", pretrained=False).state_dict(), path)
    method = PatchCore(
        None, CLASSES, extractor="timm", timm_name="test_resnet", timm_weights=path, image_size=64
    )
    assert method.grid == (8, 8) and method.image_size == 64
    assert method.mean == method.cnn.mean and method.std == method.cnn.std
    images = _images(64, 3, 7)
    feats = method.extract(images)
    assert feats["patch"].shape == (3, 64, 48 + 192)
    l2, l3 = method.cnn(images)
    up = F.interpolate(aggregate_neighbourhood(l3), size=(8, 8), mode="bilinear")
    manual = torch.cat([aggregate_neighbourhood(l2), up], dim=1).flatten(2).transpose(1, 2)
    torch.testing.assert_close(feats["patch"], manual)
    assert "test_resnet" in method.feature_key() and "layer2,layer3" in method.feature_key()
    method.setup_support(_support(method, images[:2], [0, 0]))
    out = method.predict(feats)
    assert out.anomaly_map.shape == (3, 64, 64)
    assert torch.equal(out.image_score[:2], torch.zeros(2)) and float(out.image_score[2]) > 0
    reduced = PatchCore(
        None,
        CLASSES,
        extractor="timm",
        timm_name="test_resnet",
        timm_weights=path,
        image_size=64,
        embed_dim=96,
    )
    assert reduced.extract(images[:1])["patch"].shape == (1, 64, 96)
    swapped = PatchCore(
        None,
        CLASSES,
        extractor="timm",
        timm_name="test_resnet",
        timm_weights=path,
        timm_layers=("layer3", "layer2"),
        image_size=64,
    )
    assert swapped.grid == (8, 8)  # upsampled to the finer layer, whatever the order
    torch.testing.assert_close(swapped.extract(images)["patch"][..., 192:], manual[..., :48])
