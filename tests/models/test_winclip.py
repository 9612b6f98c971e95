"""WinCLIP / WinCLIP+: windows, harmonic aggregation, memory search and the method contract."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from semclip_bench.errors import UserError
from semclip_bench.models.base import SupportSet
from semclip_bench.models.common import gaussian_blur
from semclip_bench.models.winclip import (
    WinClip,
    compose_prompts,
    harmonic_aggregate,
    incidence_matrix,
    load_prompt_config,
    min_cosine_distance,
    window_indices,
)

CLASSES = ("good", "bridge", "particle")


# ---------------------------------------------------------------------------- pure functions
@pytest.mark.parametrize(("grid", "k"), [((4, 5), 2), ((4, 5), 3), ((3, 3), 3), ((6, 4), 1)])
def test_window_indices_count_and_contiguity(grid: tuple[int, int], k: int) -> None:
    gh, gw = grid
    idx = window_indices(grid, k)
    assert idx.shape == ((gh - k + 1) * (gw - k + 1), k * k)
    rows, cols = idx // gw, idx % gw
    for w in range(idx.shape[0]):
        r0, c0 = divmod(w, gw - k + 1)  # row-major by top-left patch
        expected_rows = torch.arange(r0, r0 + k).repeat_interleave(k)
        expected_cols = torch.arange(c0, c0 + k).repeat(k)
        assert torch.equal(rows[w], expected_rows)
        assert torch.equal(cols[w], expected_cols)
    assert int(idx.min()) == 0 and int(idx.max()) == gh * gw - 1


def test_window_larger_than_grid_is_a_user_error() -> None:
    with pytest.raises(UserError):
        window_indices((3, 4), 4)


def test_incidence_matrix_counts_covering_windows() -> None:
    grid, k = (5, 4), 3
    idx = window_indices(grid, k)
    inc = incidence_matrix(idx, grid[0] * grid[1])
    assert inc.shape == (20, idx.shape[0]) and inc.dtype == torch.bool
    assert torch.equal(inc.sum(dim=0), torch.full((idx.shape[0],), k * k))
    windows = idx.tolist()
    for p in range(20):
        covering = [w for w, patches in enumerate(windows) if p in patches]
        assert inc[p].nonzero().flatten().tolist() == covering


def test_harmonic_aggregate_matches_direct_loop() -> None:
    grid, k = (4, 5), 2
    idx = window_indices(grid, k)
    inc = incidence_matrix(idx, 20)
    scores = torch.rand(3, idx.shape[0], dtype=torch.float64) + 0.05
    fast = harmonic_aggregate(scores, inc)
    windows, values = idx.tolist(), scores.tolist()
    slow = torch.zeros(3, 20, dtype=torch.float64)
    for b in range(3):
        for p in range(20):
            vals = [values[b][w] for w, patches in enumerate(windows) if p in patches]
            slow[b, p] = len(vals) / sum(1.0 / v for v in vals)
    torch.testing.assert_close(fast, slow)
    # A corner patch has exactly one covering window: its score is that window's score.
    torch.testing.assert_close(fast[:, 0], scores[:, 0])


def test_harmonic_aggregate_of_a_zero_score_is_near_zero() -> None:
    idx = window_indices((3, 3), 2)
    scores = torch.ones(1, idx.shape[0])
    scores[0, 0] = 0.0
    out = harmonic_aggregate(scores, incidence_matrix(idx, 9))
    assert float(out[0, 0]) < 1e-5 and torch.isfinite(out).all()
    assert float(out[0, 8]) == pytest.approx(1.0)


def test_min_cosine_distance_matches_brute_force_with_small_chunks() -> None:
    q = F.normalize(torch.randn(2, 7, 8, dtype=torch.float64), dim=-1)
    mem = F.normalize(torch.randn(23, 8, dtype=torch.float64), dim=-1)
    brute = ((1 - q @ mem.T) / 2).amin(dim=-1)
    torch.testing.assert_close(min_cosine_distance(q, mem, max_elements=30), brute)
    torch.testing.assert_close(min_cosine_distance(q, mem), brute)
    assert min_cosine_distance(mem[:3], mem).abs().max() < 1e-7


def test_prompt_file_has_the_published_ensemble() -> None:
    cfg = load_prompt_config()
    assert len(cfg["normal_states"]) == 7 and len(cfg["anomalous_states"]) == 4
    assert len(cfg["templates"]) == 21 and len(set(cfg["templates"])) == 21
    prompts = compose_prompts(cfg["anomalous_states"], cfg["templates"], "wafer")
    assert len(prompts) == 84 and "a photo of a damaged wafer." in prompts


def test_bad_prompt_file_is_a_user_error(tmp_path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text("normal_states: ['{}']\nanomalous_states: []\ntemplates: ['a {}.']\n")
    with pytest.raises(UserError):
        load_prompt_config(path)


# ---------------------------------------------------------------------------- the method
@pytest.fixture(scope="module")
def backbone():
    from semclip_bench.backbones import BackboneSpec, build_backbone

    return build_backbone(BackboneSpec(name="semclip-tiny"))


@pytest.fixture(scope="module")
def method(backbone) -> WinClip:
    """One instance for the module (its text embeddings are cached per object name); every test
    calls setup_support itself."""
    return WinClip(backbone, CLASSES)


def _images(backbone, n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    s = backbone.image_size
    return torch.randn(n, 3, s, s, generator=g)


def _support(method: WinClip, images: torch.Tensor | None, labels: list[int]) -> SupportSet:
    s = method.backbone.image_size
    if images is None:
        feats = {k: v[:0] for k, v in method.extract(_images(method.backbone, 1, 9)).items()}
    else:
        feats = method.extract(images)
    n = len(labels)
    return SupportSet(
        feats, torch.tensor(labels, dtype=torch.long), torch.zeros(n, s, s), CLASSES, "line_space"
    )


def _all_hooks(module: torch.nn.Module) -> int:
    return sum(
        len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
        for m in module.modules()
    )


def test_extract_shapes_and_feature_key(backbone, method) -> None:
    gh, gw = backbone.grid_size
    feats = method.extract(_images(backbone, 2, 0))
    d = backbone.embed_dim
    assert feats["cls"].shape == (2, d)
    # Reference default: the patch memory lives in the ln_post token space (width dims).
    assert method.patch_space == "ln_post"
    assert feats["patch"].shape == (2, gh * gw, backbone.width)
    assert feats["win2"].shape == (2, (gh - 1) * (gw - 1), d)
    assert feats["win3"].shape == (2, (gh - 2) * (gw - 2), d)
    key = method.feature_key()
    assert backbone.spec.key() in key and "win2-3" in key
    assert WinClip(backbone, CLASSES, window_sizes=(2,)).feature_key() != key
    projected = WinClip(backbone, CLASSES, patch_space="projected")
    proj = projected.extract(_images(backbone, 2, 0))
    assert proj["patch"].shape == (2, gh * gw, d)
    assert projected.feature_key() != key
    tokens = backbone.forward_features(_images(backbone, 2, 0), taps=(backbone.num_blocks,))
    raw = tokens.patches[-1]
    torch.testing.assert_close(feats["patch"], backbone.model.visual.ln_post(raw).float())
    torch.testing.assert_close(proj["patch"], backbone.project_tokens(raw).float())


def test_window_embeddings_are_the_reencoded_subsets(backbone, method) -> None:
    images = _images(backbone, 2, 1)
    feats = method.extract(images)
    direct = backbone.encode_token_subsets(images[1:], method.window_index(3)[:4])
    torch.testing.assert_close(feats["win3"][1:, :4], direct.float(), rtol=1e-4, atol=1e-5)


def test_a_window_covering_the_whole_grid_reproduces_encode_image(backbone) -> None:
    """Batch-first pitfall guard: re-encoding all patch tokens (+ CLS) as one window must give the
    image embedding exactly, for every image of the batch."""
    gh, gw = backbone.grid_size
    assert gh == gw
    full = WinClip(backbone, CLASSES, window_sizes=(gh,))
    images = _images(backbone, 3, 8)
    feats = full.extract(images)
    assert feats[f"win{gh}"].shape == (3, 1, backbone.embed_dim)
    expected = backbone.encode_image(images).float()
    torch.testing.assert_close(feats[f"win{gh}"][:, 0], expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(feats["cls"], expected, rtol=1e-4, atol=1e-5)


def test_zero_shot_output_contract_and_fusion(backbone, method) -> None:
    method.setup_support(_support(method, None, []))
    assert not method.has_memory
    assert method.prompt_object == "line and space pattern on a wafer"
    feats = method.extract(_images(backbone, 3, 2))
    out = method.predict(feats)
    s = backbone.image_size
    assert out.image_score.shape == (3,) and out.anomaly_map.shape == (3, s, s)
    assert out.class_logits is None
    assert torch.isfinite(out.anomaly_map).all() and torch.isfinite(out.image_score).all()
    parts = method.components(feats)
    assert "few_shot_map" not in parts
    # Zero-shot image score: softmax over [t_n, t_a] of cos / 0.07, anomalous column.
    cls = F.normalize(feats["cls"], dim=-1)
    expected = (cls @ method.text_embeddings.T / 0.07).softmax(-1)[:, 1]
    torch.testing.assert_close(out.image_score, expected)
    # Zero-shot map = harmonic mean of {image score, 2x2 map, 3x3 map}.
    img = expected[:, None, None]
    harm = 3 / (1 / img + 1 / parts["zero_shot_win2"] + 1 / parts["zero_shot_win3"])
    torch.testing.assert_close(parts["zero_shot_map"], harm)
    assert ((parts["zero_shot_map"] > 0) & (parts["zero_shot_map"] < 1)).all()


def test_predict_is_deterministic(backbone, method) -> None:
    method.setup_support(_support(method, _images(backbone, 2, 3), [0, 0]))
    images = _images(backbone, 2, 4)
    a = method.predict(method.extract(images))
    b = method.predict(method.extract(images))
    assert torch.equal(a.image_score, b.image_score) and torch.equal(a.anomaly_map, b.anomaly_map)


def test_few_shot_query_equal_to_support_has_zero_few_shot_map(backbone, method) -> None:
    support_images = _images(backbone, 3, 5)
    # Defect support images (label != 0) must not enter the memory.
    method.setup_support(_support(method, support_images, [0, 0, 1]))
    gh, gw = backbone.grid_size
    assert method.memory["patch"].shape[0] == 2 * gh * gw
    assert method.memory["win2"].shape[0] == 2 * (gh - 1) * (gw - 1)
    feats = method.extract(support_images)
    parts = method.components(feats)
    for key in ("few_shot_map", "few_shot_patch", "few_shot_win2", "few_shot_win3"):
        assert parts[key][:2].abs().max() < 1e-4, key
    assert parts["few_shot_map"][2].mean() > 1e-3  # the defect image is not in the memory
    out = method.predict(feats)
    fused_img = (parts["zero_shot_image"] + parts["few_shot_map"].flatten(1).amax(1)) / 2
    torch.testing.assert_close(out.image_score, fused_img)
    # Map = (zero-shot + few-shot) / 2, bilinear to the input size; sigma 0 (reference): no blur.
    fused_map = (parts["zero_shot_map"] + parts["few_shot_map"]) / 2
    up = F.interpolate(fused_map[:, None], size=out.anomaly_map.shape[-2:], mode="bilinear")
    assert method.sigma == 0.0
    torch.testing.assert_close(out.anomaly_map, up[:, 0])
    smoothed = WinClip(backbone, CLASSES, sigma=4.0)
    smoothed.setup_support(_support(smoothed, support_images, [0, 0, 1]))
    blurred = smoothed.predict(feats).anomaly_map
    torch.testing.assert_close(blurred, gaussian_blur(up[:, 0], 4.0))
    assert not torch.allclose(blurred, up[:, 0])


def test_no_hooks_left_registered(backbone, method) -> None:
    before = _all_hooks(backbone)
    method.setup_support(_support(method, _images(backbone, 1, 6), [0]))
    method(_images(backbone, 2, 7))
    assert _all_hooks(backbone) == before == 0


def test_object_name_resolution(backbone, method) -> None:
    assert method.resolve_object_name("metal_nut") == "metal nut"
    assert WinClip(backbone, CLASSES, object_name="wafer").resolve_object_name("x") == "wafer"
    with pytest.raises(UserError):
        WinClip(backbone, CLASSES, temperature=0.0)


def test_prompt_average_raw_vs_normalized(backbone, method) -> None:
    """Reference ("raw"): mean of the raw prompt embeddings, normalised once; "normalized":
    normalise each prompt embedding first (CLIP's ensemble recipe). Different vectors."""
    cfg = load_prompt_config()
    name = "wafer"
    groups = [compose_prompts(cfg[k], cfg["templates"], name) for k in ("normal_states",
              "anomalous_states")]  # fmt: skip
    raw_emb = [backbone.encode_text(g, normalize=False).float() for g in groups]
    expected_raw = torch.stack([F.normalize(e.mean(0), dim=-1) for e in raw_emb])
    expected_norm = torch.stack(
        [F.normalize(F.normalize(e, dim=-1).mean(0), dim=-1) for e in raw_emb]
    )
    assert method.prompt_average == "raw"
    torch.testing.assert_close(method.build_text_embeddings(name), expected_raw)
    normalized = WinClip(backbone, CLASSES, prompt_average="normalized")
    torch.testing.assert_close(normalized.build_text_embeddings(name), expected_norm)
    assert not torch.allclose(expected_raw, expected_norm, atol=1e-4)
    with pytest.raises(UserError, match="prompt_average"):
        WinClip(backbone, CLASSES, prompt_average="median")


def test_reference_config_and_projected_variant(backbone) -> None:
    from semclip_bench.runner.plan.config import load_variant

    reference = WinClip(backbone, CLASSES, **load_variant("winclip").options)
    assert (reference.patch_space, reference.sigma, reference.prompt_average) == (
        "ln_post",
        0.0,
        "raw",
    )
    variant = load_variant("winclip_projected")
    assert variant.method == "winclip" and variant.label == "winclip_projected"
    old = WinClip(backbone, CLASSES, **variant.options)
    assert (old.patch_space, old.sigma, old.prompt_average) == ("projected", 4.0, "normalized")
    assert old.window_sizes == reference.window_sizes  # everything else inherited
