"""Linear probe: L-BFGS logistic regression against scikit-learn, and the method contract."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from semclip_bench.errors import UserError
from semclip_bench.models.base import SupportSet
from semclip_bench.models.linear_probe import (
    ABSENT_CLASS_LOGIT,
    LinearProbe,
    fit_logistic_regression,
)

CLASSES = ("good", "bridge", "particle")


def _blobs(n_per: int, dim: int, centers: list[int], seed: int, spread: float = 0.05):
    """Unit-norm points around distinct basis vectors (well separated classes)."""
    gen = torch.Generator().manual_seed(seed)
    xs, ys = [], []
    for label, axis in enumerate(centers):
        base = torch.zeros(n_per, dim)
        base[:, axis] = 1.0
        xs.append(F.normalize(base + spread * torch.randn(n_per, dim, generator=gen), dim=1))
        ys.append(torch.full((n_per,), label))
    return torch.cat(xs), torch.cat(ys)


@pytest.mark.parametrize("c", [0.1, 1.0, 10.0])
def test_lbfgs_matches_sklearn_multinomial(c: float) -> None:
    sklearn = pytest.importorskip("sklearn.linear_model")
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(45, 6, generator=gen, dtype=torch.float64)
    y = torch.randint(3, (45,), generator=gen)
    weight, bias = fit_logistic_regression(x, y, 3, c=c)
    ref = sklearn.LogisticRegression(C=c, tol=1e-12, max_iter=10_000).fit(x.numpy(), y.numpy())
    ours = torch.softmax(x.double() @ weight.T + bias, dim=1)
    theirs = torch.from_numpy(ref.predict_proba(x.numpy()))
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)
    torch.testing.assert_close(weight, torch.from_numpy(ref.coef_), atol=1e-4, rtol=1e-4)


def test_fit_is_deterministic() -> None:
    x, y = _blobs(5, 8, [0, 1, 2], seed=1, spread=0.5)
    a = fit_logistic_regression(x, y, 3)
    b = fit_logistic_regression(x.clone(), y.clone(), 3)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


@pytest.fixture(scope="module")
def backbone():
    from semclip_bench.backbones import BackboneSpec, build_backbone

    return build_backbone(BackboneSpec(name="semclip-tiny"))


def _support(x: torch.Tensor, y: torch.Tensor, size: int) -> SupportSet:
    return SupportSet(
        features={"embedding": x},
        labels=y,
        masks=torch.zeros(len(y), size, size),
        class_names=CLASSES,
        category="line_space",
    )


def test_extract_and_feature_key(backbone) -> None:
    method = LinearProbe(backbone, CLASSES)
    images = torch.randn(2, 3, backbone.image_size, backbone.image_size)
    emb = method.extract(images)["embedding"]
    torch.testing.assert_close(emb, backbone.encode_image(images, normalize=True))
    torch.testing.assert_close(emb.norm(dim=1), torch.ones(2))
    assert backbone.spec.key() in method.feature_key()
    assert method.mean == tuple(backbone.mean) and method.image_size == backbone.image_size


def test_separates_well_separated_classes_and_output_contract(backbone) -> None:
    method = LinearProbe(backbone, CLASSES)
    dim, s = backbone.embed_dim, backbone.image_size
    x, y = _blobs(6, dim, [0, 1, 2], seed=2)
    method.setup_support(_support(x, y, s))
    xq, yq = _blobs(10, dim, [0, 1, 2], seed=3)
    out = method.predict({"embedding": xq})
    assert out.class_logits is not None and out.class_logits.shape == (30, 3)
    assert torch.equal(out.class_logits.argmax(dim=1), yq)
    assert out.image_score.shape == (30,) and out.anomaly_map.shape == (30, s, s)
    probs = torch.softmax(out.class_logits, dim=1)
    torch.testing.assert_close(out.image_score, 1 - probs[:, 0])
    assert float(out.image_score[yq > 0].min()) > float(out.image_score[yq == 0].max())
    # The map is the image score at every pixel (no spatial information: produces_maps False).
    assert torch.equal(out.anomaly_map, out.image_score[:, None, None].expand(-1, s, s))
    assert LinearProbe.produces_maps is False and LinearProbe.classifies


def test_method_is_deterministic_and_absent_classes_never_win(backbone) -> None:
    dim, s = backbone.embed_dim, backbone.image_size
    x, y = _blobs(4, dim, [0, 1], seed=4, spread=0.3)  # no "particle" support image
    a, b = LinearProbe(backbone, CLASSES), LinearProbe(backbone, CLASSES)
    a.setup_support(_support(x, y, s))
    b.setup_support(_support(x.clone(), y.clone(), s))
    xq, _ = _blobs(5, dim, [0, 1, 2], seed=5)
    out_a, out_b = a.predict({"embedding": xq}), b.predict({"embedding": xq})
    assert torch.equal(out_a.class_logits, out_b.class_logits)
    assert torch.equal(out_a.image_score, out_b.image_score)
    assert bool((out_a.class_logits[:, 2] == ABSENT_CLASS_LOGIT).all())
    assert bool((out_a.class_logits.argmax(dim=1) != 2).all())


def test_confident_normals_keep_distinct_scores(backbone) -> None:
    method = LinearProbe(backbone, CLASSES)
    dim, s = backbone.embed_dim, backbone.image_size
    x, y = _blobs(6, dim, [0, 1, 2], seed=6)
    method.setup_support(_support(x, y, s))
    method.bias[0] += 40.0  # p(normal) rounds to 1 in float32 for every query
    xq, _ = _blobs(8, dim, [0], seed=7)
    out = method.predict({"embedding": xq})
    assert bool((1 - torch.softmax(out.class_logits, dim=1)[:, 0] == 0).all())
    score = out.image_score
    assert bool((score > 0).all()) and len(set(score.tolist())) == 8  # ranks survive
    probs = torch.softmax(out.class_logits.double(), dim=1)
    torch.testing.assert_close(score.double(), probs[:, 1:].sum(dim=1), rtol=1e-4, atol=0)


def test_user_errors(backbone) -> None:
    with pytest.raises(UserError, match="C"):
        LinearProbe(backbone, CLASSES, C=0.0)
    method = LinearProbe(backbone, CLASSES)
    empty = torch.zeros(0, backbone.embed_dim)
    with pytest.raises(UserError, match="support"):
        method.setup_support(_support(empty, torch.zeros(0, dtype=torch.long), 8))
