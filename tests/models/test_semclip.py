"""SEM-CLIP: output contract, determinism, training, each ablation switch, checkpoints."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from semclip_bench.backbones import BackboneSpec, build_backbone
from semclip_bench.errors import UserError
from semclip_bench.models import method_class
from semclip_bench.models.base import SupportSet
from semclip_bench.models.lightning import TrainingConfig, fit_method
from semclip_bench.models.semclip import SemClip, folded_projection

CLASSES = ("good", "bridge", "particle")


@pytest.fixture(scope="module")
def backbone():
    return build_backbone(BackboneSpec("semclip-tiny"))


@pytest.fixture(scope="module")
def images(backbone) -> torch.Tensor:
    gen = torch.Generator().manual_seed(1)
    return torch.randn(6, 3, backbone.image_size, backbone.image_size, generator=gen)


@pytest.fixture(scope="module")
def labels() -> torch.Tensor:
    return torch.tensor([0, 0, 1, 1, 2, 2])


@pytest.fixture(scope="module")
def masks(backbone) -> torch.Tensor:
    s = backbone.image_size
    m = torch.zeros(6, s, s)
    m[2:4, 10:30, 5:50] = 1  # bridges: wide boxes
    m[4:6, 40:52, 40:52] = 1  # particles: small squares
    return m


def make(backbone, seed: int = 0, **options) -> SemClip:
    torch.manual_seed(seed)
    return SemClip(backbone, CLASSES, **options)


def support_of(method: SemClip, images, labels, masks) -> SupportSet:
    return SupportSet(method.extract(images), labels, masks, CLASSES, "line_space")


def fit(method: SemClip, support: SupportSet, epochs: int = 8, seed: int = 0) -> None:
    fit_method(method, support, TrainingConfig(epochs=epochs, lr=1e-2, batch_size=6), seed=seed)


# --------------------------------------------------------------------------------- contract
def test_registry_and_class_attributes() -> None:
    assert method_class("semclip") is SemClip
    assert SemClip.supervision == "normal+defects" and SemClip.classifies and SemClip.trainable


def test_output_contract(backbone, images, labels, masks) -> None:
    method = make(backbone)
    feats = method.extract(images)
    n, s, L = len(images), backbone.image_size, backbone.grid_size[0] * backbone.grid_size[1]
    taps = backbone.default_taps()
    assert method.taps == taps and method.vv_blocks == backbone.num_blocks
    assert feats["cls"].shape == (n, backbone.embed_dim)
    assert feats["patches"].shape == (n, len(taps), L, backbone.width)
    assert feats["patches_vv"].shape == (n, len(taps), L, backbone.width)
    method.setup_support(support_of(method, images, labels, masks))
    out = method.predict(feats)
    assert out.image_score.shape == (n,)
    assert out.anomaly_map.shape == (n, s, s)
    assert out.class_logits is not None and out.class_logits.shape == (n, len(CLASSES))
    assert torch.isfinite(out.anomaly_map).all() and torch.isfinite(out.image_score).all()
    assert out.anomaly_map.min() >= 0 and out.anomaly_map.max() <= 1
    # forward() = extract + predict
    again = method(images)
    assert torch.allclose(again.anomaly_map, out.anomaly_map)
    # predict_maps agrees with predict and adds per-class maps that sum to one
    detail = method.predict_maps(feats)
    assert detail.class_maps.shape == (n, len(CLASSES), s, s)
    assert torch.allclose(detail.class_maps.sum(1), torch.ones(n, s, s), atol=1e-5)
    assert torch.allclose(detail.anomaly_map, out.anomaly_map, atol=1e-5)
    assert torch.allclose(detail.image_score, out.image_score, atol=1e-5)


def test_feature_key_names_backbone_taps_vv_and_paths(backbone) -> None:
    dual = make(backbone)
    key = dual.feature_key()
    assert backbone.spec.key() in key and "taps=1,2,3,4" in key and "vv=4" in key and "dual" in key
    assert make(backbone, paths="vanilla").feature_key() != key
    assert make(backbone, taps=(2, 4)).feature_key() != key
    assert make(backbone, vv_blocks=2).feature_key() != key
    # Head-only options share the cached features.
    assert make(backbone, prompts="generic", text_guidance=False).feature_key() == key


def test_zero_shot_uses_clip_logits_and_frozen_maps(backbone, images) -> None:
    assert SemClip.zero_shot
    method = make(backbone)
    feats = method.extract(images)
    empty = SupportSet({}, torch.zeros(0, dtype=torch.long), torch.zeros(0, 64, 64), CLASSES, "c")
    fit_method(method, empty, TrainingConfig(epochs=3))
    out = method.predict(feats)
    fused, _head, clip = method.logits(feats)
    assert clip is not None and torch.equal(out.class_logits, clip) and torch.equal(fused, clip)
    frozen = make(backbone, text_guidance=False)
    assert torch.allclose(
        method.class_probabilities(feats), frozen.class_probabilities(feats), atol=1e-5
    )


def test_image_score_rule(backbone, images, labels, masks) -> None:
    feats = make(backbone).extract(images)
    only_map = make(backbone, image_score_weight=0.0)
    out = only_map.predict(feats)
    assert torch.allclose(out.image_score, out.anomaly_map.flatten(1).amax(1))
    only_cls = make(backbone, image_score_weight=1.0)
    out = only_cls.predict(feats)
    assert torch.allclose(out.image_score, 1 - out.class_logits.softmax(-1)[:, 0])


def test_class_logit_fusion(backbone, images) -> None:
    method = make(backbone, class_logit_weight=0.25)
    feats = method.extract(images)
    fused, head, clip = method.logits(feats)
    assert clip is not None
    assert torch.allclose(fused, 0.75 * head + 0.25 * clip)
    cls = torch.nn.functional.normalize(feats["cls"], dim=-1)
    assert torch.allclose(clip, cls @ method._text().t() / 0.07, atol=1e-5)


# --------------------------------------------------------------------------------- training
def test_determinism_same_seed_same_outputs(backbone, images, labels, masks) -> None:
    outs = []
    for _ in range(2):
        method = make(backbone, seed=3)
        support = support_of(method, images, labels, masks)
        fit(method, support, epochs=3, seed=5)
        outs.append(method.predict(support.features))
    assert torch.equal(outs[0].anomaly_map, outs[1].anomaly_map)
    assert torch.equal(outs[0].class_logits, outs[1].class_logits)
    assert torch.equal(outs[0].image_score, outs[1].image_score)


@pytest.mark.parametrize(
    "options",
    [{}, {"paths": "vanilla", "transform_init": "random"}, {"loss_resolution": "input"}],
)
def test_training_lowers_the_loss(backbone, images, labels, masks, options) -> None:
    method = make(backbone, **options)
    support = support_of(method, images, labels, masks)
    method.setup_support(support)
    with torch.no_grad():
        before = method.training_loss(support.features, labels, masks)
    fit(method, support, epochs=10)
    with torch.no_grad():
        after = method.training_loss(support.features, labels, masks)
    assert after["loss"] < 0.8 * before["loss"]
    assert after["focal"] < before["focal"] and after["ce"] < before["ce"]
    assert all(not p.requires_grad for p in backbone.parameters())


def test_defect_image_without_mask_gets_no_pixel_loss(backbone, images, labels, masks) -> None:
    method = make(backbone)
    feats = method.extract(images)
    method.setup_support(support_of(method, images, labels, masks))
    pick = torch.tensor([0, 2])
    sub = {k: v[pick] for k, v in feats.items()}
    empty = masks[pick].clone()
    empty[1] = 0  # defect image without annotation
    with torch.no_grad():
        both = method.training_loss(sub, labels[pick], empty)
        normal_only = method.training_loss(
            {k: v[:1] for k, v in sub.items()}, labels[:1], empty[:1]
        )
    assert torch.allclose(both["focal"], normal_only["focal"])
    assert torch.allclose(both["dice"], normal_only["dice"])


def test_trainable_parameters_are_transforms_and_head_only(backbone) -> None:
    method = make(backbone)
    names = {n for n, p in method.named_parameters() if p.requires_grad}
    assert names and all(n.startswith(("transforms.", "head.")) for n in names)
    ids = {id(p) for p in method.trainable_parameters()}
    assert ids == {id(p) for n, p in method.named_parameters() if n in names}
    separate = make(backbone, transform="separate")
    assert len(separate.trainable_parameters()) > len(method.trainable_parameters())
    assert separate.transforms_vv is not None and method.transforms_vv is None


# --------------------------------------------------------------------------------- ablations
def _spy_backbone(backbone, monkeypatch) -> tuple[list[int], list[int]]:
    vv_args: list[int] = []
    vv_calls: list[int] = []
    original = backbone.forward_features
    original_vv = backbone._vv_attention

    def forward_features(images, taps=None, vv_blocks=0, **kw):
        vv_args.append(vv_blocks)
        return original(images, taps, vv_blocks, **kw)

    def vv_attention(block, x):
        vv_calls.append(1)
        return original_vv(block, x)

    monkeypatch.setattr(backbone, "forward_features", forward_features)
    monkeypatch.setattr(backbone, "_vv_attention", vv_attention)
    return vv_args, vv_calls


def test_vanilla_path_never_computes_the_vv_branch(
    backbone, images, labels, masks, monkeypatch
) -> None:
    vv_args, vv_calls = _spy_backbone(backbone, monkeypatch)
    method = make(backbone, paths="vanilla")
    feats = method.extract(images)
    assert vv_args == [0] and vv_calls == []
    assert "patches_vv" not in feats and method.n_maps == len(method.taps)
    method.setup_support(SupportSet(feats, labels, masks, CLASSES, "c"))
    fit(method, SupportSet(feats, labels, masks, CLASSES, "c"), epochs=2)
    out = method.predict(feats)  # works without any v-v feature
    assert out.anomaly_map.shape == (len(images), backbone.image_size, backbone.image_size)
    assert vv_calls == []
    # The dual model does run the branch, on every block by default.
    dual = make(backbone)
    dual.extract(images)
    assert vv_args[-1] == backbone.num_blocks and len(vv_calls) == backbone.num_blocks


def test_dual_map_is_the_mean_of_vanilla_and_vv_maps(backbone, images) -> None:
    dual = make(backbone, sigma=0.0, image_score_weight=0.0)
    feats = dual.extract(images)
    probs = dual.class_probabilities(feats)  # (B, 2 * levels, L, C)
    n = len(dual.taps)
    assert probs.shape[1] == 2 * n
    vanilla = make(backbone, paths="vanilla", sigma=0.0)  # same init (same seed)
    shared = {
        k: v for k, v in dual.state_dict().items() if not k.startswith(("token_", "backbone"))
    }
    vanilla.load_state_dict(shared, strict=False)
    p_f = vanilla.class_probabilities({k: v for k, v in feats.items() if k != "patches_vv"})
    assert torch.allclose(p_f, probs[:, :n], atol=1e-6)
    a_f = (1 - probs[:, :n, :, 0]).mean(1)
    a_v = (1 - probs[:, n:, :, 0]).mean(1)
    out = dual.predict(feats)
    grid_map = torch.nn.functional.interpolate(
        ((a_f + a_v) / 2).reshape(-1, 1, *backbone.grid_size),
        size=(backbone.image_size,) * 2,
        mode="bilinear",
        align_corners=False,
    )[:, 0]
    assert torch.allclose(out.anomaly_map, grid_map, atol=1e-6)


def test_shared_transform_applies_the_level_layer_to_both_paths(backbone, images) -> None:
    method = make(backbone, vv_blocks=2)  # v-v levels are taps 3 and 4 (indices 2, 3)
    with torch.no_grad():
        method.transforms.weight.normal_(0, 0.1)
        method.transforms.bias.normal_(0, 0.1)
    feats = method.extract(images)
    out = method._tokens_in_text_space(feats)  # (B, 4 + 2, L, D)
    per_level = method.transforms(feats["patches"])  # level l applied to tap l
    vv_as_levels = method.transforms(
        torch.cat([feats["patches"][:, :2], feats["patches_vv"]], dim=1)
    )
    assert torch.allclose(out[:, :4], per_level, atol=1e-5)
    assert torch.allclose(out[:, 4:], vv_as_levels[:, 2:], atol=1e-5)


def test_partial_vv_blocks_give_vv_levels_only_after_the_first_vv_block(backbone, images) -> None:
    method = make(backbone, vv_blocks=2)  # blocks 3 and 4 of 4
    assert method.vv_levels == (2, 3) and method.n_maps == 6
    feats = method.extract(images)
    assert feats["patches_vv"].shape[1] == 2
    assert method.predict(feats).anomaly_map.shape[0] == len(images)
    with pytest.raises(UserError, match="v-v level"):
        make(backbone, vv_blocks=1, taps=(1, 2))


def test_setup_support_standardises_inputs_and_centres_text(
    backbone, images, labels, masks
) -> None:
    method = make(backbone)
    support = support_of(method, images, labels, masks)
    assert torch.equal(method.token_std, torch.ones_like(method.token_std))
    method.setup_support(support)
    assert method.token_mean.shape == (method.n_maps, backbone.width)
    tokens = method._raw_tokens(support.features)
    y = torch.nn.functional.layer_norm(tokens, (backbone.width,))
    z = (y - method.token_mean[:, None]) / method.token_std[:, None]
    assert torch.allclose(z.mean(dim=(0, 2)), torch.zeros_like(method.token_mean), atol=1e-4)
    assert torch.allclose(z.std(dim=(0, 2)), torch.ones_like(method.token_std), atol=1e-3)
    # Published form: the text vectors are used as they are.
    raw = method.text_embeddings
    assert not method.text_centering and torch.allclose(method._text(), raw)
    # Text centring (the project's addition) removes the class-common part.
    centring = make(backbone, text_centering=True)
    centring.setup_support(support)
    centred = torch.nn.functional.normalize(raw - raw.mean(0), dim=-1)
    assert torch.allclose(centring._text(), centred)
    # Grid targets: "any" marks every patch touched by the mask, "area" uses the fraction.
    area = make(backbone, grid_target="area")
    area.setup_support(support)
    with torch.no_grad():
        a = area.training_loss(support.features, labels, masks)
        b = method.training_loss(support.features, labels, masks)
    assert not torch.allclose(a["dice"], b["dice"])


def test_no_text_guidance_removes_transforms_and_text_logits(
    backbone, images, labels, masks
) -> None:
    method = make(backbone, text_guidance=False)
    assert method.transforms is None and method.transforms_vv is None
    names = [n for n, _ in method.named_parameters() if not n.startswith("backbone.")]
    assert names and all(n.startswith("head.") for n in names)
    support = support_of(method, images, labels, masks)
    method.setup_support(support)
    before = method.predict(support.features)
    fit(method, support, epochs=3)
    out = method.predict(support.features)
    fused, head, clip = method.logits(support.features)
    assert clip is None and torch.equal(fused, head) and torch.equal(out.class_logits, head)
    # Maps come from the frozen ln_post + projection: training does not change them.
    assert torch.equal(out.anomaly_map, before.anomaly_map)


def test_projection_init_starts_at_the_frozen_projection(backbone, images) -> None:
    guided = make(backbone, transform_init="projection")
    frozen = make(backbone, text_guidance=False)
    feats = guided.extract(images)
    x = feats["patches"]
    assert torch.allclose(guided.transforms(x), backbone.project_tokens(x), atol=1e-5)
    assert torch.allclose(
        guided.class_probabilities(feats), frozen.class_probabilities(feats), atol=1e-5
    )
    w, b, _eps = folded_projection(backbone)
    assert w.shape == (backbone.embed_dim, backbone.width) and b.shape == (backbone.embed_dim,)
    random_init = make(backbone)  # the published form's default
    assert random_init.transform_init == "random" and not random_init.transforms.has_base
    assert not torch.allclose(random_init.transforms(x), backbone.project_tokens(x))


def test_published_form_and_semclip_plus_configs() -> None:
    """semclip.yaml = the constructor defaults (published form, no additions); semclip_plus.yaml
    = the same with exactly the two additions switched on, same training budget."""
    import inspect

    from semclip_bench.runner.plan.config import load_variant

    published, plus = load_variant("semclip"), load_variant("semclip_plus")
    defaults = {
        k: p.default
        for k, p in inspect.signature(SemClip.__init__).parameters.items()
        if p.kind is inspect.Parameter.KEYWORD_ONLY
    }
    assert published.options == {k: defaults[k] for k in published.options}
    assert published.options["text_centering"] is False
    assert published.options["transform_init"] == "random"
    changed = {k for k in plus.options if plus.options[k] != published.options.get(k)}
    assert changed == {"text_centering", "transform_init"}
    assert plus.options["text_centering"] is True
    assert plus.options["transform_init"] == "projection"
    assert plus.method == "semclip" and plus.training == published.training


def test_zero_shot_switches_off_untrained_random_transforms(
    backbone, images, labels, masks
) -> None:
    method = make(backbone)  # random init
    frozen = make(backbone, text_guidance=False)
    feats = method.extract(images)
    empty = SupportSet({}, torch.zeros(0, dtype=torch.long), torch.zeros(0, 64, 64), CLASSES, "c")
    method.setup_support(empty)
    assert not bool(method.transform_active)
    assert torch.allclose(
        method.class_probabilities(feats), frozen.class_probabilities(feats), atol=1e-5
    )
    method.setup_support(support_of(method, images, labels, masks))
    assert bool(method.transform_active)
    assert not torch.allclose(
        method.class_probabilities(feats), frozen.class_probabilities(feats), atol=1e-3
    )


def test_generic_prompts_change_only_the_text_embeddings(backbone, images) -> None:
    expert = make(backbone)
    generic = make(backbone, prompts="generic")
    feats = expert.extract(images)
    a, b = expert.predict(feats), generic.predict(feats)
    assert not torch.allclose(expert.text_embeddings, generic.text_embeddings)
    assert not torch.allclose(a.anomaly_map, b.anomaly_map)
    own = {k: v for k, v in expert.head_state_dict().items() if not k.startswith("text")}
    other = {k: v for k, v in generic.head_state_dict().items() if not k.startswith("text")}
    assert own.keys() == other.keys()
    assert all(torch.equal(own[k], other[k]) for k in own)  # same parameters (same seed)


def test_user_prompt_file(backbone, tmp_path: Path) -> None:
    path = tmp_path / "bank.yaml"
    path.write_text("templates: ['sem {}']\nclasses: {good: [ok], bridge: [short]}\n")
    method = make(backbone, prompts=str(path))
    assert method.prompt_bank.source == path
    with pytest.raises(UserError, match=str(tmp_path)):
        path.write_text("templates: 3\n")
        make(backbone, prompts=path)


# --------------------------------------------------------------------------------- persistence
def test_checkpoint_round_trip_reproduces_outputs(
    backbone, images, labels, masks, tmp_path: Path
) -> None:
    method = make(backbone, seed=1)
    support = support_of(method, images, labels, masks)
    fit(method, support, epochs=3)
    expected = method.predict(support.features)
    path = tmp_path / "semclip.pt"
    torch.save(method.head_state_dict(), path)
    fresh = make(backbone, seed=2)
    missing, unexpected = fresh.load_state_dict(torch.load(path), strict=False)
    assert not unexpected and all(k.startswith("backbone.") for k in missing)
    got = fresh.predict(support.features)
    assert torch.equal(got.anomaly_map, expected.anomaly_map)
    assert torch.equal(got.class_logits, expected.class_logits)
    assert torch.equal(got.image_score, expected.image_score)


@pytest.mark.parametrize(
    "options",
    [
        {"paths": "both"},
        {"transform": "tied"},
        {"taps": (0, 2)},
        {"taps": (2, 2)},
        {"vv_blocks": 9},
        {"class_logit_weight": 1.5},
        {"temperature": 0.0},
        {"sigma": -1.0},
        {"loss_resolution": "pixel"},
        {"grid_target": "max"},
    ],
)
def test_bad_options_are_user_errors(backbone, options) -> None:
    with pytest.raises(UserError, match="semclip option"):
        make(backbone, **options)


# --------------------------------------------------------------------------------- per-fit cache
CACHED_FORMS = [
    {},
    {"transform_init": "projection", "text_centering": True},
    {"transform": "separate"},
    {"paths": "vanilla"},
]


@pytest.mark.parametrize("options", CACHED_FORMS)
def test_training_features_give_the_same_loss_and_gradients(
    backbone, images, labels, masks, options
) -> None:
    """A batch of rows of the per-fit features gives exactly (torch.equal) the loss terms and
    gradients the step computes from the raw features' rows."""
    method = make(backbone, **options)
    support = support_of(method, images, labels, masks)
    method.setup_support(support)
    cached = method.training_features(support)
    assert "patches" not in cached and any(k.startswith("transform_z_") for k in cached)
    # A frozen projection base: its output is computed once per fit, LN(x) is then not kept.
    projected = options.get("transform_init") == "projection"
    assert any(k.startswith("transform_base_") for k in cached) == projected
    assert not any(k.startswith("transform_ln_") for k in cached)
    rows = torch.tensor([4, 1, 5, 2])

    def loss_and_grads(features) -> tuple[dict, list]:
        method.zero_grad()
        batch = {k: v[rows] for k, v in features.items()}
        terms = method.training_loss(batch, labels[rows], masks[rows])
        terms["loss"].backward()
        return terms, [p.grad.clone() for p in method.trainable_parameters()]

    terms_raw, grads_raw = loss_and_grads(support.features)
    terms_cached, grads_cached = loss_and_grads(cached)
    assert terms_raw.keys() == terms_cached.keys()
    for name in terms_raw:
        assert torch.equal(terms_raw[name], terms_cached[name]), name
    for a, b in zip(grads_raw, grads_cached, strict=True):
        assert torch.equal(a, b)


def test_normalise_of_a_batch_equals_normalise_of_the_whole_set(backbone, images) -> None:
    """LN and the standardisation are per row: the rows of the whole set's result equal the
    result on those rows alone (what lets a fit compute them once)."""
    method = make(backbone)
    tokens = method._raw_tokens(method.extract(images))
    gen = torch.Generator().manual_seed(3)
    mean = torch.randn(tokens.shape[1], tokens.shape[-1], generator=gen)
    std = torch.rand(tokens.shape[1], tokens.shape[-1], generator=gen) + 0.5
    assert method.transforms is not None
    y_all, z_all = method.transforms.normalise(tokens, mean, std)
    rows = torch.tensor([5, 0, 3])
    y, z = method.transforms.normalise(tokens[rows], mean, std)
    assert torch.equal(y, y_all[rows]) and torch.equal(z, z_all[rows])


@pytest.mark.parametrize("threads", [1, 2])
def test_base_output_of_a_batch_equals_base_output_of_the_whole_set(backbone, threads) -> None:
    """The frozen base's product is per row too, at the default backbone's token count (8 maps
    of 196 tokens, width 240): a batch's rows of the whole set's product equal the product of
    those rows alone, bit for bit (what lets a fit compute it once; issue 23)."""
    method = make(backbone, transform_init="projection")
    assert method.transforms is not None and method.transforms.has_base
    gen = torch.Generator().manual_seed(4)
    width = method.transforms.width
    y = torch.randn(20, 8, 196, width, generator=gen)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        whole = method.transforms.base_output(y)
        for rows in (torch.tensor([7, 2, 19, 0, 11, 5, 13]), torch.tensor([3]), torch.arange(16)):
            assert torch.equal(method.transforms.base_output(y[rows]), whole[rows])
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("options", CACHED_FORMS[:2])
def test_fit_with_per_fit_features_equals_fit_without(
    backbone, images, labels, masks, options, monkeypatch
) -> None:
    """A whole fit trains to the same parameters (torch.equal) with the per-fit features as with
    the step computing everything from the raw features."""
    config = TrainingConfig(epochs=3, lr=1e-2, batch_size=4)  # batches of 4 and 2 rows
    cached = make(backbone, **options)
    fit_method(cached, support_of(cached, images, labels, masks), config, seed=1)
    monkeypatch.setattr(SemClip, "training_features", lambda self, support: support.features)
    plain = make(backbone, **options)
    fit_method(plain, support_of(plain, images, labels, masks), config, seed=1)
    a, b = cached.head_state_dict(), plain.head_state_dict()
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
