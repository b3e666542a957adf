"""TruncatedSmoothAP (MinkLoc3Dv2's loss) against a naive loop (values and gradients, float64), hand-computed
cases, properties, gradient check and errors."""

from __future__ import annotations

import math

import pytest
import torch

from crossmodal.losses import TripletLossOutput, TruncatedSmoothAP

TEACHER_STATS = ("num_triplets", "num_non_zero_triplets", "non_zero_fraction", "spread", "pos_neg_gap",
                 "mean_embedding_norm")


def naive_loss(x, pos, neg, tau=0.01, similarity="dot", k=4):
    """The paper / upstream formula one query and one positive at a time: for each query q with positives, its k
    most similar positives p each get rank_P(p) = 1 + Σ_{z ∈ P, z ≠ p} sig(s(q,z) − s(q,p)) and
    rank_all(p) = rank_P(p) + Σ_{z ∈ N} sig(s(q,z) − s(q,p)), sig(d) = 1 / (1 + exp(clamp(−d/τ, −50, 50)));
    AP(q) = mean over those positives of rank_P / rank_all; loss = 1 − mean over queries of AP(q).
    Returns (loss, number of queries with a positive)."""
    def s(i, j):
        dot = (x[i] * x[j]).sum()
        if similarity == "dot":
            return dot
        if similarity == "cosine":
            return dot / (x[i].norm() * x[j].norm())
        return -torch.sqrt(((x[i] - x[j]) ** 2).sum())

    def sig(d):
        return 1.0 / (1.0 + torch.exp(torch.clamp(-d / tau, -50.0, 50.0)))

    b = x.shape[0]
    aps = []
    for q in range(b):
        positives = [z for z in range(b) if z != q and pos[q, z]]
        negatives = [z for z in range(b) if z != q and neg[q, z]]
        if not positives:
            continue
        closest = sorted(positives, key=lambda z: -s(q, z).item())[:k]
        ratios = []
        for p in closest:
            rank_pos = 1.0 + sum(sig(s(q, z) - s(q, p)) for z in positives if z != p)
            rank_all = rank_pos + sum(sig(s(q, z) - s(q, p)) for z in negatives)
            ratios.append(rank_pos / rank_all)
        aps.append(sum(ratios) / len(ratios))
    if not aps:
        return x.sum() * 0.0, 0
    return 1.0 - sum(aps) / len(aps), len(aps)


def random_case(gen, b=10, dim=4, density=0.3):
    x = torch.randn(b, dim, dtype=torch.float64, generator=gen)
    r = torch.rand(b, b, generator=gen)
    pos = (r + r.T) / 2 < density
    neg = ~pos & (torch.rand(b, b, generator=gen) < 0.8)
    eye = torch.eye(b, dtype=torch.bool)
    return x, pos & ~eye, neg & ~eye


@pytest.mark.parametrize("similarity", ["dot", "cosine", "euclidean"])
@pytest.mark.parametrize("tau,k,scale", [(0.01, 4, 0.05), (0.1, 2, 1.0), (1.0, 50, 1.0), (0.5, 1, 1.0)])
def test_matches_naive_loop(similarity, tau, k, scale):
    gen = torch.Generator().manual_seed(int(tau * 100) + k)
    loss_fn = TruncatedSmoothAP(tau1=tau, similarity=similarity, positives_per_query=k)
    for density in (0.2, 0.45):
        x, pos, neg = random_case(gen, density=density)
        x = (x * scale).requires_grad_(True)  # small scale: tau 0.01 differences inside the clamp
        out = loss_fn(x, pos, neg)
        (grad,) = torch.autograd.grad(out.loss, x)
        ref, n_queries = naive_loss(x, pos, neg, tau, similarity, k)
        (ref_grad,) = torch.autograd.grad(ref, x)
        assert n_queries > 0 and out.stats["num_triplets"].item() == n_queries
        torch.testing.assert_close(out.loss, ref.detach(), rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(grad, ref_grad, rtol=1e-8, atol=1e-10)


def hand_case():
    """Query 0: positives 1 (similarity 1) and 2 (0.5), negative 3 (0.75); the other rows have no positives."""
    x = torch.tensor([[1.0], [1.0], [0.5], [0.75]], dtype=torch.float64)
    pos = torch.zeros(4, 4, dtype=torch.bool)
    neg = torch.zeros(4, 4, dtype=torch.bool)
    pos[0, 1] = pos[0, 2] = True
    neg[0, 3] = True
    return x, pos, neg


def test_hand_computed_smooth_case():
    # tau = 0.25 / ln 3: sig(±0.25) = 3/4 or 1/4, sig(±0.5) = 9/10 or 1/10
    x, pos, neg = hand_case()
    out = TruncatedSmoothAP(tau1=0.25 / math.log(3.0), positives_per_query=4)(x, pos, neg)
    # positive 1: rank_P = 1 + 1/10, rank_all = 1.1 + 1/4; positive 2: rank_P = 1 + 9/10, rank_all = 1.9 + 3/4
    ap = (1.1 / 1.35 + 1.9 / 2.65) / 2
    assert ap == pytest.approx((22 / 27 + 38 / 53) / 2)
    assert out.loss.item() == pytest.approx(1 - ap, abs=1e-12)
    stats = out.floats()
    assert stats["ap"] == pytest.approx(ap, abs=1e-12)
    assert stats["num_triplets"] == 1 and stats["num_non_zero_triplets"] == 1 and stats["non_zero_fraction"] == 1
    assert stats["best_positive_ranking"] == 0 and stats["recall_at_1"] == 1  # 0.75 < 1: the negative is second
    assert stats["pos_neg_gap"] == pytest.approx(0.25 - 0.5)  # nearest negative 0.25 away, farthest positive 0.5
    assert stats["positives_per_query"] == pytest.approx(2 / 4)
    assert stats["mean_embedding_norm"] == pytest.approx((1 + 1 + 0.5 + 0.75) / 4)


def test_hand_computed_hard_ranking_case():
    # a tiny tau turns the sigmoid into a step: ranks 1 and 3 of the positives → AP = (1/1 + 2/3) / 2
    x, pos, neg = hand_case()
    out = TruncatedSmoothAP(tau1=1e-3)(x, pos, neg)
    assert out.loss.item() == pytest.approx(1 - 5 / 6, abs=1e-12)
    # only the closest positive counted (k = 1): rank 1 of 1
    assert TruncatedSmoothAP(tau1=1e-3, positives_per_query=1)(x, pos, neg).loss.item() == pytest.approx(0, abs=1e-12)
    # the negative moved ahead of both positives: ranks 2 and 3 → AP = (1/2 + 2/3) / 2; recall@1 lost
    x2 = x.clone()
    x2[3, 0] = 2.0
    out = TruncatedSmoothAP(tau1=1e-3)(x2, pos, neg)
    assert out.loss.item() == pytest.approx(1 - (1 / 2 + 2 / 3) / 2, abs=1e-12)
    assert out.floats()["best_positive_ranking"] == 1 and out.floats()["recall_at_1"] == 0


@pytest.mark.parametrize("similarity", ["dot", "cosine", "euclidean"])
def test_loss_lies_in_zero_one(similarity):
    gen = torch.Generator().manual_seed(3)
    for tau in (0.01, 0.1, 10.0):
        for _ in range(5):
            x, pos, neg = random_case(gen, b=12, density=0.35)
            loss = TruncatedSmoothAP(tau1=tau, similarity=similarity)(x * 3, pos, neg).loss.item()
            assert 0.0 <= loss <= 1.0


def clustered(places=4, per_place=3, dim=8, noise=1e-3, seed=0):
    """Tight clusters on orthogonal directions; positives = same place, negatives = other places."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.arange(places).repeat_interleave(per_place)
    x = torch.eye(dim, dtype=torch.float64)[labels] + noise * torch.randn(len(labels), dim, dtype=torch.float64,
                                                                           generator=gen)
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(len(labels), dtype=torch.bool)
    return x, same & ~eye, ~same


@pytest.mark.parametrize("similarity", ["dot", "cosine", "euclidean"])
def test_zero_when_every_positive_is_far_more_similar(similarity):
    x, pos, neg = clustered()
    x.requires_grad_(True)
    out = TruncatedSmoothAP(tau1=0.01, similarity=similarity)(x, pos, neg)
    assert out.loss.item() == pytest.approx(0.0, abs=1e-12)
    stats = out.floats()
    assert stats["num_non_zero_triplets"] == 0 and stats["recall_at_1"] == 1 and stats["ap"] == pytest.approx(1.0)
    assert stats["pos_neg_gap"] > 1.0
    out.loss.backward()
    assert torch.isfinite(x.grad).all()


def test_every_negative_ahead_gives_ap_one_over_one_plus_negatives():
    # 1-D, Euclidean: places {0, 1} and {2, 3}; items 0 and 1 lie far apart, so both negatives rank ahead
    x = torch.tensor([[0.0], [10.0], [1.0], [1.1]], dtype=torch.float64)
    same = torch.tensor([0, 0, 1, 1])[:, None] == torch.tensor([0, 0, 1, 1])[None, :]
    pos, neg = same & ~torch.eye(4, dtype=torch.bool), ~same
    out = TruncatedSmoothAP(tau1=0.01, similarity="euclidean")(x, pos, neg)
    # queries 0 and 1: AP = 1 / (1 + 2); queries 2 and 3: their positive is the nearest item, AP = 1
    assert out.loss.item() == pytest.approx(1 - (1 / 3 + 1 / 3 + 1 + 1) / 4, abs=1e-12)
    stats = out.floats()
    assert stats["best_positive_ranking"] == pytest.approx(1.0) and stats["recall_at_1"] == pytest.approx(0.5)
    assert stats["num_non_zero_triplets"] == 2


def test_queries_without_positives_are_ignored():
    gen = torch.Generator().manual_seed(5)
    x, pos, neg = random_case(gen, b=9, density=0.4)
    pos[4] = False  # row 4: no positives; it stays a positive / negative of others
    loss_fn = TruncatedSmoothAP(tau1=0.1)
    out = loss_fn(x, pos, neg)
    ref, n_queries = naive_loss(x, pos, neg, tau=0.1)
    assert out.stats["num_triplets"].item() == n_queries == int(pos.any(dim=1).sum())
    torch.testing.assert_close(out.loss, ref, rtol=1e-10, atol=1e-12)
    # an item taking no part in any ranking changes nothing and gets no gradient
    pos[:, 4] = neg[:, 4] = neg[4] = False
    keep = [i for i in range(9) if i != 4]
    x.requires_grad_(True)
    out = loss_fn(x, pos, neg)
    out.loss.backward()
    assert torch.all(x.grad[4] == 0)
    torch.testing.assert_close(out.loss, loss_fn(x[keep], pos[keep][:, keep], neg[keep][:, keep]).loss)


def test_fewer_positives_than_positives_per_query():
    gen = torch.Generator().manual_seed(6)
    x, pos, neg = random_case(gen, b=8, density=0.25)
    assert pos.sum(dim=1).max() < 4 and pos.sum(dim=1).max() >= 1
    most = int(pos.sum(dim=1).max())
    losses = [TruncatedSmoothAP(tau1=0.1, positives_per_query=k)(x, pos, neg).loss for k in (most, 4, 8, 100)]
    for loss in losses[1:]:  # only the real positives are averaged; k above the batch size is capped
        torch.testing.assert_close(loss, losses[0], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(losses[0], naive_loss(x, pos, neg, tau=0.1, k=100)[0], rtol=1e-10, atol=1e-12)


def test_batch_without_positives_gives_a_zero_connected_loss():
    x = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    none = torch.zeros(5, 5, dtype=torch.bool)
    out = TruncatedSmoothAP()(x, none, ~none)
    assert out.loss.item() == 0.0 and out.stats["num_triplets"].item() == 0
    assert out.floats()["non_zero_fraction"] == 0 and out.floats()["recall_at_1"] == 0
    out.loss.backward()
    assert torch.all(x.grad == 0)


def test_diagonal_of_the_masks_is_cleared():
    gen = torch.Generator().manual_seed(7)
    x, pos, neg = random_case(gen)
    eye = torch.eye(x.shape[0], dtype=torch.bool)
    loss_fn = TruncatedSmoothAP(tau1=0.1)
    torch.testing.assert_close(loss_fn(x, pos | eye, neg | eye).loss, loss_fn(x, pos, neg).loss)
    torch.testing.assert_close(loss_fn(x, pos.int(), neg.float()).loss, loss_fn(x, pos, neg).loss)


@pytest.mark.parametrize("similarity", ["dot", "cosine", "euclidean"])
def test_gradcheck(similarity):
    gen = torch.Generator().manual_seed(8)
    x, pos, neg = random_case(gen, b=7, dim=3, density=0.4)
    loss_fn = TruncatedSmoothAP(tau1=0.3, similarity=similarity, positives_per_query=2)
    assert torch.autograd.gradcheck(lambda e: loss_fn(e, pos, neg).loss, (x.requires_grad_(True),))


def test_stats_and_output_type():
    gen = torch.Generator().manual_seed(9)
    x, pos, neg = random_case(gen)
    out = TruncatedSmoothAP()(x.float(), pos, neg)
    assert isinstance(out, TripletLossOutput)
    for key in TEACHER_STATS + ("ap", "best_positive_ranking", "recall_at_1"):
        assert out.stats[key].dim() == 0 and not out.stats[key].requires_grad, key
    floats = out.floats()
    assert floats["loss"] == pytest.approx(1 - floats["ap"], abs=1e-6)
    assert 0 <= floats["non_zero_fraction"] <= 1 and 0 <= floats["recall_at_1"] <= 1


def test_half_precision_embeddings_are_scored_in_float32():
    gen = torch.Generator().manual_seed(10)
    x, pos, neg = random_case(gen)
    out = TruncatedSmoothAP(tau1=0.1)(x.to(torch.bfloat16), pos, neg)
    assert out.loss.dtype == torch.float32 and torch.isfinite(out.loss)
    ref = TruncatedSmoothAP(tau1=0.1)(x.to(torch.bfloat16).double(), pos, neg).loss
    assert out.loss.item() == pytest.approx(ref.item(), abs=1e-5)


def test_errors_and_repr():
    with pytest.raises(ValueError, match="similarity"):
        TruncatedSmoothAP(similarity="angular")
    with pytest.raises(ValueError, match="tau1"):
        TruncatedSmoothAP(tau1=0)
    with pytest.raises(ValueError, match="positives_per_query"):
        TruncatedSmoothAP(positives_per_query=0)
    loss_fn = TruncatedSmoothAP()
    with pytest.raises(ValueError, match="positives_mask"):
        loss_fn(torch.randn(4, 2), torch.zeros(3, 3, dtype=torch.bool), torch.zeros(4, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"\[B, D\]"):
        loss_fn(torch.randn(4), torch.zeros(4, 4, dtype=torch.bool), torch.zeros(4, 4, dtype=torch.bool))
    assert repr(loss_fn) == "TruncatedSmoothAP(tau1=0.01, similarity='dot', positives_per_query=4)"
