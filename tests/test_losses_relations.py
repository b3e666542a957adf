"""DistilVPR relation losses against naive float64 loops, hand values and properties; WeightedSum; Hydra configs."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from crossmodal.losses import (
    AngleRelation,
    CrossAgentLoss,
    DistanceRelation,
    Euclidean,
    GeodesicRelation,
    Poincare,
    SelfAgentLoss,
    Spherical,
    Stereographic,
    WeightedSum,
)
from crossmodal.losses.relations import normalise_by_positive_mean

DT = torch.float64


def pair(gen, b, d, ds=None, scale_t=1.0):
    s = torch.randn(b, d, dtype=DT, generator=gen)
    t = torch.randn(b, ds or d, dtype=DT, generator=gen) * scale_t
    return s, t


# ------------------------------------------------------------------------------------------------ naive references


def h(d):
    """SmoothL1 (β = 1) of one difference."""
    return 0.5 * d * d if abs(d.item()) < 1 else abs(d) - 0.5


def smooth_l1_mean(a, b):
    vals = [h(x - y) for x, y in zip(a.flatten(), b.flatten())]
    return sum(vals) / len(vals)


def mse_mean(a, b):
    vals = [(x - y) ** 2 for x, y in zip(a.flatten(), b.flatten())]
    return sum(vals) / len(vals)


def euclid(a, b):
    sq = sum((a[k] - b[k]) ** 2 for k in range(a.shape[0]))
    return torch.sqrt(sq) if sq.item() > 0 else sq * 0.0  # a zero distance: no gradient (sqrt's is infinite)


def matrix(fn, x, y=None, zero_diagonal=False):
    """``fn`` over all pairs; ``zero_diagonal``: the self-distances are the constant 0 (what they are
    mathematically; a formula's rounding residue would otherwise count in ``mean(H > 0)``)."""
    y = x if y is None else y
    zero = torch.zeros((), dtype=x.dtype)
    return torch.stack([torch.stack([zero if zero_diagonal and i == j else fn(x[i], y[j])
                                     for j in range(y.shape[0])]) for i in range(x.shape[0])])


def cos(a, b):
    return (a * b).sum() / (a.norm() * b.norm())


def poincare(a, b, c=0.1, eps=1e-3):
    def to_ball(u):
        n = u.norm()
        p = torch.tanh(math.sqrt(c) * n) * u / (math.sqrt(c) * n)
        maxnorm = (1 - eps) / math.sqrt(c)
        return p / p.norm() * maxnorm if p.norm().item() > maxnorm else p

    x, y = -to_ball(a), to_ball(b)
    xy, x2, y2 = (x * y).sum(), (x * x).sum(), (y * y).sum()
    m = ((1 + 2 * c * xy + c * y2) * x + (1 - c * x2) * y) / (1 + 2 * c * xy + c ** 2 * x2 * y2)
    return 2 / math.sqrt(c) * torch.atanh(math.sqrt(c) * m.norm())


def positive_mean(m):
    vals = [v for v in m.flatten() if v.item() > 0]
    return sum(vals) / len(vals)


def naive_distance_relation(s, t, fn=euclid):
    ms, mt = matrix(fn, s, zero_diagonal=True), matrix(fn, t.detach(), zero_diagonal=True)
    return smooth_l1_mean(ms / positive_mean(ms), mt / positive_mean(mt))


def angle_tensor(x):
    b = x.shape[0]
    e = [[None] * b for _ in range(b)]
    for i in range(b):
        for j in range(b):
            diff = x[j] - x[i]
            n = diff.norm()
            e[i][j] = diff / n if n.item() > 0 else torch.zeros_like(diff)
    return [[[(e[i][j] * e[i][k]).sum() for k in range(b)] for j in range(b)] for i in range(b)]


def naive_angle(s, t, anchors=None, distinct_only=False):
    """Σ over anchors i (default all) and all j, k of SmoothL1(A_S − A_T) / (len(anchors)·B²); ``distinct_only``
    keeps the triples with i, j, k pairwise distinct (same denominator)."""
    b = s.shape[0]
    a_s, a_t = angle_tensor(s), angle_tensor(t.detach())
    anchors = range(b) if anchors is None else anchors
    total = 0
    for i in anchors:
        for j in range(b):
            for k in range(b):
                if distinct_only and len({i, j, k}) < 3:
                    continue
                total = total + h(a_s[i][j][k] - a_t[i][j][k])
    return total / (len(anchors) * b * b)


def grads(loss, x):
    (g,) = torch.autograd.grad(loss, x)
    return g


# ------------------------------------------------------------------------------------------------------- distance


def test_distance_relation_matches_loop():
    gen = torch.Generator().manual_seed(0)
    for b in (2, 3, 6):
        s, t = pair(gen, b, 4, scale_t=3.0)
        s1, s2 = s.clone().requires_grad_(True), s.clone().requires_grad_(True)
        out = DistanceRelation()(s1, t)
        ref = naive_distance_relation(s2, t)
        torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(grads(out, s1), grads(ref, s2), rtol=1e-10, atol=1e-13)


def test_distance_relation_hand_case_and_scale_invariance():
    # 1-D: S = 0, 1, 3 (off-diagonal 1, 3, 2; mean 2); T = 0, 2, 3 (2, 3, 1; mean 2)
    s = torch.tensor([[0.0], [1.0], [3.0]], dtype=DT)
    t = torch.tensor([[0.0], [2.0], [3.0]], dtype=DT)
    # normalised: S (0.5, 1.5, 1), T (1, 1.5, 0.5): differences ±0.5 on four entries -> 4·0.125 / 9
    loss = DistanceRelation()
    assert loss(s, t).item() == pytest.approx(0.5 / 9, abs=1e-15)
    assert loss.components["distance"].item() == pytest.approx(0.5 / 9, abs=1e-15)
    gen = torch.Generator().manual_seed(1)
    s, t = pair(gen, 7, 5)
    base = loss(s, t)
    torch.testing.assert_close(loss(3.7 * s, t), base)
    torch.testing.assert_close(loss(s, 0.01 * t), base)
    assert loss(2.0 * t, t).item() == pytest.approx(0.0, abs=1e-15)


def test_normalise_by_positive_mean():
    m = torch.tensor([[0.0, 2.0], [4.0, 0.0]], dtype=DT)
    torch.testing.assert_close(normalise_by_positive_mean(m), m / 3)
    z = torch.zeros(3, 3, dtype=DT)
    assert torch.equal(normalise_by_positive_mean(z), z)  # identical points: no NaN
    x = torch.ones(3, 2, dtype=DT, requires_grad=True)
    out = DistanceRelation()(x, torch.ones(3, 2, dtype=DT))
    out.backward()
    assert out.item() == 0 and torch.isfinite(x.grad).all()


def test_geodesic_relation_matches_loop():
    gen = torch.Generator().manual_seed(2)
    for b, scale in ((3, 1.0), (5, 0.5), (5, 2.0)):
        s, t = pair(gen, b, 4, scale_t=scale)
        s = s * scale
        s1, s2 = s.clone().requires_grad_(True), s.clone().requires_grad_(True)
        loss = GeodesicRelation(c=0.1)
        out = loss(s1, t)
        ref = naive_distance_relation(s2, t, fn=poincare)
        torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-13)
        torch.testing.assert_close(grads(out, s1), grads(ref, s2), rtol=1e-8, atol=1e-11)
        assert set(loss.components) == {"geodesic"}


def test_distance_relation_rejects_similarities():
    with pytest.raises(ValueError, match="distance-kind"):
        DistanceRelation(Spherical())
    DistanceRelation(Spherical(geodesic=True))  # a distance


# ---------------------------------------------------------------------------------------------------------- angle


@pytest.mark.parametrize("b", [2, 3, 7])
def test_angle_matches_triple_loop(b):
    gen = torch.Generator().manual_seed(3 + b)
    s, t = pair(gen, b, 4, scale_t=5.0)
    if b == 7:  # coinciding points in both batches (A = 0 there on both sides)
        s[5], t[5] = s[2], t[2]
    s1, s2 = s.clone().requires_grad_(True), s.clone().requires_grad_(True)
    out = AngleRelation(chunk_size=2)(s1, t)
    ref = naive_angle(s2, t)
    torch.testing.assert_close(out, ref, rtol=1e-11, atol=1e-14)
    torch.testing.assert_close(grads(out, s1), grads(ref, s2), rtol=1e-9, atol=1e-13)


def test_angle_chunked_equals_unchunked():
    gen = torch.Generator().manual_seed(10)
    s, t = pair(gen, 11, 6, scale_t=2.0)
    s_full = s.clone().requires_grad_(True)
    full = AngleRelation(chunk_size=11)(s_full, t)
    g_full = grads(full, s_full)
    for chunk in (1, 2, 3, 4, 10, 64, None):  # 11 is divisible by none of 2, 3, 4, 10
        x = s.clone().requires_grad_(True)
        out = AngleRelation(chunk_size=chunk)(x, t)
        torch.testing.assert_close(out, full, rtol=1e-13, atol=1e-15)
        torch.testing.assert_close(grads(out, x), g_full, rtol=1e-12, atol=1e-15)
    # the normalise/bmm form on the full B×B×B tensor (RKD / DistilVPR)
    def dirs(x):
        e = F.normalize(x.unsqueeze(0) - x.unsqueeze(1), p=2, dim=2)
        return torch.bmm(e, e.transpose(1, 2))

    x = s.clone().requires_grad_(True)
    ref = F.smooth_l1_loss(dirs(x), dirs(t))
    torch.testing.assert_close(full, ref, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(g_full, grads(ref, x), rtol=1e-10, atol=1e-14)


def test_angle_gradcheck_and_no_grad():
    gen = torch.Generator().manual_seed(11)
    s, t = pair(gen, 6, 3)
    s.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: AngleRelation(chunk_size=4)(x, t), (s,))
    with torch.no_grad():
        v = AngleRelation(chunk_size=4)(s, t)
    torch.testing.assert_close(v, AngleRelation()(s, t).detach())
    assert not v.requires_grad


def test_angle_sampled_anchors():
    gen = torch.Generator().manual_seed(12)
    s, t = pair(gen, 10, 4, scale_t=2.0)
    exact = AngleRelation()(s, t)
    # all anchors: exact
    torch.testing.assert_close(AngleRelation(max_anchors=10)(s, t), exact)
    torch.testing.assert_close(AngleRelation(max_anchors=50)(s, t), exact)
    # a sample: the mean over the drawn anchors (values and gradients), reproducible by seed
    loss = AngleRelation(max_anchors=3, seed=5)
    drawn = AngleRelation(max_anchors=3, seed=5).anchors(10, s.device).tolist()
    assert len(set(drawn)) == 3
    s1, s2 = s.clone().requires_grad_(True), s.clone().requires_grad_(True)
    out = loss(s1, t)
    ref = naive_angle(s2, t, anchors=drawn)
    torch.testing.assert_close(out, ref, rtol=1e-11, atol=1e-14)
    torch.testing.assert_close(grads(out, s1), grads(ref, s2), rtol=1e-9, atol=1e-13)
    # unbiased: every anchor is equally likely and the exact loss is the mean of the per-anchor losses ...
    a_s, a_t = angle_tensor(s), angle_tensor(t)
    per_anchor = torch.stack([sum(h(a_s[i][j][k] - a_t[i][j][k]) for j in range(10) for k in range(10)) / 100
                              for i in range(10)])
    torch.testing.assert_close(per_anchor.mean(), exact, rtol=1e-12, atol=1e-15)
    counts = torch.zeros(10)
    draws = AngleRelation(max_anchors=3, seed=0)
    values = []
    for _ in range(300):
        idx = draws.anchors(10, s.device)
        counts[idx] += 1
        values.append(per_anchor[idx].mean())
    assert counts.min() > 60 and counts.max() < 120  # 90 expected each
    # ... so the average of many draws approaches the exact value
    values = torch.stack(values)
    sem = values.std() / math.sqrt(len(values))
    assert abs(values.mean().item() - exact.item()) < 4 * sem.item()


def test_angle_diagonal_entries_carry_no_gradient():
    """Entries with j = i or k = i are 0 and with j = k are 1 on both sides: value and gradient equal those of the
    sum over pairwise distinct (i, j, k) only."""
    gen = torch.Generator().manual_seed(13)
    s, t = pair(gen, 5, 3, scale_t=3.0)
    s1, s2 = s.clone().requires_grad_(True), s.clone().requires_grad_(True)
    out = AngleRelation()(s1, t)
    ref = naive_angle(s2, t, distinct_only=True)
    torch.testing.assert_close(out, ref, rtol=1e-11, atol=1e-14)
    torch.testing.assert_close(grads(out, s1), grads(ref, s2), rtol=1e-9, atol=1e-13)


class _LargestOutput:
    """Records the largest tensor any aten op returns (forward and backward) while active."""

    def __init__(self):
        from torch.utils._python_dispatch import TorchDispatchMode

        outer = self

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                for leaf in torch.utils._pytree.tree_leaves(out):
                    if isinstance(leaf, torch.Tensor):
                        outer.largest = max(outer.largest, leaf.numel())
                        outer.ops += 1
                return out

        self.largest, self.ops, self.mode = 0, 0, Mode()


def test_angle_batch_512_never_allocates_a_cube(single_thread):
    """B = 512, D = 384 forward + backward: no op returns more than chunk·B² entries (B³ = 134M would be 0.5 GB in
    float32 and several times that with the gradient), and the graph saves only O(B·max(B, D)) entries."""
    b, d = 512, 384
    gen = torch.Generator().manual_seed(14)
    s = torch.randn(b, d, generator=gen).requires_grad_(True)
    t = torch.randn(b, d, generator=gen)
    loss = AngleRelation()
    chunk = loss.chunk_for(b)
    assert chunk == 16
    probe = _LargestOutput()
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda x: saved.append(x.numel()) or x, lambda x: x), probe.mode:
        out = loss(s, t)
    forward_ops = probe.ops
    with probe.mode:
        out.backward()
    assert probe.ops > forward_ops  # the probe saw the backward pass too
    assert probe.largest <= chunk * b * b < b ** 3
    assert max(saved) <= b * max(b, d)
    assert torch.isfinite(out) and out.item() > 0
    assert torch.isfinite(s.grad).all() and s.grad.abs().sum() > 0
    # smaller blocks: smaller largest tensor, same value
    probe4 = _LargestOutput()
    with probe4.mode, torch.no_grad():
        small = AngleRelation(chunk_size=4)(s, t)
    assert probe4.largest <= 4 * b * b
    torch.testing.assert_close(small, out.detach(), rtol=1e-5, atol=0)


# --------------------------------------------------------------------------------------------------- self-agent


def test_self_agent_is_the_sum_of_its_terms():
    gen = torch.Generator().manual_seed(15)
    s, t = pair(gen, 6, 4, scale_t=2.0)
    s1, s2 = s.clone().requires_grad_(True), s.clone().requires_grad_(True)
    loss = SelfAgentLoss(distance_weight=2.0, angle_weight=3.0, geodesic_weight=0.5, angle_chunk=4)
    out = loss(s1, t)
    ref = (2.0 * naive_distance_relation(s2, t) + 3.0 * naive_angle(s2, t)
           + 0.5 * naive_distance_relation(s2, t, fn=poincare))
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-13)
    torch.testing.assert_close(grads(out, s1), grads(ref, s2), rtol=1e-8, atol=1e-12)
    assert set(loss.components) == {"distance", "angle", "geodesic"}
    parts = loss.components
    torch.testing.assert_close(2 * parts["distance"] + 3 * parts["angle"] + 0.5 * parts["geodesic"], out.detach())


def test_rkd_is_a_self_agent_config():
    gen = torch.Generator().manual_seed(16)
    s, t = pair(gen, 8, 5)
    rkd = SelfAgentLoss(distance_weight=25.0, angle_weight=50.0, geodesic_weight=0.0)
    out = rkd(s, t)
    torch.testing.assert_close(out, 25 * DistanceRelation()(s, t) + 50 * AngleRelation()(s, t))
    assert set(rkd.components) == {"distance", "angle"}  # the geodesic term is not computed
    only_g = SelfAgentLoss(distance_weight=0.0, angle_weight=0.0)
    torch.testing.assert_close(only_g(s, t), GeodesicRelation()(s, t))
    assert set(only_g.components) == {"geodesic"}


def test_self_agent_matches_the_vectorised_distilvpr_formulas_in_float32():
    """The formulas of docs/distillation.md written the upstream way (pdist by expansion with the diagonal set to
    0, normalise + bmm angles, batched Möbius sums), float32, B = 48, D = 384, descriptor norms about 2."""
    gen = torch.Generator().manual_seed(17)
    s = torch.randn(48, 384, generator=gen) * 0.1
    t = torch.randn(48, 384, generator=gen) * 0.1
    c = 0.1

    def pdist(e):
        sq = e.pow(2).sum(1)
        res = (sq[:, None] + sq[None, :] - 2 * e @ e.T).clamp(min=1e-12).sqrt().clone()
        res[range(len(e)), range(len(e))] = 0
        return res

    def angles(x):
        e = F.normalize(x.unsqueeze(0) - x.unsqueeze(1), p=2, dim=2)
        return torch.bmm(e, e.transpose(1, 2)).view(-1)

    def geo(x):
        n = x.norm(dim=1, keepdim=True)
        p = torch.tanh(math.sqrt(c) * n) * x / (math.sqrt(c) * n)
        maxnorm = (1 - 1e-3) / math.sqrt(c)
        p = torch.where(p.norm(dim=1, keepdim=True) > maxnorm, p / p.norm(dim=1, keepdim=True) * maxnorm, p)
        a, b2 = -p, p
        ab = a @ b2.T
        a2, bb = a.pow(2).sum(1, keepdim=True), b2.pow(2).sum(1, keepdim=True)
        num = (1 + 2 * c * ab + c * bb.T).unsqueeze(2) * a.unsqueeze(1) + (1 - c * a2).unsqueeze(2) * b2.unsqueeze(0)
        den = 1 + 2 * c * ab + c ** 2 * a2 * bb.T
        return 2 / math.sqrt(c) * torch.atanh(math.sqrt(c) * (num / den.unsqueeze(2)).norm(dim=2))

    def norm(m):
        return m / m[m > 0].mean()

    def zero_diagonal(m):  # the batched Möbius sum leaves rounding residues (~1e-6 here) on the diagonal, which
        return m * (1 - torch.eye(len(m)))  # upstream's mean(H > 0) then counts; mathematically they are 0

    ref = (F.smooth_l1_loss(norm(pdist(s)), norm(pdist(t))) + F.smooth_l1_loss(angles(s), angles(t))
           + F.smooth_l1_loss(norm(zero_diagonal(geo(s))), norm(zero_diagonal(geo(t)))))
    torch.testing.assert_close(SelfAgentLoss()(s, t), ref, rtol=2e-4, atol=1e-7)


# -------------------------------------------------------------------------------------------------- cross-agent


def naive_cross(s, t, fn, w_st2ss, w_tt2st, distance=True):
    """``distance``: the self-relations' diagonals are the constant 0 (for arccos the loop's own value at cos = 1
    would have an infinite slope)."""
    s = s / s.norm(dim=1, keepdim=True)
    t = t.detach() / t.detach().norm(dim=1, keepdim=True)
    ss, st, tt = matrix(fn, s, zero_diagonal=distance), matrix(fn, s, t), matrix(fn, t, zero_diagonal=distance)
    return w_st2ss * mse_mean(ss, st.detach()) + w_tt2st * mse_mean(st, tt)


CROSS_CASES = [
    (Euclidean, euclid),
    (Spherical, cos),
    (lambda: Spherical(geodesic=True), lambda a, b: torch.arccos(cos(a, b).clamp(-1, 1))),
    (Poincare, poincare),
    (lambda: Stereographic(kappa=0.0), lambda a, b: 2 * euclid(a, b)),
]


@pytest.mark.parametrize("case", range(len(CROSS_CASES)))
def test_cross_agent_matches_loop(case):
    make, fn = CROSS_CASES[case]
    gen = torch.Generator().manual_seed(18 + case)
    s, t = pair(gen, 5, 4, scale_t=3.0)
    for w1, w2 in ((0.1, 0.0), (0.0, 1.0), (0.3, 0.7)):
        s1, s2 = s.clone().requires_grad_(True), s.clone().requires_grad_(True)
        loss = CrossAgentLoss(make(), w_st2ss=w1, w_tt2st=w2)
        out = loss(s1, t)
        ref = naive_cross(s2, t, fn, w1, w2, distance=fn is not cos)
        torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-13)
        torch.testing.assert_close(grads(out, s1), grads(ref, s2), rtol=1e-7, atol=1e-11)
        expected = {k for k, w in (("st2ss", w1), ("tt2st", w2)) if w}
        assert set(loss.components) == expected


def test_cross_agent_orientation_of_st_does_not_matter():
    """Upstream's Euclidean st is ‖S_j − T_i‖ (transposed); ss and tt are symmetric, so the MSEs are the same."""
    gen = torch.Generator().manual_seed(23)
    s, t = pair(gen, 6, 4)
    sn, tn = F.normalize(s, dim=1), F.normalize(t, dim=1)
    st_upstream = torch.norm(sn.unsqueeze(0) - tn.unsqueeze(1), p=2, dim=-1)
    ss = torch.norm(sn.unsqueeze(0) - sn.unsqueeze(1), p=2, dim=-1)
    tt = torch.norm(tn.unsqueeze(0) - tn.unsqueeze(1), p=2, dim=-1)
    ref = 0.1 * F.mse_loss(ss, st_upstream) + 0.5 * F.mse_loss(st_upstream, tt)
    torch.testing.assert_close(CrossAgentLoss(Euclidean(), 0.1, 0.5)(s, t), ref)


def test_cross_agent_scale_invariance_and_dimension_check():
    gen = torch.Generator().manual_seed(24)
    s, t = pair(gen, 6, 4)
    for m in (Euclidean(), Spherical(), Poincare()):
        loss = CrossAgentLoss(m, w_st2ss=0.1, w_tt2st=1.0)
        torch.testing.assert_close(loss(5.0 * s, 0.2 * t), loss(s, t))
    s256, t384 = torch.zeros(4, 256), torch.zeros(4, 384)
    with pytest.raises(ValueError, match=r"student dimension 256 and teacher dimension 384"):
        CrossAgentLoss(Euclidean())(s256, t384)
    with pytest.raises(ValueError, match="batch sizes differ"):
        CrossAgentLoss(Euclidean())(torch.zeros(3, 4), torch.zeros(4, 4))
    with pytest.raises(ValueError, match=r"\[B, D\]"):
        DistanceRelation()(torch.zeros(3), torch.zeros(3))
    assert isinstance(CrossAgentLoss("spherical").manifold, Spherical)


def test_csd_is_a_cross_agent_config():
    gen = torch.Generator().manual_seed(25)
    s, t = pair(gen, 6, 5)
    sn, tn = F.normalize(s, dim=1), F.normalize(t, dim=1)
    ref = F.mse_loss(sn @ tn.T, tn @ tn.T)
    torch.testing.assert_close(CrossAgentLoss(Spherical(), w_st2ss=0.0, w_tt2st=1.0)(s, t), ref)


MANIFOLD_CASES = [Euclidean, Spherical, lambda: Spherical(geodesic=True), Poincare,
                  lambda: Stereographic(kappa=0.3), lambda: Stereographic(kappa=-0.3)]


@pytest.mark.parametrize("case", range(len(MANIFOLD_CASES)))
def test_self_relation_diagonals_carry_no_gradient(case):
    """The doc's observation, checked: M(S,S)_ii is constant (0, or 1 for cosine) so it passes no gradient; the
    cross matrix's diagonal M(S,T)_ii does."""
    m = MANIFOLD_CASES[case]()
    gen = torch.Generator().manual_seed(26)
    s, t = pair(gen, 5, 4)
    s.requires_grad_(True)
    g_self = grads(m(s).diagonal().sum(), s)
    torch.testing.assert_close(g_self, torch.zeros_like(g_self), rtol=0, atol=1e-12)
    g_cross = grads(m(s, t).diagonal().sum(), s)
    assert g_cross.abs().min(dim=1).values.gt(0).any()


def test_cross_agent_diagonals():
    """st2ss: the diagonal terms (M(S,S)_ii − M(S,T)_ii)² add value but no gradient. tt2st: its diagonal terms
    (M(S,T)_ii − M(T,T)_ii)² do pull each S_i towards T_i."""
    gen = torch.Generator().manual_seed(27)
    s, t = pair(gen, 6, 4)
    b = 6
    off = ~torch.eye(b, dtype=torch.bool)
    sn_t = F.normalize(t, dim=1)
    for m in (Euclidean(), Spherical(), Poincare()):
        x = s.clone().requires_grad_(True)
        full = CrossAgentLoss(m, w_st2ss=1.0, w_tt2st=0.0)(x, t)
        g_full = grads(full, x)
        y = s.clone().requires_grad_(True)
        yn = F.normalize(y, dim=1)
        st = m(yn, sn_t).detach()
        off_only = ((m(yn) - st) ** 2)[off].sum() / b ** 2
        torch.testing.assert_close(g_full, grads(off_only, y), rtol=1e-9, atol=1e-13)
        if not isinstance(m, Spherical):  # E, G: M(S,T)_ii > 0 = M(S,S)_ii, so the diagonal adds value
            assert full.item() > off_only.item()
        z = s.clone().requires_grad_(True)
        full2 = CrossAgentLoss(m, w_st2ss=0.0, w_tt2st=1.0)(z, t)
        w = s.clone().requires_grad_(True)
        off2 = ((m(F.normalize(w, dim=1), sn_t) - m(sn_t)) ** 2)[off].sum() / b ** 2
        assert not torch.allclose(grads(full2, z), grads(off2, w), rtol=1e-6, atol=1e-9)


def test_distance_relation_diagonal_carries_no_gradient():
    gen = torch.Generator().manual_seed(28)
    s, t = pair(gen, 5, 3)
    x = s.clone().requires_grad_(True)
    g = grads(DistanceRelation()(x, t), x)
    y = s.clone().requires_grad_(True)
    ms, mt = matrix(euclid, y), matrix(euclid, t)
    ns, nt = ms / positive_mean(ms), mt / positive_mean(mt)
    off_only = sum(h(ns[i, j] - nt[i, j]) for i in range(5) for j in range(5) if i != j) / 25
    torch.testing.assert_close(g, grads(off_only, y), rtol=1e-10, atol=1e-13)


# ------------------------------------------------------------------------------------------------ every loss here


def all_losses():
    return {
        "distance": DistanceRelation(),
        "distance_poincare": DistanceRelation(Poincare(c=0.5)),
        "angle": AngleRelation(chunk_size=3),
        "angle_sampled": AngleRelation(max_anchors=4, seed=0),
        "geodesic": GeodesicRelation(),
        "self": SelfAgentLoss(),
        "rkd": SelfAgentLoss(25.0, 50.0, 0.0),
        "cross_euclidean": CrossAgentLoss(Euclidean(), 0.1, 1.0),
        "cross_spherical": CrossAgentLoss(Spherical(), 0.1, 1.0),
        "cross_poincare": CrossAgentLoss(Poincare(), 0.1, 1.0),
        "cross_stereographic": CrossAgentLoss(Stereographic(kappa=-0.1, learnable=True), 0.1, 1.0),
        "sum": WeightedSum({"a": {"loss": SelfAgentLoss(), "weight": 2.0},
                            "b": {"loss": CrossAgentLoss(Poincare(learnable_scale=True)), "weight": 0.5}}),
    }


@pytest.mark.parametrize("name", list(all_losses()))
def test_zero_when_student_equals_teacher(name):
    gen = torch.Generator().manual_seed(29)
    s, _ = pair(gen, 7, 4)
    loss = all_losses()[name]
    x = s.clone().requires_grad_(True)
    out = loss(x, s.clone())
    assert out.dim() == 0 and abs(out.item()) < 1e-12
    out.backward()
    torch.testing.assert_close(x.grad, torch.zeros_like(x.grad), rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", list(all_losses()))
def test_gradient_reaches_the_student_only_and_masks_are_ignored(name):
    gen = torch.Generator().manual_seed(30)
    s, t = pair(gen, 7, 4, scale_t=2.0)
    loss = all_losses()[name]
    student = s.clone().requires_grad_(True)
    teacher = t.clone().requires_grad_(True)
    pos = torch.rand(7, 7, generator=gen) < 0.3
    if "sampled" in name:
        loss.seed = None
        torch.manual_seed(0)
    out = loss(student, teacher, positives_mask=pos, negatives_mask=~pos)
    out.backward()
    assert teacher.grad is None
    assert student.grad is not None and student.grad.abs().sum() > 0
    if "sampled" in name:
        torch.manual_seed(0)
    torch.testing.assert_close(loss(s, t), out.detach())
    assert loss.components and all(not v.requires_grad and v.dim() == 0 for v in loss.components.values())
    for p in loss.parameters():
        if p.requires_grad:
            assert p.grad is not None and torch.isfinite(p.grad).all()


def test_learnable_curvature_receives_a_gradient():
    gen = torch.Generator().manual_seed(31)
    s, t = pair(gen, 6, 4)
    m = Stereographic(kappa=-0.1, learnable=True)
    for loss in (CrossAgentLoss(m, 0.1, 0.0), DistanceRelation(m)):
        m.zero_grad()
        loss(s.clone().requires_grad_(True), t).backward()
        assert m.kappa.grad is not None and m.kappa.grad.abs() > 0


# ---------------------------------------------------------------------------------------------------- WeightedSum


def test_weighted_sum_forms_components_and_parameters():
    gen = torch.Generator().manual_seed(32)
    s, t = pair(gen, 6, 4)
    a, b = DistanceRelation(), CrossAgentLoss(Stereographic(-0.1, learnable=True), 0.1, 0.5)
    ws = WeightedSum({"d": {"loss": a, "weight": 2.0}, "x": {"loss": b, "weight": 0.5}})
    ws2 = WeightedSum({"d": a, "x": b}, weights={"d": 2.0, "x": 0.5})
    out = ws(s, t)
    torch.testing.assert_close(out, 2.0 * a(s, t) + 0.5 * b(s, t))
    torch.testing.assert_close(ws2(s, t), out)
    assert set(ws.components) == {"d", "d/distance", "x", "x/st2ss", "x/tt2st"}
    torch.testing.assert_close(ws.components["x"], b(s, t).detach())
    assert [n for n, p in ws.named_parameters() if p.requires_grad] == ["terms.x.manifold.manifold.k"]
    skip = WeightedSum({"d": {"loss": a, "weight": 0.0}, "x": {"loss": b}})
    torch.testing.assert_close(skip(s, t), b(s, t))
    assert set(skip.components) == {"x", "x/st2ss", "x/tt2st"}
    nothing = WeightedSum({"d": a}, weights={"d": 0.0})
    x = s.clone().requires_grad_(True)
    assert nothing(x, t).item() == 0 and nothing.components == {}
    with pytest.raises(ValueError, match="names"):
        WeightedSum({"a.b": a})
    with pytest.raises(ValueError, match="both"):
        WeightedSum({"d": {"loss": a, "weight": 1.0}}, weights={"d": 2.0})
    with pytest.raises(ValueError, match="unknown"):
        WeightedSum({"d": a}, weights={"e": 1.0})
    with pytest.raises(TypeError, match="nn.Module"):
        WeightedSum({"d": {"loss": "rkd"}})


def test_weighted_sum_from_a_hydra_config():
    """The structure of configs/distill/distilvpr.yaml (nested _target_s inside terms)."""
    instantiate = pytest.importorskip("hydra.utils").instantiate
    from omegaconf import OmegaConf

    cfg = OmegaConf.create({
        "_target_": "crossmodal.losses.WeightedSum",
        "terms": {
            "cross_euclidean": {"weight": 1.0, "loss": {"_target_": "crossmodal.losses.CrossAgentLoss",
                                                        "manifold": {"_target_": "crossmodal.losses.Euclidean"},
                                                        "w_st2ss": 0.1, "w_tt2st": 0.0}},
            "cross_stereographic": {"weight": 1.0, "loss": {
                "_target_": "crossmodal.losses.CrossAgentLoss", "w_st2ss": 0.1, "w_tt2st": 0.0,
                "manifold": {"_target_": "crossmodal.losses.Stereographic", "kappa": -0.1, "learnable": True}}},
            "self": {"weight": 10.0, "loss": {"_target_": "crossmodal.losses.SelfAgentLoss", "distance_weight": 1.0,
                                              "angle_weight": 1.0, "geodesic_weight": 1.0, "c": 0.1}},
        },
    })
    ws = instantiate(cfg)
    assert isinstance(ws, WeightedSum) and ws.weights == {"cross_euclidean": 1.0, "cross_stereographic": 1.0,
                                                          "self": 10.0}
    gen = torch.Generator().manual_seed(33)
    s, t = pair(gen, 6, 4)
    ref = (CrossAgentLoss(Euclidean(), 0.1, 0.0)(s, t) + CrossAgentLoss(Poincare(c=0.1), 0.1, 0.0)(s, t)
           + 10.0 * SelfAgentLoss()(s, t))
    torch.testing.assert_close(ws(s, t), ref)
    kappa = ws.terms["cross_stereographic"].manifold.kappa
    assert any(p is kappa for p in ws.parameters())
