"""Aggregation heads against naive loops / explicit formulas written here, plus generic head properties."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from crossmodal.models.heads import (
    HEADS,
    BoQ,
    ConvAP,
    CosPlace,
    GeMHead,
    MixVPR,
    NetVLAD,
    build_head,
    kmeans,
)

C, H, W = 16, 4, 6

FACTORIES = {
    "gem": lambda: GeMHead(C, out_dim=8),
    "netvlad": lambda: NetVLAD(C, clusters=4),
    "netvlad_out_dim": lambda: NetVLAD(C, clusters=4, out_dim=10),
    "convap": lambda: ConvAP(C, out_channels=8, s1=2, s2=3),
    "cosplace": lambda: CosPlace(C, out_dim=8),
    "mixvpr": lambda: MixVPR(C, H, W, out_channels=8, mix_depth=2, out_rows=3),
    "boq": lambda: BoQ(C, proj_channels=32, num_queries=4, num_layers=2, row_dim=4, num_heads=4),
}
DIMS = {"gem": 8, "netvlad": 4 * C, "netvlad_out_dim": 10, "convap": 8 * 2 * 3, "cosplace": 8, "mixvpr": 8 * 3,
        "boq": 32 * 4}
NORMALISED = set(FACTORIES) - {"gem"}


def fmap(*shape: int, seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def naive_l2(v: list[float]) -> list[float]:
    n = math.sqrt(sum(a * a for a in v))
    return [a / n if n > 0 else 0.0 for a in v]


# ------------------------------------------------------------------------------------------------- generic

@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_shape_dim_norm(name):
    torch.manual_seed(0)
    head = FACTORIES[name]().eval()
    out = head(fmap(3, C, H, W))
    assert out.shape == (3, DIMS[name]) and head.descriptor_dim == DIMS[name]
    if name in NORMALISED:
        torch.testing.assert_close(out.norm(dim=1), torch.ones(3))
    else:
        assert not torch.allclose(out.norm(dim=1), torch.ones(3))


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_backward_finite(name):
    torch.manual_seed(0)
    head = FACTORIES[name]().train()
    x = fmap(2, C, H, W).requires_grad_()
    (head(x) * fmap(2, DIMS[name], seed=1)).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    grads = [p.grad for p in head.parameters() if p.requires_grad]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_eval_deterministic(name):
    torch.manual_seed(0)
    head = FACTORIES[name]().eval()
    x = fmap(2, C, H, W)
    with torch.no_grad():
        assert torch.equal(head(x), head(x.clone()))


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_wrong_channels(name):
    with pytest.raises(ValueError, match=f"\\[B, {C}, H, W\\]"):
        FACTORIES[name]()(fmap(1, C + 1, H, W))


def test_registry():
    assert set(HEADS) == {"gem", "netvlad", "convap", "cosplace", "mixvpr", "boq"}
    head = build_head("ConvAP", 8, out_channels=4, s1=1, s2=1)
    assert isinstance(head, ConvAP) and head.descriptor_dim == 4
    assert isinstance(build_head(lambda c, **kw: GeMHead(c, **kw), 8, out_dim=3), GeMHead)
    with pytest.raises(ValueError, match="known"):
        build_head("vlad", 8)


def permute_positions(x: torch.Tensor, seed: int = 3) -> torch.Tensor:
    b, c, h, w = x.shape
    perm = torch.randperm(h * w, generator=torch.Generator().manual_seed(seed))
    assert not torch.equal(perm, torch.arange(h * w))
    return x.flatten(2)[:, :, perm].reshape(b, c, h, w)


# ------------------------------------------------------------------------------------------------- GeMHead

def test_gem_head_naive():
    torch.manual_seed(0)
    head = GeMHead(C, out_dim=5, p=2.5).double().eval()
    x = fmap(2, C, H, W, dtype=torch.float64)
    wgt, bias = head.conv.weight.detach()[:, :, 0, 0], head.conv.bias.detach()
    p = float(head.pool.p.detach())
    expected = torch.empty(2, 5, dtype=torch.float64)
    for b in range(2):
        for o in range(5):
            vals = [max(float(wgt[o] @ x[b, :, i, j] + bias[o]), 1e-6) ** p for i in range(H) for j in range(W)]
            expected[b, o] = (sum(vals) / len(vals)) ** (1 / p)
    with torch.no_grad():
        torch.testing.assert_close(head(x), expected)


@pytest.mark.parametrize("learn_p", [True, False])
def test_gem_head_state_dict_keys(learn_p):
    head = GeMHead(C, learn_p=learn_p)
    assert list(head.state_dict()) == ["conv.weight", "conv.bias", "pool.p"]
    assert head.pool.p.requires_grad is learn_p and head.descriptor_dim == 256


# ------------------------------------------------------------------------------------------------- NetVLAD

def naive_vlad_matrix(x, weight, bias, centroids, normalize_input):
    """Per-pixel, per-cluster loops: returns the intra-normalised [B][K][C] lists and the final vectors."""
    bsz, ch, h, w = x.shape
    k_num = centroids.shape[0]
    matrices, finals = [], []
    for b in range(bsz):
        pixels = [[float(x[b, c, i, j]) for c in range(ch)] for i in range(h) for j in range(w)]
        if normalize_input:
            pixels = [naive_l2(px) for px in pixels]
        sums = [[0.0] * ch for _ in range(k_num)]
        for px in pixels:
            logits = [sum(float(weight[k, c]) * px[c] for c in range(ch)) + float(bias[k]) for k in range(k_num)]
            top = max(logits)
            exps = [math.exp(v - top) for v in logits]
            for k in range(k_num):
                a = exps[k] / sum(exps)
                for c in range(ch):
                    sums[k][c] += a * (px[c] - float(centroids[k, c]))
        intra = [naive_l2(row) for row in sums]
        matrices.append(intra)
        finals.append(naive_l2([v for row in intra for v in row]))
    return torch.tensor(matrices, dtype=torch.float64), torch.tensor(finals, dtype=torch.float64)


@pytest.mark.parametrize("normalize_input", [True, False])
def test_netvlad_naive_loop(normalize_input):
    torch.manual_seed(0)
    ch = 5
    head = NetVLAD(ch, clusters=3, normalize_input=normalize_input).double().eval()
    with torch.no_grad():  # untie the conv from the centroids so both enter independently
        head.conv.weight.copy_(fmap(3, ch, 1, 1, seed=7, dtype=torch.float64))
        head.conv.bias.copy_(fmap(3, seed=8, dtype=torch.float64))
        head.centroids.copy_(fmap(3, ch, seed=9, dtype=torch.float64) * 0.5)
    x = fmap(2, ch, 2, 3, seed=1, dtype=torch.float64)
    matrix, final = naive_vlad_matrix(x, head.conv.weight.detach()[:, :, 0, 0], head.conv.bias.detach(),
                                      head.centroids.detach(), normalize_input)
    with torch.no_grad():
        torch.testing.assert_close(head.vlad_matrix(x), matrix, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(head(x), final, rtol=1e-10, atol=1e-12)


def test_netvlad_hand_computed():
    """C=2, K=2, pixels x1=(1,0), x2=(0,1); logits ln3·x (no bias) → a(x1)=(3/4,1/4), a(x2)=(1/4,3/4);
    c1=(0,0), c2=(2,0): V1 = 3/4(1,0)+1/4(0,1) = (3/4,1/4); V2 = 1/4(-1,0)+3/4(-2,1) = (-7/4,3/4)."""
    head = NetVLAD(2, clusters=2).double().eval()
    with torch.no_grad():
        head.conv.weight.copy_(torch.tensor([[math.log(3), 0.0], [0.0, math.log(3)]], dtype=torch.float64)[
            :, :, None, None])
        head.conv.bias.zero_()
        head.centroids.copy_(torch.tensor([[0.0, 0.0], [2.0, 0.0]], dtype=torch.float64))
        x = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64).T.reshape(1, 2, 1, 2)
        v1 = [0.75 / math.sqrt(0.625), 0.25 / math.sqrt(0.625)]
        v2 = [-1.75 / math.sqrt(3.625), 0.75 / math.sqrt(3.625)]
        expected = torch.tensor([v1 + v2], dtype=torch.float64) / math.sqrt(2)
        torch.testing.assert_close(head(x), expected, rtol=1e-12, atol=1e-12)


def test_netvlad_intra_normalisation():
    torch.manual_seed(0)
    head = NetVLAD(8, clusters=6).eval()
    with torch.no_grad():  # soft weights for clusters 0-4; cluster 5 never gets any: its block must be zero
        head.conv.weight.copy_(0.1 * fmap(6, 8, 1, 1, seed=5))
        head.conv.bias.zero_()
        head.conv.bias[5] = -1e4
        blocks = head.vlad_matrix(fmap(3, 8, 3, 3)).norm(dim=2)
        torch.testing.assert_close(blocks[:, :5], torch.ones(3, 5))
        assert torch.all(blocks[:, 5] == 0)
        # construction-time init (alpha=100): nearly hard assignment, so some blocks get (almost) no weight;
        # F.normalize divides by max(norm, 1e-12), which leaves those numerically zero
        blocks = NetVLAD(8, clusters=6).vlad_matrix(fmap(3, 8, 3, 3, seed=6)).norm(dim=2)
    unit, null = (blocks - 1).abs() < 1e-5, blocks < 1e-5
    assert torch.all(unit | null) and unit.any() and null.any()


def test_netvlad_spatial_permutation_invariance():
    torch.manual_seed(0)
    head = NetVLAD(C, clusters=4, out_dim=6).double().eval()
    x = fmap(2, C, H, W, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(head(permute_positions(x)), head(x), rtol=1e-12, atol=1e-12)


def blobs(centres: torch.Tensor, per: int, noise: float, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    pts = centres.repeat_interleave(per, 0)
    pts = pts + noise * torch.randn(pts.shape, generator=gen, dtype=centres.dtype)
    return pts[torch.randperm(len(pts), generator=gen)]


def test_kmeans_seeded_and_finds_blobs():
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]], dtype=torch.float64)
    pts = blobs(centres, 25, 0.3, seed=0)
    found = kmeans(pts, 4, seed=5)
    assert torch.equal(found, kmeans(pts, 4, seed=5))
    assert torch.cdist(centres, found).min(dim=1).values.max() < 0.3


def test_netvlad_init_from_features():
    ch, k = 8, 4
    directions = torch.eye(ch, dtype=torch.float64)[:k] * 3.0  # unit after L2
    feats = blobs(directions, 40, 0.15, seed=1).float()
    head = NetVLAD(ch, clusters=k)
    head.init_from_features(feats, seed=3)
    again = NetVLAD(ch, clusters=k).init_from_features(feats, seed=3)
    assert head.alpha == again.alpha
    for a, b in zip(head.state_dict().values(), again.state_dict().values()):
        assert torch.equal(a, b)
    truth = torch.eye(ch)[:k]
    assert torch.cdist(truth, head.centroids.detach()).min(dim=1).values.max() < 0.1

    # alpha: the nearest centroid weighs on average ln(100) more in the logits than the second nearest
    unit = torch.nn.functional.normalize(feats.double(), dim=1)
    cents = head.centroids.detach().double()
    gaps = []
    for f in unit:
        d = sorted(float(((f - c) ** 2).sum()) for c in cents)
        gaps.append(d[1] - d[0])
    assert head.alpha * sum(gaps) / len(gaps) == pytest.approx(math.log(100.0), rel=1e-5)

    # the conv realises softmax(-alpha * ||x - c_k||^2) exactly (bias -alpha*||c||^2, not -alpha*||c||)
    x = fmap(2, ch, 3, 3, seed=4)
    with torch.no_grad():
        got = torch.softmax(head.conv(torch.nn.functional.normalize(x, dim=1)).flatten(2), dim=1)
        px = torch.nn.functional.normalize(x, dim=1).flatten(2).transpose(1, 2)  # [B, N, C]
        want = torch.softmax(-head.alpha * ((px[:, :, None] - head.centroids) ** 2).sum(-1), dim=2)
    torch.testing.assert_close(got, want.transpose(1, 2), rtol=1e-4, atol=1e-5)


def test_netvlad_init_rejects_bad_input():
    head = NetVLAD(4, clusters=3)
    with pytest.raises(ValueError, match=r"\[N, 4\]"):
        head.init_from_features(torch.randn(10, 5))
    with pytest.raises(ValueError, match="at least 3"):
        head.init_from_features(torch.randn(2, 4))


# ------------------------------------------------------------------------------------------------- ConvAP

def test_convap_naive_even_cells():
    torch.manual_seed(0)
    head = ConvAP(C, out_channels=5, s1=2, s2=3).double().eval()
    x = fmap(2, C, 4, 6, dtype=torch.float64)
    wgt, bias = head.channel_pool.weight[:, :, 0, 0], head.channel_pool.bias
    y = (wgt @ x.flatten(2)).reshape(2, 5, 4, 6) + bias[None, :, None, None]  # 1×1 conv as a matmul
    cells = torch.empty(2, 5, 2, 3, dtype=torch.float64)
    for i in range(2):
        for j in range(3):
            cells[:, :, i, j] = y[:, :, 2 * i:2 * i + 2, 2 * j:2 * j + 2].mean(dim=(2, 3))
    expected = torch.stack([torch.tensor(naive_l2(row.tolist()), dtype=torch.float64)
                            for row in cells.flatten(1)])
    with torch.no_grad():
        torch.testing.assert_close(head(x), expected)


def test_convap_uneven_sizes():
    head = ConvAP(C, out_channels=4, s1=2, s2=2).eval()
    for h, w in [(5, 7), (3, 3), (1, 1)]:
        out = head(fmap(2, C, h, w))
        assert out.shape == (2, 16)
        torch.testing.assert_close(out.norm(dim=1), torch.ones(2))


# ------------------------------------------------------------------------------------------------- CosPlace

def test_cosplace_naive():
    torch.manual_seed(0)
    head = CosPlace(C, out_dim=5).double().eval()
    x = fmap(2, C, H, W, dtype=torch.float64)
    wgt, bias, p = head.fc.weight.detach(), head.fc.bias.detach(), float(head.pool.p.detach())
    assert p == 3.0
    rows = []
    for b in range(2):
        pixels = [naive_l2(x[b, :, i, j].tolist()) for i in range(H) for j in range(W)]
        gem = [(sum(max(px[c], 1e-6) ** p for px in pixels) / len(pixels)) ** (1 / p) for c in range(C)]
        rows.append(naive_l2([sum(float(wgt[o, c]) * gem[c] for c in range(C)) + float(bias[o]) for o in range(5)]))
    with torch.no_grad():
        torch.testing.assert_close(head(x), torch.tensor(rows, dtype=torch.float64))


def test_cosplace_spatial_permutation_invariance():
    torch.manual_seed(0)
    head = CosPlace(C, out_dim=6).double().eval()
    x = fmap(2, C, H, W, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(head(permute_positions(x)), head(x), rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------------------------------------------- MixVPR

def naive_mixer(x, block):
    """x [B, C, N]: x + W2 relu(W1 LN(x) + b1) + b2, LayerNorm written out (biased variance, eps 1e-5)."""
    ln, lin1, lin2 = block.mix[0], block.mix[1], block.mix[3]
    mu = x.mean(dim=-1, keepdim=True)
    var = ((x - mu) ** 2).mean(dim=-1, keepdim=True)
    z = (x - mu) / torch.sqrt(var + ln.eps) * ln.weight + ln.bias
    hidden = torch.clamp(torch.einsum("hn,bcn->bch", lin1.weight, z) + lin1.bias, min=0.0)
    return x + torch.einsum("nh,bch->bcn", lin2.weight, hidden) + lin2.bias


def test_mixvpr_naive():
    torch.manual_seed(0)
    head = MixVPR(C, H, W, out_channels=5, mix_depth=1, mlp_ratio=2, out_rows=3).double().eval()
    with torch.no_grad():  # non-trivial LayerNorm affine and biases (upstream initialises them to 1 / 0)
        for prm in (head.mix[0].mix[0].weight, head.mix[0].mix[0].bias, head.mix[0].mix[1].bias):
            prm.copy_(torch.randn_like(prm))
    x = fmap(2, C, H, W, dtype=torch.float64)
    mixed = naive_mixer(x.reshape(2, C, H * W), head.mix[0])
    with torch.no_grad():
        torch.testing.assert_close(head.mix[0](x.flatten(2)), mixed)
    wc, bc, wr, br = head.channel_proj.weight, head.channel_proj.bias, head.row_proj.weight, head.row_proj.bias
    z = torch.einsum("oc,bcn->bon", wc, mixed) + bc[None, :, None]
    r = torch.einsum("rn,bon->bor", wr, z) + br
    expected = torch.stack([torch.tensor(naive_l2(row.tolist()), dtype=torch.float64) for row in r.flatten(1)])
    with torch.no_grad():
        torch.testing.assert_close(head(x), expected)


def test_mixvpr_wrong_spatial_size():
    head = MixVPR(C, 4, 5, out_channels=4, mix_depth=1)
    with pytest.raises(ValueError, match=r"4x5.*got 5x4.*64x80"):
        head(fmap(1, C, 5, 4))


# ------------------------------------------------------------------------------------------------- BoQ

def test_boq_attention_part_permutation_invariant():
    torch.manual_seed(0)
    head = BoQ(C, proj_channels=32, num_queries=3, num_layers=2, row_dim=2, num_heads=4).double().eval()
    tokens = fmap(2, 10, 32, dtype=torch.float64)
    perm = torch.randperm(10, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = head.aggregate(tokens)
        torch.testing.assert_close(head.aggregate(tokens[:, perm]), out, rtol=1e-10, atol=1e-12)
        # the 3×3 conv sees neighbourhoods, so the full head is not invariant to moving pixels
        x = fmap(2, C, H, W, dtype=torch.float64)
        assert not torch.allclose(head(permute_positions(x)), head(x), atol=1e-6)


def test_boq_forward_is_aggregate_of_projected_tokens():
    torch.manual_seed(0)
    head = BoQ(C, proj_channels=32, num_queries=3, num_layers=1, row_dim=2, num_heads=2).double().eval()
    x = fmap(2, C, H, W, dtype=torch.float64)
    conv = torch.nn.functional.conv2d(x, head.proj_c.weight, head.proj_c.bias, padding=1)
    tokens = conv.reshape(2, 32, H * W).transpose(1, 2)
    mu, var = tokens.mean(-1, keepdim=True), tokens.var(-1, unbiased=False, keepdim=True)
    tokens = (tokens - mu) / torch.sqrt(var + 1e-5) * head.norm_input.weight + head.norm_input.bias
    with torch.no_grad():
        torch.testing.assert_close(head(x), head.aggregate(tokens))


def naive_layer_norm(x, ln):
    mu = x.mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(((x - mu) ** 2).mean(-1, keepdim=True) + ln.eps) * ln.weight + ln.bias


def naive_attention(q, k, v, mha):
    """Single-head scaled dot-product attention with the module's packed input and output projections."""
    wq, wk, wv = mha.in_proj_weight.chunk(3)
    bq, bk, bv = mha.in_proj_bias.chunk(3)
    qp, kp, vp = q @ wq.T + bq, k @ wk.T + bk, v @ wv.T + bv
    weights = torch.softmax(qp @ kp.transpose(1, 2) / math.sqrt(q.shape[-1]), dim=-1)
    return (weights @ vp) @ mha.out_proj.weight.T + mha.out_proj.bias


def test_boq_aggregate_naive():
    """Queries: LN(Q + SelfAttn(Q)); outputs: LN(CrossAttn(q, tokens)) without residual; the outputs of all
    blocks stacked along the queries, mapped by fc to row_dim per channel, flattened channel-major, L2."""
    torch.manual_seed(0)
    head = BoQ(C, proj_channels=8, num_queries=3, num_layers=2, row_dim=2, num_heads=1).double().eval()
    tokens = fmap(2, 5, 8, dtype=torch.float64)
    with torch.no_grad():
        t, outs = tokens, []
        for block in head.boqs:
            t = block.encoder(t)  # torch's own layer: not re-derived here
            q = block.queries.expand(2, -1, -1)
            q = naive_layer_norm(q + naive_attention(q, q, q, block.self_attn), block.norm_q)
            outs.append(naive_layer_norm(naive_attention(q, t, t, block.cross_attn), block.norm_out))
        stacked = torch.cat(outs, dim=1)  # [B, 6, 8]
        rows = torch.einsum("rm,bmd->bdr", head.fc.weight, stacked) + head.fc.bias  # [B, 8, 2]
        expected = torch.stack([torch.tensor(naive_l2(r.tolist()), dtype=torch.float64) for r in rows.flatten(1)])
        torch.testing.assert_close(head.aggregate(tokens), expected)


def test_boq_gradient_reaches_queries():
    torch.manual_seed(0)
    head = BoQ(C, proj_channels=32, num_queries=3, num_layers=2, row_dim=2, num_heads=4).train()
    (head(fmap(2, C, H, W)) * fmap(2, 64, seed=2)).sum().backward()
    for block in head.boqs:
        assert block.queries.grad is not None and block.queries.grad.abs().sum() > 0


def test_boq_heads_and_upstream_keys():
    assert BoQ(C, proj_channels=128).boqs[0].cross_attn.num_heads == 2  # proj_channels // 64, as upstream
    with pytest.raises(ValueError, match="num_heads"):
        BoQ(C, proj_channels=32)
    with pytest.raises(ValueError, match="num_heads"):
        BoQ(C, proj_channels=32, num_heads=5)
    keys = set(BoQ(C, proj_channels=64, num_queries=2, num_layers=1, row_dim=2).state_dict())
    assert {"proj_c.weight", "norm_input.weight", "boqs.0.queries", "boqs.0.norm_q.weight",
            "boqs.0.cross_attn.in_proj_weight", "boqs.0.norm_out.bias", "fc.weight"} <= keys


def test_published_defaults():
    assert NetVLAD(512).descriptor_dim == 64 * 512
    assert ConvAP(1024).descriptor_dim == 2048
    assert CosPlace(512).descriptor_dim == 512
    assert MixVPR(1024, 20, 20, out_channels=1024).descriptor_dim == 4096
    boq = BoQ(1024, num_queries=64)
    assert boq.descriptor_dim == 16384 and boq.proj_c.kernel_size == (3, 3)
    assert len(boq.boqs) == 2 and boq.boqs[0].self_attn.num_heads == 8
    assert isinstance(boq.boqs[0].encoder, nn.TransformerEncoderLayer)


def test_convap_export_bins_equal_adaptive_pooling():
    """At ONNX export ConvAP pools with explicit bins (the exporter cannot take adaptive pooling of a map whose
    size it does not know): the same cells as adaptive_avg_pool2d, also for sizes that do not divide."""
    from crossmodal.models.heads import _adaptive_avg_bins

    gen = torch.Generator().manual_seed(0)
    for h, w in [(4, 5), (7, 10), (3, 3), (5, 2), (1, 1)]:
        x = torch.randn(2, 3, h, w, dtype=torch.float64, generator=gen)
        for size in [(2, 2), (3, 1), (1, 1), (2, 3)]:
            torch.testing.assert_close(_adaptive_avg_bins(x, size), nn.functional.adaptive_avg_pool2d(x, size))
