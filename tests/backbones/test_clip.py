"""Tests of the shared CLIP backbone on the tiny random "semclip-tiny" model."""

from __future__ import annotations

import math

import open_clip
import pytest
import torch
import torch.nn.functional as F

import semclip_bench.backbones as backbones_pkg
from semclip_bench.backbones import (
    DEFAULT_BACKBONE,
    BackboneSpec,
    ClipBackbone,
    build_backbone,
    default_backbone_spec,
    requested_backbone_spec,
)
from semclip_bench.errors import UserError

TINY = BackboneSpec("semclip-tiny", None)


def _naive_vv(block: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Reference v-v attention written out per head with an explicit softmax."""
    attn = block.attn
    c = x.shape[-1]
    h = attn.num_heads
    hd = c // h
    y = F.layer_norm(x, (c,), block.ln_1.weight, block.ln_1.bias, block.ln_1.eps)
    qkv = y @ attn.in_proj_weight.T + attn.in_proj_bias
    v = qkv[..., 2 * c :]
    heads = []
    for i in range(h):
        vi = v[..., i * hd : (i + 1) * hd]
        logits = vi @ vi.transpose(-1, -2) * hd**-0.5
        w = torch.exp(logits - logits.max(dim=-1, keepdim=True).values)
        w = w / w.sum(dim=-1, keepdim=True)
        heads.append(w @ vi)
    o = torch.cat(heads, dim=-1)
    return block.ls_1(o @ attn.out_proj.weight.T + attn.out_proj.bias)


def _naive_forward(bb: ClipBackbone, images: torch.Tensor, vv_blocks: int):
    """Vanilla stream and v-v stream recomputed with open_clip's own block forward."""
    v = bb.model.visual
    with torch.no_grad():
        x = v._embeds(images)
        blocks = list(v.transformer.resblocks)
        first = len(blocks) - vv_blocks
        vanilla, streams = [], []
        vv = None
        for i, blk in enumerate(blocks):
            if i >= first:
                vv = (x if vv is None else vv) + _naive_vv(blk, x)
            x = blk(x)
            vanilla.append(x)
            streams.append(vv)
    return vanilla, streams


def test_attributes(bb: ClipBackbone) -> None:
    assert bb.image_size == 64 and bb.patch_size == 16 and bb.grid_size == (4, 4)
    assert bb.width == 64 and bb.embed_dim == 64 and bb.num_blocks == 4
    assert bb.default_taps() == (1, 2, 3, 4)
    assert len(bb.mean) == 3 and len(bb.std) == 3
    assert bb.mean == pytest.approx(open_clip.OPENAI_DATASET_MEAN)
    assert not any(p.requires_grad for p in bb.parameters())
    assert not bb.training
    bb.train()
    assert not bb.training and not bb.model.visual.training
    assert bb.num_parameters < 5_000_000


def test_default_taps_scale_with_depth() -> None:
    bb = build_backbone(BackboneSpec("semclip-vit-s16", None))
    assert bb.num_blocks == 12 and bb.default_taps() == (3, 6, 9, 12)
    assert bb.grid_size == (14, 14)


def test_default_spec(monkeypatch, tmp_path) -> None:
    assert DEFAULT_BACKBONE.name == "semclip-vit-m16"
    assert default_backbone_spec().name == "semclip-vit-m16"
    missing = tmp_path / "semclip-vit-m16.pt"
    monkeypatch.setattr(backbones_pkg, "DEFAULT_WEIGHTS", missing)
    assert default_backbone_spec() == BackboneSpec("semclip-vit-m16", None)
    missing.write_bytes(b"weights")
    assert default_backbone_spec() == BackboneSpec("semclip-vit-m16", str(missing))


def test_requested_spec_gives_shipped_weights_to_the_default_architecture_only(
    monkeypatch, tmp_path
) -> None:
    shipped = tmp_path / "semclip-vit-m16.pt"
    shipped.write_bytes(b"weights")
    monkeypatch.setattr(backbones_pkg, "DEFAULT_WEIGHTS", shipped)
    assert requested_backbone_spec() == BackboneSpec("semclip-vit-m16", str(shipped))
    assert requested_backbone_spec("semclip-vit-m16", None, 160).pretrained == str(shipped)
    assert requested_backbone_spec("ViT-B-16-plus-240") == BackboneSpec("ViT-B-16-plus-240", None)
    assert requested_backbone_spec(None, "other.pt").pretrained == "other.pt"


def test_pretrained_none_is_the_seeded_random_init_control(monkeypatch, tmp_path) -> None:
    shipped = tmp_path / "semclip-vit-m16.pt"
    shipped.write_bytes(b"weights")
    monkeypatch.setattr(backbones_pkg, "DEFAULT_WEIGHTS", shipped)
    assert requested_backbone_spec(None, "none") == BackboneSpec("semclip-vit-m16", None)
    assert requested_backbone_spec(None, "Random").pretrained is None
    tiny = requested_backbone_spec("semclip-tiny", "none")
    assert tiny == BackboneSpec("semclip-tiny", None)
    first, second = build_backbone(tiny), build_backbone(tiny)
    for a, b in zip(first.state_dict().values(), second.state_dict().values(), strict=True):
        assert torch.equal(a, b)  # seeded: the same weights in every build


def test_key_follows_file_content(tmp_path) -> None:
    path = tmp_path / "w.pt"
    path.write_bytes(b"first")
    spec = BackboneSpec("semclip-tiny", str(path))
    k1 = spec.key()
    assert k1 == spec.key()
    path.write_bytes(b"second, longer")
    assert spec.key() != k1
    assert BackboneSpec("semclip-tiny", "laion400m_e32").key() != TINY.key()


def test_vanilla_path_matches_encode_image(bb: ClipBackbone, images: torch.Tensor) -> None:
    ref = bb.model.encode_image(images)
    out = bb.forward_features(images)
    assert out.taps == bb.default_taps() and out.grid == (4, 4)
    torch.testing.assert_close(out.cls, ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(bb.encode_image(images), ref, atol=0, rtol=0)
    vanilla, _ = _naive_forward(bb, images, 0)
    for tap, p in zip(out.taps, out.patches, strict=True):
        assert p.shape == (3, 16, 64)
        torch.testing.assert_close(p, vanilla[tap - 1][:, 1:], atol=1e-6, rtol=0)
    assert out.patches_vv == [None] * 4
    assert not out.cls.requires_grad


@pytest.mark.parametrize("vv_blocks", [1, 2, 4])
def test_vv_branch_matches_naive(bb: ClipBackbone, images: torch.Tensor, vv_blocks: int) -> None:
    out = bb.forward_features(images, taps=(1, 2, 3, 4), vv_blocks=vv_blocks)
    vanilla, streams = _naive_forward(bb, images, vv_blocks)
    first_tap = bb.num_blocks - vv_blocks + 1
    torch.testing.assert_close(out.cls, bb.model.encode_image(images), atol=1e-5, rtol=0)
    for tap, p, pv in zip(out.taps, out.patches, out.patches_vv, strict=True):
        torch.testing.assert_close(p, vanilla[tap - 1][:, 1:], atol=1e-5, rtol=0)
        if tap < first_tap:
            assert pv is None
        else:
            assert pv is not None and pv.shape == p.shape
            torch.testing.assert_close(pv, streams[tap - 1][:, 1:], atol=1e-5, rtol=1e-5)
            assert not torch.allclose(pv, p)


def test_vv_single_block_by_hand(bb: ClipBackbone, images: torch.Tensor) -> None:
    """With one modified block the v-v stream is the residual entering it plus one v-v output."""
    out = bb.forward_features(images, taps=(3, 4), vv_blocks=1)
    last = bb.model.visual.transformer.resblocks[-1]
    x_in = bb.forward_features(images, taps=(3,)).patches[0]
    full_in = None
    with torch.no_grad():
        x = bb.model.visual._embeds(images)
        for blk in list(bb.model.visual.transformer.resblocks)[:-1]:
            x = blk(x)
        full_in = x
        expected = full_in + _naive_vv(last, full_in)
    torch.testing.assert_close(full_in[:, 1:], x_in, atol=1e-6, rtol=0)
    assert out.patches_vv[0] is None
    torch.testing.assert_close(out.patches_vv[1], expected[:, 1:], atol=1e-5, rtol=1e-5)


def test_taps_validation(bb: ClipBackbone, images: torch.Tensor) -> None:
    with pytest.raises(UserError, match="taps"):
        bb.forward_features(images, taps=(0, 2))
    with pytest.raises(UserError, match="taps"):
        bb.forward_features(images, taps=(5,))
    with pytest.raises(UserError, match="vv_blocks"):
        bb.forward_features(images, vv_blocks=5)


def test_project_tokens(bb: ClipBackbone, images: torch.Tensor) -> None:
    out = bb.forward_features(images, taps=(4,))
    proj = bb.project_tokens(out.patches[0])
    assert proj.shape == (3, 16, bb.embed_dim)
    v = bb.model.visual
    torch.testing.assert_close(proj, v.ln_post(out.patches[0]) @ v.proj)
    # gradients reach a trainable input through the frozen projection
    t = out.patches[0].clone().requires_grad_(True)
    bb.project_tokens(t).sum().backward()
    assert t.grad is not None and t.grad.abs().sum() > 0


def test_token_subsets_full_set_matches_encode_image(
    bb: ClipBackbone, images: torch.Tensor
) -> None:
    full = torch.arange(16).unsqueeze(0)
    out = bb.encode_token_subsets(images, full)
    assert out.shape == (3, 1, bb.embed_dim)
    torch.testing.assert_close(out[:, 0], bb.model.encode_image(images), atol=1e-5, rtol=0)


def test_token_subsets_windows_and_chunks(bb: ClipBackbone, images: torch.Tensor) -> None:
    # all 2x2 windows of the 4x4 grid, stride 1
    r, c = torch.meshgrid(torch.arange(3), torch.arange(3), indexing="ij")
    base = (r * 4 + c).reshape(-1, 1)
    windows = base + torch.tensor([0, 1, 4, 5]).view(1, -1)
    out = bb.encode_token_subsets(images, windows)
    small = bb.encode_token_subsets(images, windows, max_tokens=7)  # one window per chunk
    assert out.shape == (3, 9, bb.embed_dim)
    torch.testing.assert_close(out, small, atol=1e-5, rtol=0)
    # window w of image b equals the model run on exactly those tokens
    v = bb.model.visual
    with torch.no_grad():
        tok = v._embeds(images[1:2])
        seq = torch.cat([tok[:, :1], tok[:, 1 + windows[4]]], dim=1)
        ref = v.ln_post(v.transformer(seq)[:, 0]) @ v.proj
    torch.testing.assert_close(out[1, 4], ref[0], atol=1e-5, rtol=0)
    with pytest.raises(ValueError):
        bb.encode_token_subsets(images, torch.tensor([[0, 16]]))


def test_encode_text_and_text_tokens(bb: ClipBackbone) -> None:
    texts = ["a SEM image of a particle on wafer surface", "flawless wafer", "bridge"]
    tokens = bb.tokenize(texts)
    ref = bb.model.encode_text(tokens)
    torch.testing.assert_close(bb.encode_text(texts, normalize=False), ref)
    torch.testing.assert_close(bb.encode_text(texts), F.normalize(ref, dim=-1))
    emb = bb.token_embeddings(tokens)
    out = bb.encode_text_tokens(emb, tokens.argmax(dim=-1))
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)


def test_encode_text_tokens_gradients_and_deep_prompts(bb: ClipBackbone) -> None:
    tokens = bb.tokenize(["X X X X object", "X X X X damaged object"])
    eot = tokens.argmax(dim=-1)
    emb = bb.token_embeddings(tokens).detach()
    learn = torch.zeros(4, bb.text_width, requires_grad=True)
    deep = torch.randn(4, bb.text_width, requires_grad=True)
    x = torch.cat([emb[:, :1], learn.unsqueeze(0).expand(2, -1, -1), emb[:, 5:]], dim=1)
    out = bb.encode_text_tokens(x, eot, deep_prompts=[deep])
    out.sum().backward()
    assert learn.grad is not None and learn.grad.abs().sum() > 0
    assert deep.grad is not None and deep.grad.abs().sum() > 0
    assert not any(p.grad is not None for p in bb.parameters())
    # deep prompt replaces tokens 1..n at the input of block 1 (0-based): check by hand
    tower = bb.model
    with torch.no_grad():
        h = x + tower.positional_embedding
        blocks = tower.transformer.resblocks
        h = blocks[0](h, attn_mask=tower.attn_mask)
        h = torch.cat([h[:, :1], deep.unsqueeze(0).expand(2, -1, -1), h[:, 5:]], dim=1)
        h = blocks[1](h, attn_mask=tower.attn_mask)
        h = tower.ln_final(h)[torch.arange(2), eot] @ tower.text_projection
    torch.testing.assert_close(out.detach(), h, atol=1e-5, rtol=0)
    with pytest.raises(ValueError):
        bb.encode_text_tokens(x, eot, deep_prompts=[deep, deep])


def test_text_tower_under_vmap_matches_each_member_alone(bb: ClipBackbone) -> None:
    """Stacked fits run the text tower under vmap with each member's prompts: there its blocks
    take a contiguous attention layout (``_text_block_under_vmap``), with the values and
    gradients of running each member alone."""
    from torch.func import vmap

    from semclip_bench.backbones.clip import _plain_self_attention_block, is_vmapped

    assert all(_plain_self_attention_block(b) for b in bb.model.transformer.resblocks)
    tokens = bb.tokenize(["X X X X object", "X X X X damaged object"])
    eot = tokens.argmax(dim=-1)
    emb = bb.token_embeddings(tokens).detach()
    learn = torch.randn(3, 4, bb.text_width, requires_grad=True)  # 3 members' prompt tokens
    deep = torch.randn(3, 4, bb.text_width, requires_grad=True)
    seen = []

    def encode(ctx: torch.Tensor, deep_prompt: torch.Tensor) -> torch.Tensor:
        seen.append(is_vmapped(ctx))
        x = torch.cat([emb[:, :1], ctx.unsqueeze(0).expand(2, -1, -1), emb[:, 5:]], dim=1)
        return bb.encode_text_tokens(x, eot, deep_prompts=[deep_prompt])

    stacked = vmap(encode)(learn, deep)
    grads = torch.autograd.grad(stacked.square().sum(), (learn, deep))
    alone = torch.stack([encode(learn[i], deep[i]) for i in range(3)])
    alone_grads = torch.autograd.grad(alone.square().sum(), (learn, deep))
    assert seen == [True, False, False, False]
    torch.testing.assert_close(stacked, alone, atol=1e-5, rtol=0)
    for a, b in zip(grads, alone_grads, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_weights_unchanged_and_no_hooks(bb: ClipBackbone, images: torch.Tensor, state_hash) -> None:
    before = state_hash(bb)
    bb.forward_features(images, vv_blocks=4)
    bb.encode_token_subsets(images, torch.arange(16).view(4, 4))
    bb.encode_text(["a"])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bb.forward_features(images, vv_blocks=2)
    assert state_hash(bb) == before
    for m in bb.modules():
        assert not m._forward_hooks and not m._forward_pre_hooks
        assert not m._backward_hooks


def test_autocast_bf16(bb: ClipBackbone, images: torch.Tensor) -> None:
    ref = bb.forward_features(images, vv_blocks=2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = bb.forward_features(images, vv_blocks=2)
        win = bb.encode_token_subsets(images, torch.arange(16).unsqueeze(0))
        txt = bb.encode_text(["a wafer"])
        tt = bb.encode_text_tokens(bb.token_embeddings(bb.tokenize(["a"])), torch.tensor([2]))
    assert torch.isfinite(out.cls.float()).all() and torch.isfinite(win.float()).all()
    assert torch.isfinite(txt.float()).all() and torch.isfinite(tt.float()).all()
    cos = F.cosine_similarity(out.cls.float(), ref.cls, dim=-1)
    assert cos.min() > 0.98
    assert F.cosine_similarity(out.patches_vv[-1].float(), ref.patches_vv[-1], dim=-1).min() > 0.98


def test_batch_first_false_layout(images: torch.Tensor) -> None:
    """A sequence-first transformer (older open_clip) gives the same features."""
    bb = build_backbone(TINY)
    ref = bb.forward_features(images, vv_blocks=2)
    ref_win = bb.encode_token_subsets(images, torch.arange(16).view(2, 8))
    ref_txt = bb.encode_text_tokens(bb.token_embeddings(bb.tokenize(["ab"])), torch.tensor([2]))
    for tr in (bb.model.visual.transformer, bb.model.transformer):
        tr.batch_first = False
        for blk in tr.resblocks:
            blk.attn.batch_first = False
    out = bb.forward_features(images, vv_blocks=2)
    torch.testing.assert_close(out.cls, ref.cls, atol=1e-5, rtol=0)
    for a, b in zip(
        out.patches + out.patches_vv[2:], ref.patches + ref.patches_vv[2:], strict=True
    ):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    win = bb.encode_token_subsets(images, torch.arange(16).view(2, 8))
    torch.testing.assert_close(win, ref_win, atol=1e-5, rtol=0)
    txt = bb.encode_text_tokens(bb.token_embeddings(bb.tokenize(["ab"])), torch.tensor([2]))
    torch.testing.assert_close(txt, ref_txt, atol=1e-5, rtol=0)


def test_image_size_override_changes_grid() -> None:
    bb = build_backbone(BackboneSpec("semclip-tiny", None, image_size=96))
    assert bb.image_size == 96 and bb.grid_size == (6, 6)
    x = torch.randn(2, 3, 96, 96)
    out = bb.forward_features(x, vv_blocks=1)
    assert out.grid == (6, 6) and out.patches[-1].shape == (2, 36, 64)
    with pytest.raises(ValueError, match="expects"):
        bb.forward_features(torch.randn(1, 3, 64, 64))
    assert BackboneSpec("semclip-tiny", None, 96).key() != TINY.key()
    assert BackboneSpec("semclip-tiny", None, 64).key() == TINY.key()


def test_param_count_vit_s16_under_25mb_fp16() -> None:
    bb = build_backbone(BackboneSpec("semclip-vit-s16"))
    assert bb.num_parameters * 2 < 25 * 2**20
    assert math.isclose(bb.embed_dim, 256) and bb.width == 192
