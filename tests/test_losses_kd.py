"""Classic KD baselines against naive loops (values and student gradients, float64), properties and errors."""

from __future__ import annotations

import math

import pytest
import torch

from crossmodal.losses import CC, PKT, SP, DarkRank, FeatureL2, HintonKD

F64 = torch.float64


def rand(gen, *shape):
    return torch.randn(*shape, dtype=F64, generator=gen)


def orthogonal(gen, d):
    q, _ = torch.linalg.qr(rand(gen, d, d))
    return q


# ------------------------------------------------------------------------------------------ naive references


def norm(v):
    return torch.sqrt(sum(v[k] ** 2 for k in range(v.shape[0])))


def dot(u, v):
    return sum(u[k] * v[k] for k in range(u.shape[0]))


def naive_feature_l2(s, t, normalize=False):
    if normalize:
        s = torch.stack([s[i] / norm(s[i]) for i in range(s.shape[0])])
        t = torch.stack([t[i] / norm(t[i]) for i in range(t.shape[0])])
    b, d = s.shape
    return sum((s[i, k] - t[i, k]) ** 2 for i in range(b) for k in range(d)) / (b * d)


def naive_hinton(s, t, tau):
    b, d = s.shape
    total = 0
    for i in range(b):
        zs = sum(torch.exp(s[i, k] / tau) for k in range(d))
        zt = sum(torch.exp(t[i, k] / tau) for k in range(d))
        for k in range(d):
            ps, pt = torch.exp(s[i, k] / tau) / zs, torch.exp(t[i, k] / tau) / zt
            total = total + pt * (torch.log(pt) - torch.log(ps))
    return total * tau**2 / b


def naive_pkt(s, t, eps=1e-7):
    def cond(x):
        b = x.shape[0]
        xh = [x[i] / (norm(x[i]) + eps) for i in range(b)]
        k = [[(dot(xh[i], xh[j]) + 1) / 2 for j in range(b)] for i in range(b)]
        return [[k[i][j] / sum(k[i]) for j in range(b)] for i in range(b)]

    ps, pt = cond(s), cond(t)
    b = s.shape[0]
    return sum(pt[i][j] * torch.log((pt[i][j] + eps) / (ps[i][j] + eps)) for i in range(b) for j in range(b)) / b**2


def naive_sp(s, t):
    def gram_rows(x):
        b = x.shape[0]
        g = [[dot(x[i], x[j]) for j in range(b)] for i in range(b)]
        return [[g[i][j] / torch.sqrt(sum(v**2 for v in g[i])) for j in range(b)] for i in range(b)]

    gs, gt = gram_rows(s), gram_rows(t)
    b = s.shape[0]
    return sum((gt[i][j] - gs[i][j]) ** 2 for i in range(b) for j in range(b)) / b**2


def naive_cc(s, t, gamma, order):
    def corr(x):
        b = x.shape[0]
        xh = [x[i] / norm(x[i]) for i in range(b)]
        return [[sum(math.exp(-2 * gamma) * (2 * gamma) ** p / math.factorial(p) * dot(xh[i], xh[j]) ** p
                     for p in range(order + 1)) for j in range(b)] for i in range(b)]

    cs, ct = corr(s), corr(t)
    b = s.shape[0]
    return sum((cs[i][j] - ct[i][j]) ** 2 for i in range(b) for j in range(b)) / b**2


def naive_darkrank(s, t, alpha, beta, length=None):
    b = s.shape[0]
    total = 0
    for i in range(b):
        others = [j for j in range(b) if j != i]
        ranked = sorted(others, key=lambda j: (norm(t[i] - t[j]).item(), j))
        scores = [-alpha * norm(s[i] - s[j]) ** beta for j in ranked]
        n = len(ranked) if length is None else min(length, len(ranked))
        loglik = 0
        for k in range(n):
            loglik = loglik + scores[k] - torch.log(sum(torch.exp(v) for v in scores[k:]))
        total = total - loglik
    return total / b


CASES = [
    (FeatureL2(), naive_feature_l2, True),
    (FeatureL2(normalize=True), lambda s, t: naive_feature_l2(s, t, True), True),
    (HintonKD(temperature=4.0), lambda s, t: naive_hinton(s, t, 4.0), True),
    (HintonKD(temperature=0.5), lambda s, t: naive_hinton(s, t, 0.5), True),
    (PKT(), naive_pkt, False),
    (SP(), naive_sp, False),
    (CC(), lambda s, t: naive_cc(s, t, 0.4, 2), False),
    (CC(gamma=1.3, order=4), lambda s, t: naive_cc(s, t, 1.3, 4), False),
    (DarkRank(alpha=3.0, beta=3.0), lambda s, t: naive_darkrank(s, t, 3.0, 3.0), False),
    (DarkRank(alpha=1.5, beta=2.0, list_length=3), lambda s, t: naive_darkrank(s, t, 1.5, 2.0, 3), False),
]
IDS = ["feature_l2", "feature_l2_norm", "hinton_t4", "hinton_t05", "pkt", "sp", "cc", "cc_g13_o4", "darkrank",
       "darkrank_l3"]


@pytest.mark.parametrize("loss_fn,naive,same_dim", CASES, ids=IDS)
def test_matches_naive_loop(single_thread, loss_fn, naive, same_dim):
    gen = torch.Generator().manual_seed(0)
    for b, ds in ((4, 3), (6, 2)):
        dt = ds if same_dim else ds + 2
        s, t = 0.6 * rand(gen, b, ds), 0.6 * rand(gen, b, dt)
        s1, s2 = s.clone().requires_grad_(True), s.clone().requires_grad_(True)
        t1 = t.clone().requires_grad_(True)  # requires grad: must get none
        out = loss_fn(s1, t1)
        ref = naive(s2, t)
        assert out.dim() == 0
        torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-12)
        out.backward()
        ref.backward()
        torch.testing.assert_close(s1.grad, s2.grad, rtol=1e-8, atol=1e-12)
        assert t1.grad is None
        (_name, value), = loss_fn.components.items()
        assert not value.requires_grad and value.item() == pytest.approx(out.item())


@pytest.mark.parametrize("loss_fn", [FeatureL2(), FeatureL2(normalize=True), HintonKD(), PKT(), SP(), CC()],
                         ids=["feature_l2", "feature_l2_norm", "hinton", "pkt", "sp", "cc"])
def test_zero_when_student_equals_teacher(loss_fn):
    x = rand(torch.Generator().manual_seed(1), 6, 5).requires_grad_(True)
    out = loss_fn(x, x)  # the teacher side is detached inside: gradients still reach x through the student side
    assert abs(out.item()) < 1e-12
    out.backward()
    assert x.grad.abs().max() < 1e-7  # PKT's eps leaves an O(eps) gradient at the minimum


def test_masks_are_accepted_and_ignored():
    gen = torch.Generator().manual_seed(2)
    s, t = rand(gen, 6, 4), rand(gen, 6, 4)
    pos = torch.rand(6, 6, generator=gen) < 0.3
    for fn in (FeatureL2(), HintonKD(), PKT(), SP(), CC(), DarkRank()):
        assert fn(s, t, pos, ~pos).item() == fn(s, t).item()


def test_hinton_kd_is_shift_invariant_and_temperature_scaled():
    gen = torch.Generator().manual_seed(3)
    s, t = rand(gen, 4, 6), rand(gen, 4, 6)
    fn = HintonKD(temperature=2.0)
    shifted = s + rand(gen, 4, 1)  # a per-row constant shift does not change the softmax
    torch.testing.assert_close(fn(shifted, t), fn(s, t))
    assert fn(t + 3.0, t).item() == pytest.approx(0.0, abs=1e-12)
    # hand-made: two logits, tau = 1: KL([.5, .5] || softmax([0, log 3]) = [.25, .75])
    one = HintonKD(temperature=1.0)(torch.tensor([[0.0, math.log(3.0)]], dtype=F64), torch.zeros(1, 2, dtype=F64))
    assert one.item() == pytest.approx(0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75))


def test_relational_invariances():
    gen = torch.Generator().manual_seed(4)
    s, t = rand(gen, 7, 5), rand(gen, 7, 3)
    row = torch.rand(7, 1, dtype=F64, generator=gen) * 5 + 0.2  # per-row positive scales
    q = orthogonal(gen, 5)
    for fn in (PKT(), CC()):  # cosine-based: per-row scaling and rotations
        base = fn(s, t).item()
        assert fn(s * row, t).item() == pytest.approx(base, rel=1e-6)
        assert fn(s, t * row).item() == pytest.approx(base, rel=1e-6)
        assert fn(s @ q, t).item() == pytest.approx(base, rel=1e-9)
    sp = SP()
    base = sp(s, t).item()
    assert sp(3.7 * s, 0.2 * t).item() == pytest.approx(base, rel=1e-9)  # global scales
    assert sp(s @ q, t).item() == pytest.approx(base, rel=1e-9)
    assert sp(s * row, t).item() != pytest.approx(base, rel=1e-3)  # not per-row invariant (RepDistiller's form)
    # DarkRank: rotations and translations of the student do not change it
    dr = DarkRank()
    base = dr(0.3 * s, t).item()
    assert dr(0.3 * s @ q + 2.0, t).item() == pytest.approx(base, rel=1e-9)


def test_pkt_hand_made():
    # two orthogonal unit student vectors: K = [[1, .5], [.5, 1]] -> rows [2/3, 1/3]; teacher collinear:
    # K = 1 -> rows [.5, .5]; loss = mean of .5 * log(.5 / (2/3)) and .5 * log(.5 / (1/3)) over 4 entries
    s = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=F64)
    t = torch.tensor([[1.0], [2.0]], dtype=F64)
    expected = (0.5 * math.log(0.5 / (2 / 3)) + 0.5 * math.log(0.5 / (1 / 3))) * 2 / 4
    assert PKT(eps=0.0)(s, t).item() == pytest.approx(expected, rel=1e-12)
    assert PKT()(s, t).item() == pytest.approx(expected, rel=1e-6)


def test_darkrank_rewards_copying_the_teachers_ranking(single_thread):
    gen = torch.Generator().manual_seed(5)
    t = rand(gen, 8, 6)
    fn = DarkRank(alpha=1.0, beta=2.0)
    random_student = fn(rand(gen, 8, 6), t).item()
    copy = fn(t.clone(), t).item()
    assert copy < random_student
    # same spread, another ranking: the rows permuted
    perm = torch.tensor([3, 0, 6, 1, 7, 2, 5, 4])
    assert copy < fn(t[perm], t).item()
    # a copy with the same ranking and wider gaps is more likely: the loss keeps decreasing towards 0
    wider = [fn(c * t, t).item() for c in (1.0, 1.5, 3.0)]
    assert wider[0] > wider[1] > wider[2] > 0
    # optimising a student from random moves it towards the teacher's ranking
    s = rand(gen, 8, 6).requires_grad_(True)  # plain gradient descent (an optimizer's first step imports a lot)
    first = fn(s, t).item()
    for _ in range(40):
        (grad,) = torch.autograd.grad(fn(s, t), s)
        with torch.no_grad():
            s -= 0.02 * grad
    assert fn(s, t).item() < 0.5 * first


def test_darkrank_hand_made_and_list_length():
    # anchor 0 on a line: teacher order 1, 2; student distances 1, 2 -> scores -a d^b
    t = torch.tensor([[0.0], [1.0], [3.0]], dtype=F64)
    s = torch.tensor([[0.0], [1.0], [2.0]], dtype=F64)
    fn = DarkRank(alpha=1.0, beta=1.0)
    # anchor 0: order (1, 2), scores (-1, -2); anchor 1: order (0, 2) by distances 1, 2, scores (-1, -1);
    # anchor 2: order (1, 0), scores (-1, -2)
    def nll(a, b):
        return -(a - math.log(math.exp(a) + math.exp(b)))

    expected = (nll(-1, -2) + nll(-1, -1) + nll(-1, -2)) / 3
    assert fn(s, t).item() == pytest.approx(expected, rel=1e-12)
    # list_length >= B - 1 changes nothing; list_length=1 keeps the first factor only (same value here: the last
    # factor of a Plackett-Luce likelihood is always 1)
    assert DarkRank(alpha=1.0, beta=1.0, list_length=5)(s, t).item() == pytest.approx(expected, rel=1e-12)
    assert DarkRank(alpha=1.0, beta=1.0, list_length=1)(s, t).item() == pytest.approx(expected, rel=1e-12)


def test_darkrank_gradcheck_and_duplicates():
    gen = torch.Generator().manual_seed(6)
    s, t = rand(gen, 5, 3).requires_grad_(True), rand(gen, 5, 4)
    assert torch.autograd.gradcheck(lambda x: DarkRank(alpha=1.0, beta=3.0)(x, t), (s,))
    dup = s.detach().clone()
    dup[1] = dup[0]  # zero student distance off the diagonal: finite gradient
    dup.requires_grad_(True)
    DarkRank()(dup, t).backward()
    assert torch.isfinite(dup.grad).all()
    assert torch.autograd.gradcheck(lambda x: DarkRank(normalize=True)(x, t), (s,))


def test_errors():
    s, t = torch.randn(4, 3), torch.randn(4, 5)
    for fn in (FeatureL2(), HintonKD()):
        with pytest.raises(ValueError, match=r"Ds=3.*Dt=5"):
            fn(s, t)
    for fn in (FeatureL2(), HintonKD(), PKT(), SP(), CC(), DarkRank()):
        with pytest.raises(ValueError, match="batch sizes differ"):
            fn(s, t[:3])
        with pytest.raises(ValueError, match="student must be"):
            fn(s[0], t)
        with pytest.raises(ValueError, match="teacher must be"):
            fn(s, t[None])
        with pytest.raises(TypeError, match="MultiTeacherLoss"):
            fn(s, {"a": t})
    for fn in (PKT(), SP(), CC(), DarkRank()):  # relational: different dimensions are fine
        assert torch.isfinite(fn(s, t))
    with pytest.raises(ValueError, match="B >= 2"):
        DarkRank()(s[:1], t[:1])
    with pytest.raises(ValueError, match="temperature"):
        HintonKD(temperature=0.0)
    with pytest.raises(ValueError, match="order"):
        CC(order=-1)
    with pytest.raises(ValueError, match="list_length"):
        DarkRank(list_length=0)


def test_float32_matches_float64():
    gen = torch.Generator().manual_seed(7)
    s, t = rand(gen, 16, 8), rand(gen, 16, 8)
    for fn in (FeatureL2(), HintonKD(), PKT(), SP(), CC(), DarkRank(normalize=True)):
        assert fn(s.float(), t.float()).item() == pytest.approx(fn(s, t).item(), rel=1e-4, abs=1e-6)
