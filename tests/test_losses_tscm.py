"""TSCMCrossMetric, TSCMMiner and TSCM's triplet (BatchHardTripletLoss with TSCMMiner and the plain mean) against
naive loops over (mined and hand-made) triplets, float64; properties and errors."""

from __future__ import annotations

import math

import pytest
import torch

from crossmodal.losses import (
    BatchHardMiner,
    BatchHardTripletLoss,
    TSCMCrossMetric,
    TSCMMiner,
)

F64 = torch.float64


def unit(v):
    return v / torch.sqrt(sum(v[k] ** 2 for k in range(v.shape[0])))


def sqd(u, v):
    return sum((u[k] - v[k]) ** 2 for k in range(u.shape[0]))


def naive_term(s, t, a, p, n, margin, soft):
    """The doc's formula for one triplet, on already normalised rows."""
    inner = margin + sqd(s[a], t[p]) + sqd(s[p], t[a])
    if soft:
        inner = inner + sqd(s[a], t[a]) + sqd(s[p], t[p]) + sqd(s[n], t[n])
    return 0.5 * inner**2


def naive_mine(s, pos, neg):
    """Loop mining on the (normalised) student: hardest positive = farthest, hardest negative = nearest."""
    b = s.shape[0]
    out = []
    for a in range(b):
        ps = [j for j in range(b) if j != a and pos[a, j]]
        ns = [j for j in range(b) if j != a and neg[a, j]]
        if ps and ns:
            p = max(ps, key=lambda j: (sqd(s[a], s[j]).item(), -j))
            n = min(ns, key=lambda j: (sqd(s[a], s[j]).item(), j))
            out.append((a, p, n))
    return out


def naive_loss(student, teacher, pos, neg, margin=0.1, soft=True, triplets=None):
    s = torch.stack([unit(x) for x in student])
    t = torch.stack([unit(x) for x in teacher])
    triplets = naive_mine(s.detach(), pos, neg) if triplets is None else triplets
    if not triplets:
        return student.sum() * 0, triplets
    return sum(naive_term(s, t, a, p, n, margin, soft) for a, p, n in triplets) / len(triplets), triplets


def random_case(gen, b, ds, dt=None):
    s = torch.randn(b, ds, dtype=F64, generator=gen)
    t = torch.randn(b, dt or ds, dtype=F64, generator=gen)
    r = torch.rand(b, b, generator=gen)
    pos = (r + r.T) / 2 < 0.3
    neg = ~pos & (torch.rand(b, b, generator=gen) < 0.7)
    eye = torch.eye(b, dtype=torch.bool)
    return s, t, pos & ~eye, neg & ~eye


@pytest.mark.parametrize("soft", [True, False])
@pytest.mark.parametrize("margin", [0.1, 0.5])
def test_batch_hard_mining_matches_naive_loop(single_thread, soft, margin):
    gen = torch.Generator().manual_seed(0)
    fn = TSCMCrossMetric(margin=margin, soft=soft, miner=BatchHardMiner())
    for _ in range(4):
        s, t, pos, neg = random_case(gen, int(torch.randint(3, 8, (), generator=gen)), 3)
        s1, s2 = s.clone().requires_grad_(True), s.clone().requires_grad_(True)
        t1 = t.clone().requires_grad_(True)
        out = fn(s1, t1, pos, neg)
        ref, triplets = naive_loss(s2, t, pos, neg, margin, soft)
        torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-12)
        assert fn.components["num_triplets"].item() == len(triplets)
        out.backward()
        ref.backward()
        torch.testing.assert_close(s1.grad, s2.grad, rtol=1e-8, atol=1e-12)
        assert t1.grad is None


def test_hand_made_triplets():
    # 4 items in two places: (0, 1) and (2, 3) are mutual positives, the other pairs negatives; one positive and
    # a nearest negative per anchor, so the triplets are known without mining
    s = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0], [-0.6, 0.8]], dtype=F64)
    t = torch.tensor([[0.6, 0.8], [1.0, 0.0], [-1.0, 0.0], [0.0, -1.0]], dtype=F64)
    pos = torch.zeros(4, 4, dtype=torch.bool)
    pos[0, 1] = pos[1, 0] = pos[2, 3] = pos[3, 2] = True
    neg = ~pos & ~torch.eye(4, dtype=torch.bool)
    # nearest negatives on the student: 0 -> 2 (|s0 - s2|² = 2, |s0 - s3|² = 3.2), 1 -> 2 (0.8 < 2 for 3),
    # 2 -> 1 (0.8 < 2), 3 -> 1 (2 vs 3.2 for 0: 1)
    triplets = [(0, 1, 2), (1, 0, 2), (2, 3, 1), (3, 2, 1)]
    for soft in (True, False):
        fn = TSCMCrossMetric(margin=0.1, soft=soft, miner=BatchHardMiner())
        ref, _ = naive_loss(s, t, pos, neg, 0.1, soft, triplets)
        assert fn(s, t, pos, neg).item() == pytest.approx(ref.item(), rel=1e-12)
    # anchor 0 by hand: cross = |s0 - t1|² + |s1 - t0|² = 0 + (0.2² + 0.2²) = 0.08
    #                   soft = |s0 - t0|² + |s1 - t1|² + |s2 - t2|² = 0.8 + 0.4 + 2
    assert naive_term(s, t, 0, 1, 2, 0.1, False).item() == pytest.approx(0.5 * (0.1 + 0.08) ** 2)
    assert naive_term(s, t, 0, 1, 2, 0.1, True).item() == pytest.approx(0.5 * (0.1 + 0.08 + 3.2) ** 2)
    fn = TSCMCrossMetric(miner=BatchHardMiner())
    fn(s, t, pos, neg)
    cross = [0.08, 0.08, sqd(s[2], t[3]) + sqd(s[3], t[2]), sqd(s[3], t[2]) + sqd(s[2], t[3])]
    assert fn.components["cross_metric"].item() == pytest.approx(sum(float(c) for c in cross) / 4)


def test_properties():
    gen = torch.Generator().manual_seed(1)
    s, t, pos, neg = random_case(gen, 8, 4)
    fn, cm = TSCMCrossMetric(miner=BatchHardMiner()), TSCMCrossMetric(soft=False, miner=BatchHardMiner())
    # the same-sample terms vanish when the student equals the teacher
    assert fn(t, t, pos, neg).item() == pytest.approx(cm(t, t, pos, neg).item(), rel=1e-12)
    assert fn.components["soft"].item() == pytest.approx(0.0, abs=1e-12)
    # descriptors are normalised: invariant to per-row positive scaling
    row = torch.rand(8, 1, dtype=F64, generator=gen) + 0.1
    assert fn(s * row, t / row, pos, neg).item() == pytest.approx(fn(s, t, pos, neg).item(), rel=1e-10)
    # the loss floor is 0.5·m² (every distance 0): one place, all items identical
    same = torch.ones(4, 3, dtype=F64)
    pos1 = torch.tensor([[0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1], [0, 0, 1, 0]], dtype=torch.bool)
    assert fn(same, same, pos1, ~pos1 & ~torch.eye(4, dtype=torch.bool)).item() == pytest.approx(0.5 * 0.1**2)


def test_no_triplets_gives_a_differentiable_zero():
    s = torch.randn(4, 3, requires_grad=True)
    none = torch.zeros(4, 4, dtype=torch.bool)
    fn = TSCMCrossMetric()
    out = fn(s, torch.randn(4, 3), none, ~torch.eye(4, dtype=torch.bool))
    assert out.item() == 0 and fn.components["num_triplets"].item() == 0
    out.backward()
    assert torch.equal(s.grad, torch.zeros_like(s))


def test_errors():
    s, t = torch.randn(4, 3), torch.randn(4, 3)
    m = torch.eye(4, dtype=torch.bool)
    fn = TSCMCrossMetric()
    with pytest.raises(ValueError, match="positives_mask and negatives_mask"):
        fn(s, t)
    with pytest.raises(ValueError, match="positives_mask and negatives_mask"):
        fn(s, t, m)
    with pytest.raises(ValueError, match=r"Ds=3.*Dt=5"):
        fn(s, torch.randn(4, 5), m, m)
    with pytest.raises(ValueError, match=r"negatives_mask must be \[4, 4\]"):
        fn(s, t, m, m[:3])
    with pytest.raises(ValueError, match="batch sizes differ"):
        fn(s, t[:2], m, m)


def naive_tscm_mine(s, pos, neg, margin=0.1, max_negatives=10):
    """TSCM's datasets/pitts.py rule, one anchor at a time: the nearest positive; the negatives sorted by distance,
    kept while d(a, n) < d(a, p) + sqrt(margin), at most ``max_negatives``; no violating negative, no triplet."""
    b = s.shape[0]
    out = []
    for a in range(b):
        ps = [j for j in range(b) if j != a and pos[a, j]]
        ns = [j for j in range(b) if j != a and neg[a, j]]
        if not ps or not ns:
            continue
        d = {j: math.sqrt(sqd(s[a], s[j]).item()) for j in ps + ns}
        p = min(ps, key=lambda j: (d[j], j))
        violating = [j for j in sorted(ns, key=lambda j: (d[j], j)) if d[j] < d[p] + math.sqrt(margin)]
        out += [(a, p, n) for n in violating[:max_negatives]]
    return out


@pytest.mark.parametrize("max_negatives", [1, 2, 10])
def test_tscm_miner_matches_naive_loop(max_negatives):
    gen = torch.Generator().manual_seed(3)
    seen = set()
    for _ in range(20):
        s, _, pos, neg = random_case(gen, int(torch.randint(3, 10, (), generator=gen)), 3)
        u = torch.nn.functional.normalize(s, dim=1)
        a, p, n = TSCMMiner(0.1, max_negatives)(torch.cdist(u, u), pos, neg)
        got = list(zip(a.tolist(), p.tolist(), n.tolist()))
        assert got == naive_tscm_mine(u, pos, neg, 0.1, max_negatives)
        per_anchor = [a.tolist().count(i) for i in range(len(s)) if pos[i].any() and neg[i].any()]
        seen.update(per_anchor)
    # anchors with no triplet, and with as many as allowed, were exercised
    assert 0 in seen and max(seen) == max_negatives or max_negatives == 10 and max(seen) >= 3


def test_tscm_miner_hand_made():
    # anchor 0; positive 1 at 0.5, positive 2 at 1.0 (the nearest is taken); negatives at 0.6, 0.8, 0.9 and 2:
    # threshold 0.5 + sqrt(0.1) = 0.816 keeps 3 (0.6) and 4 (0.8), nearest first
    d = torch.full((6, 6), 5.0)
    for j, v in enumerate([0.0, 0.5, 1.0, 0.6, 0.8, 0.9]):
        d[0, j] = d[j, 0] = v
    d[0, 5] = d[5, 0] = 2.0
    pos = torch.zeros(6, 6, dtype=torch.bool)
    pos[0, 1] = pos[0, 2] = True
    neg = torch.zeros(6, 6, dtype=torch.bool)
    neg[0, 3:] = True
    a, p, n = TSCMMiner(0.1, 10)(d, pos, neg)
    assert (a.tolist(), p.tolist(), n.tolist()) == ([0, 0], [1, 1], [3, 4])
    a, p, n = TSCMMiner(0.1, 1)(d, pos, neg)
    assert n.tolist() == [3]
    a, p, n = TSCMMiner(0.1, 10, threshold=0.05)(d, pos, neg)  # nothing violates: no triplet
    assert a.numel() == 0


def test_tscm_cross_metric_default_mining_matches_naive_loop(single_thread):
    gen = torch.Generator().manual_seed(4)
    fn = TSCMCrossMetric()  # TSCM's miner by default
    for _ in range(6):
        s, t, pos, neg = random_case(gen, int(torch.randint(4, 9, (), generator=gen)), 3)
        s1, s2 = s.clone().requires_grad_(True), s.clone().requires_grad_(True)
        u = torch.stack([unit(x) for x in s]).detach()
        triplets = naive_tscm_mine(u, pos, neg)
        out = fn(s1, t, pos, neg)
        ref, _ = naive_loss(s2, t, pos, neg, 0.1, True, triplets)
        torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-12)
        assert fn.components["num_triplets"].item() == len(triplets)
        out.backward()
        ref.backward()
        torch.testing.assert_close(s1.grad, s2.grad, rtol=1e-8, atol=1e-12)


def test_tscm_triplet_is_the_sum_over_all_triplets_over_their_number(single_thread):
    """TSCM's task term: TripletMarginLoss(margin 0.1, p=2, reduction='sum') over the mined triplets / their number,
    zero triplets included (our default reducer would average the non-zero ones only)."""
    gen = torch.Generator().manual_seed(5)
    fn = BatchHardTripletLoss(margin=0.1, swap=False, normalize=True, reducer="mean", miner=TSCMMiner(0.1))
    zero_seen = False
    for _ in range(8):
        s, _, pos, neg = random_case(gen, int(torch.randint(4, 9, (), generator=gen)), 3)
        u = torch.stack([unit(x) for x in s])
        triplets = naive_tscm_mine(u.detach(), pos, neg)
        out = fn(s, pos, neg)
        terms = [max(0.0, math.sqrt(sqd(u[a], u[p]).item()) - math.sqrt(sqd(u[a], u[n]).item()) + 0.1)
                 for a, p, n in triplets]
        zero_seen |= any(x == 0 for x in terms)
        ref = sum(terms) / len(terms) if terms else 0.0
        assert out.loss.item() == pytest.approx(ref, rel=1e-9, abs=1e-12)
        assert out.stats["num_triplets"].item() == len(triplets)
    assert zero_seen  # the mean over all triplets differs from the mean over non-zero ones in these cases


def test_miner_must_be_callable():
    with pytest.raises(ValueError, match="miner must be callable"):
        TSCMCrossMetric(miner="tscm")
    with pytest.raises(ValueError, match="miner must be callable"):
        BatchHardTripletLoss(miner=3)
    with pytest.raises(ValueError, match="max_negatives"):
        TSCMMiner(0.1, 0)
