"""BatchHardTripletLoss against a naive loop (values and gradients, float64), hand-made cases, edge cases."""

from __future__ import annotations

import math

import pytest
import torch

from crossmodal.losses import BatchHardTripletLoss, Distance


def naive_loss(x, pos, neg, margin=0.2, swap=True, kind="euclidean", normalize=False):
    """Loop over anchors, positives and negatives; returns (loss, n_triplets, n_non_zero)."""
    if normalize:
        x = x / x.norm(dim=1, keepdim=True)

    def d(i, j):
        if kind == "cosine":
            return 1 - (x[i] * x[j]).sum() / (x[i].norm() * x[j].norm())
        sq = sum((x[i, k] - x[j, k]) ** 2 for k in range(x.shape[1]))
        return sq if kind == "squared_euclidean" else torch.sqrt(sq)

    b = x.shape[0]
    losses = []
    for a in range(b):
        best_p, best_n = None, None
        for p in range(b):
            if p != a and pos[a, p] and (best_p is None or d(a, p).item() > d(a, best_p).item()):
                best_p = p
        for n in range(b):
            if n != a and neg[a, n] and (best_n is None or d(a, n).item() < d(a, best_n).item()):
                best_n = n
        if best_p is None or best_n is None:
            continue
        an = d(a, best_n)
        if swap:
            pn = d(best_p, best_n)
            an = pn if pn.item() < an.item() else an
        losses.append(torch.relu(d(a, best_p) - an + margin))
    nz = [v for v in losses if v.item() > 0]
    loss = sum(nz) / len(nz) if nz else x.sum() * 0
    return loss, len(losses), len(nz)


def random_case(gen, b, dim, density=0.3):
    x = torch.randn(b, dim, dtype=torch.float64, generator=gen)
    r = torch.rand(b, b, generator=gen)
    pos = (r + r.T) / 2 < density
    neg = ~pos & ((torch.rand(b, b, generator=gen) < 0.7) | (torch.rand(b, b, generator=gen) < 0.7).T)
    eye = torch.eye(b, dtype=torch.bool)
    return x, pos & ~eye, neg & ~eye


@pytest.mark.parametrize("swap", [True, False])
@pytest.mark.parametrize("kind,normalize", [("euclidean", False), ("euclidean", True), ("squared_euclidean", False),
                                            ("cosine", False)])
def test_matches_naive_loop(swap, kind, normalize):
    gen = torch.Generator().manual_seed(0)
    loss_fn = BatchHardTripletLoss(margin=0.5 if kind == "cosine" else 0.2, swap=swap, distance=kind,
                                   normalize=normalize)
    for trial in range(8):
        b = int(torch.randint(3, 11, (), generator=gen))
        x, pos, neg = random_case(gen, b, int(torch.randint(2, 6, (), generator=gen)))
        x1 = x.clone().requires_grad_(True)
        x2 = x.clone().requires_grad_(True)
        out = loss_fn(x1, pos, neg)
        ref, nt, nz = naive_loss(x2, pos, neg, loss_fn.margin, swap, kind, normalize)
        torch.testing.assert_close(out.loss, ref.to(out.loss.dtype), rtol=1e-10, atol=1e-12)
        assert out.stats["num_triplets"].item() == nt and out.stats["num_non_zero_triplets"].item() == nz
        out.loss.backward()
        ref.backward()
        torch.testing.assert_close(x1.grad, x2.grad, rtol=1e-9, atol=1e-12)


def test_gradcheck():
    gen = torch.Generator().manual_seed(1)
    x, pos, neg = random_case(gen, 8, 4, density=0.4)
    x.requires_grad_(True)
    fn = BatchHardTripletLoss(margin=1.0)
    assert fn(x, pos, neg).stats["num_non_zero_triplets"] > 0
    assert torch.autograd.gradcheck(lambda e: fn(e, pos, neg).loss, (x,))


def test_hand_made_four_points():
    x = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0], [3.0, 0.0]], dtype=torch.float64, requires_grad=True)
    pos = torch.zeros(4, 4, dtype=torch.bool)
    pos[0, 1] = pos[1, 0] = pos[2, 3] = pos[3, 2] = True
    neg = ~pos & ~torch.eye(4, dtype=torch.bool)
    out = BatchHardTripletLoss(margin=0.2)(x, pos, neg)
    # anchors 0, 1: ap = 1, an = 2 -> 0; anchors 2, 3: ap = sqrt(13), an = 2 -> sqrt(13) - 1.8
    assert out.loss.item() == pytest.approx(math.sqrt(13) - 1.8, abs=1e-12)
    s = out.floats()
    assert (s["num_triplets"], s["num_non_zero_triplets"], s["non_zero_fraction"]) == (4, 2, 0.5)
    assert s["mean_pos_dist"] == pytest.approx((2 + 2 * math.sqrt(13)) / 4)
    assert s["mean_neg_dist"] == pytest.approx((2 + 2 + 2 + 2) / 4)
    out.loss.backward()
    # d/dx of (|x2 - x3| - |x2 - x0|) / 2 + (|x3 - x2| - |x3 - x1|) / 2
    u23 = (x[2] - x[3]).detach() / math.sqrt(13)
    expected = torch.zeros(4, 2, dtype=torch.float64)
    expected[2] = (2 * u23 - torch.tensor([0.0, 1.0], dtype=torch.float64)) / 2
    expected[3] = (-2 * u23 - torch.tensor([1.0, 0.0], dtype=torch.float64)) / 2
    expected[0] = torch.tensor([0.0, 1.0], dtype=torch.float64) / 2
    expected[1] = torch.tensor([1.0, 0.0], dtype=torch.float64) / 2
    torch.testing.assert_close(x.grad, expected)


def test_swap_uses_the_positive_negative_distance():
    # a = 0, p = 1, n = 1.4 on a line: without swap anchor 0 is satisfied (1 - 1.4 + 0.2 < 0), with swap the
    # negative is 0.4 from the positive -> 0.8; anchor 1 gives 0.8 either way; item 2 has no positive.
    x = torch.tensor([[0.0], [1.0], [1.4]], dtype=torch.float64)
    pos = torch.tensor([[0, 1, 0], [1, 0, 0], [0, 0, 0]], dtype=torch.bool)
    neg = torch.tensor([[0, 0, 1], [0, 0, 1], [1, 1, 0]], dtype=torch.bool)
    with_swap = BatchHardTripletLoss(swap=True)(x, pos, neg).floats()
    no_swap = BatchHardTripletLoss(swap=False)(x, pos, neg).floats()
    assert with_swap["loss"] == pytest.approx(0.8) and with_swap["num_non_zero_triplets"] == 2
    assert no_swap["loss"] == pytest.approx(0.8) and no_swap["num_non_zero_triplets"] == 1
    assert with_swap["num_triplets"] == no_swap["num_triplets"] == 2


def test_anchors_without_positive_or_negative_are_excluded():
    gen = torch.Generator().manual_seed(3)
    x, pos, neg = random_case(gen, 8, 3)
    pos[2] = False  # anchor 2: no positive
    neg[5] = False  # anchor 5: no negative
    xr = x.clone().requires_grad_(True)
    out = BatchHardTripletLoss(margin=5.0)(xr, pos, neg)  # large margin: every triplet is non-zero
    expected = int((pos.any(1) & neg.any(1)).sum())
    assert out.stats["num_triplets"].item() == expected == out.stats["num_non_zero_triplets"].item()
    ref, nt, _ = naive_loss(x.clone().requires_grad_(True), pos, neg, 5.0)
    assert nt == expected
    torch.testing.assert_close(out.loss, ref)


def test_no_triplets_gives_a_differentiable_zero():
    x = torch.randn(4, 3, requires_grad=True)
    none = torch.zeros(4, 4, dtype=torch.bool)
    out = BatchHardTripletLoss()(x, none, ~torch.eye(4, dtype=torch.bool))
    assert out.loss.item() == 0 and out.stats["num_triplets"].item() == 0 and out.stats["non_zero_fraction"] == 0
    out.loss.backward()
    assert torch.equal(x.grad, torch.zeros_like(x))
    # all triplets satisfied: zero too
    y = torch.tensor([[0.0], [0.1], [5.0], [5.1]], requires_grad=True)
    pos = torch.tensor([[0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1], [0, 0, 1, 0]], dtype=torch.bool)
    neg = ~pos & ~torch.eye(4, dtype=torch.bool)
    out = BatchHardTripletLoss()(y, pos, neg)
    assert out.loss.item() == 0 and out.stats["num_triplets"].item() == 4
    out.loss.backward()
    assert torch.equal(y.grad, torch.zeros_like(y))


def test_diagonal_and_shape_checks():
    x = torch.randn(3, 2, dtype=torch.float64)
    full = torch.ones(3, 3, dtype=torch.bool)
    # a diagonal set in the masks is ignored: anchor i is never its own positive or negative
    pos = torch.eye(3, dtype=torch.bool) | torch.tensor([[0, 1, 0], [1, 0, 0], [0, 0, 0]], dtype=torch.bool)
    neg = full & ~pos | torch.eye(3, dtype=torch.bool)
    a = BatchHardTripletLoss()(x, pos, neg).loss
    clean = ~torch.eye(3, dtype=torch.bool)
    b = BatchHardTripletLoss()(x, pos & clean, neg & clean).loss
    assert a.item() == b.item()
    with pytest.raises(ValueError, match="positives_mask"):
        BatchHardTripletLoss()(x, full[:2], full)
    with pytest.raises(ValueError, match="distance"):
        Distance("manhattan")


def test_spread_and_gap_diagnose_collapse():
    from crossmodal.losses.triplet import spread

    collapsed = torch.ones(6, 4) * torch.rand(6, 1) + 0.1  # every row the same direction, other lengths
    assert float(spread(collapsed)) == pytest.approx(0.0, abs=1e-6)
    basis = torch.eye(4)  # four orthonormal rows: mean (1/4, ...), each row at sqrt(3)/2 from it
    assert float(spread(basis)) == pytest.approx(3 ** 0.5 / 2, rel=1e-6)
    emb = torch.tensor([[0.0, 0.0], [0.0, 1.0], [3.0, 0.0], [3.0, 1.0]])
    pos = torch.tensor([[0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1], [0, 0, 1, 0]], dtype=torch.bool)
    out = BatchHardTripletLoss(margin=0.2, swap=False)(emb, pos, ~pos & ~torch.eye(4, dtype=torch.bool))
    assert float(out.stats["pos_neg_gap"]) == pytest.approx(3.0 - 1.0)  # hardest negative 3 away, positive 1
