"""MultiTeacherLoss (our own design) against a naive loop (float64), weight properties, special cases, errors."""

from __future__ import annotations

import math

import pytest
import torch

from crossmodal.losses import MultiTeacherLoss

F64 = torch.float64


def cos_dist(x, i, j):
    dot = sum(x[i, k] * x[j, k] for k in range(x.shape[1]))
    ni = torch.sqrt(sum(x[i, k] ** 2 for k in range(x.shape[1])))
    nj = torch.sqrt(sum(x[j, k] ** 2 for k in range(x.shape[1])))
    return 1 - dot / (ni * nj)


def naive_loss(s, teachers, names, pos, neg, soft_weight=1.0, hard_weight=1.0, tau=0.1, weighting="adaptive",
               wt=1.0, margin=0.2):
    """Returns (loss, weights [B][T])."""
    b, nt = s.shape[0], len(names)
    soft_terms, hard_terms, weights = [], [], []
    for i in range(b):
        others = [j for j in range(b) if j != i]
        ps = [j for j in others if pos[i, j]]
        ns = [j for j in others if neg[i, j]]
        soft, hard, conf = [], [], []
        for name in names:
            t = teachers[name].detach()
            zq = sum(torch.exp(-cos_dist(s, i, j) / tau) for j in others)
            zp = sum(torch.exp(-cos_dist(t, i, j) / tau) for j in others)
            kl = 0
            for j in others:
                p = torch.exp(-cos_dist(t, i, j) / tau) / zp
                q = torch.exp(-cos_dist(s, i, j) / tau) / zq
                kl = kl + p * torch.log(p / q)
            soft.append(kl)
            if ps and ns:
                hp = max(ps, key=lambda j: (cos_dist(t, i, j).item(), -j))
                hn = min(ns, key=lambda j: (cos_dist(t, i, j).item(), j))
                hard.append(torch.relu(cos_dist(s, i, hp) - cos_dist(s, i, hn) + margin))
                conf.append((cos_dist(t, i, hn) - cos_dist(t, i, hp)).item())
        if ps and ns and weighting == "adaptive":
            e = [math.exp(c / wt) for c in conf]
            w = [v / sum(e) for v in e]
        else:
            w = [1.0 / nt] * nt
        weights.append(w)
        soft_terms.append(sum(w[k] * soft[k] for k in range(nt)))
        if ps and ns:
            hard_terms.append(sum(w[k] * hard[k] for k in range(nt)))
    loss = soft_weight * sum(soft_terms) / b
    if hard_terms:
        loss = loss + hard_weight * sum(hard_terms) / len(hard_terms)
    return loss, weights


def places(gen, b, density=0.3):
    r = torch.rand(b, b, generator=gen)
    pos = (r + r.T) / 2 < density
    neg = ~pos & (torch.rand(b, b, generator=gen) < 0.7)
    eye = torch.eye(b, dtype=torch.bool)
    return pos & ~eye, neg & ~eye


@pytest.mark.parametrize("kwargs", [{}, {"weighting": "uniform"},
                                    {"soft_weight": 0.3, "hard_weight": 2.0, "temperature": 0.5,
                                     "weight_temperature": 0.2, "margin": 0.5}],
                         ids=["adaptive", "uniform", "custom"])
def test_matches_naive_loop(single_thread, kwargs):
    gen = torch.Generator().manual_seed(0)
    names = ["lidar", "fusion", "image"]
    fn = MultiTeacherLoss(names, **kwargs)
    naive_kw = {"soft_weight": kwargs.get("soft_weight", 1.0), "hard_weight": kwargs.get("hard_weight", 1.0),
                "tau": kwargs.get("temperature", 0.1), "weighting": kwargs.get("weighting", "adaptive"),
                "wt": kwargs.get("weight_temperature", 1.0), "margin": kwargs.get("margin", 0.2)}
    for b in (4, 6):
        s = torch.randn(b, 3, dtype=F64, generator=gen)
        teachers = {n: torch.randn(b, d, dtype=F64, generator=gen).requires_grad_(True)
                    for n, d in zip(names, (2, 5, 3))}
        teachers["unused"] = torch.randn(b, 7, dtype=F64, generator=gen)  # extra keys are ignored
        pos, neg = places(gen, b)
        pos[0], neg[1] = False, False  # anchors 0 (no positive) and 1 (no negative): soft only, uniform weights
        s1, s2 = s.clone().requires_grad_(True), s.clone().requires_grad_(True)
        out = fn(s1, teachers, pos, neg)
        ref, weights = naive_loss(s2, teachers, names, pos, neg, **naive_kw)
        torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(fn.sample_weights, torch.tensor(weights, dtype=F64), rtol=1e-10, atol=1e-12)
        out.backward()
        ref.backward()
        torch.testing.assert_close(s1.grad, s2.grad, rtol=1e-8, atol=1e-12)
        assert all(teachers[n].grad is None for n in names)
        c = fn.components
        assert set(c) == {"soft", "hard", "num_triplets"} | {f"weight/{n}" for n in names}
        assert not any(v.requires_grad for v in c.values())
        assert c["num_triplets"].item() == int((pos.any(1) & neg.any(1)).sum())
        for k, n in enumerate(names):
            assert c[f"weight/{n}"].item() == pytest.approx(sum(w[k] for w in weights) / b)
        total = fn.soft_weight * c["soft"] + fn.hard_weight * c["hard"]
        assert total.item() == pytest.approx(out.item())


def clustered(gen, n_places=4, per_place=2, dim=16, noise=0.02):
    """Descriptors near orthogonal place centres, masks: same place = positive, other places = negative."""
    labels = torch.arange(n_places).repeat_interleave(per_place)
    centres = torch.eye(dim, dtype=F64)[:n_places]
    x = centres[labels] + noise * torch.randn(len(labels), dim, dtype=F64, generator=gen)
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(len(labels), dtype=torch.bool)
    return x, same & ~eye, ~same


def test_weights_sum_to_one_and_favour_the_teacher_that_separates_places():
    gen = torch.Generator().manual_seed(1)
    good, pos, neg = clustered(gen)
    bad = torch.randn(8, 12, dtype=F64, generator=gen)
    s = torch.randn(8, 6, dtype=F64, generator=gen)
    fn = MultiTeacherLoss(["bad", "good"])
    fn(s, {"good": good, "bad": bad}, pos, neg)
    w = fn.sample_weights
    torch.testing.assert_close(w.sum(dim=1), torch.ones(8, dtype=F64))
    assert (w[:, 1] > w[:, 0]).all()
    assert fn.components["weight/good"] > 0.6 > fn.components["weight/bad"]
    # a sharper weight temperature gives the good teacher more
    sharp = MultiTeacherLoss(["bad", "good"], weight_temperature=0.1)
    sharp(s, {"good": good, "bad": bad}, pos, neg)
    assert sharp.components["weight/good"] > fn.components["weight/good"]
    # a single teacher always has weight 1; uniform weighting is 1/T
    single = MultiTeacherLoss(["good"])
    single(s, {"good": good}, pos, neg)
    assert torch.equal(single.sample_weights, torch.ones(8, 1, dtype=F64))
    uniform = MultiTeacherLoss(["bad", "good"], weighting="uniform")
    uniform(s, {"good": good, "bad": bad}, pos, neg)
    assert torch.equal(uniform.sample_weights, torch.full((8, 2), 0.5, dtype=F64))


def test_anchors_without_a_triplet_get_uniform_weights_and_soft_only():
    gen = torch.Generator().manual_seed(2)
    good, pos, neg = clustered(gen)
    bad = torch.randn(8, 5, dtype=F64, generator=gen)
    pos[3], neg[5] = False, False
    fn = MultiTeacherLoss(["good", "bad"])
    fn(torch.randn(8, 4, dtype=F64, generator=gen), {"good": good, "bad": bad}, pos, neg)
    w = fn.sample_weights
    assert torch.equal(w[3], torch.full((2,), 0.5, dtype=F64)) and torch.equal(w[5], w[3])
    assert (w[[0, 1, 2, 4, 6, 7], 0] > 0.5).all()
    assert fn.components["num_triplets"].item() == 6
    # no anchor with a triplet: the hard term is a differentiable zero
    s = torch.randn(8, 4, dtype=F64, generator=gen, requires_grad=True)
    none = torch.zeros(8, 8, dtype=torch.bool)
    out = MultiTeacherLoss(["good"], soft_weight=0.0)(s, {"good": good}, none, neg)
    assert out.item() == 0
    out.backward()
    assert torch.equal(s.grad, torch.zeros_like(s))


def test_uniform_is_the_mean_of_single_teacher_losses():
    gen = torch.Generator().manual_seed(3)
    b = 10
    s = torch.randn(b, 8, dtype=F64, generator=gen)
    teachers = {n: torch.randn(b, d, dtype=F64, generator=gen) for n, d in (("a", 4), ("b", 8), ("c", 16))}
    pos, neg = places(gen, b, 0.25)
    pos[2] = False
    multi = MultiTeacherLoss(list(teachers), weighting="uniform", margin=0.4)(s, teachers, pos, neg)
    singles = [MultiTeacherLoss([n], margin=0.4)(s, {n: t}, pos, neg) for n, t in teachers.items()]
    assert multi.item() == pytest.approx(sum(x.item() for x in singles) / 3, rel=1e-12)


def test_soft_term_vanishes_when_the_students_distances_equal_the_teachers():
    gen = torch.Generator().manual_seed(4)
    base, pos, neg = clustered(gen, dim=6, noise=0.3)

    def embed(x, d):  # an isometry into d dimensions (orthonormal columns) times a per-row scale
        q, _ = torch.linalg.qr(torch.randn(d, x.shape[1], dtype=F64, generator=gen))
        return (x @ q.T) * (torch.rand(x.shape[0], 1, dtype=F64, generator=gen) + 0.5)

    student = embed(base, 10).requires_grad_(True)
    teachers = {"a": embed(base, 8), "b": base.clone(), "c": embed(base, 7)}
    fn = MultiTeacherLoss(list(teachers), hard_weight=0.0)
    out = fn(student, teachers, pos, neg)
    assert abs(out.item()) < 1e-12 and abs(fn.components["soft"].item()) < 1e-12
    out.backward()
    assert student.grad.abs().max() < 1e-9
    # a different student is penalised
    assert fn(torch.randn(8, 10, dtype=F64, generator=gen), teachers, pos, neg).item() > 1e-3


def test_masks_and_errors():
    gen = torch.Generator().manual_seed(5)
    s = torch.randn(5, 3, dtype=F64, generator=gen)
    teachers = {"lidar": torch.randn(5, 4, dtype=F64, generator=gen)}
    pos, neg = places(gen, 5)
    with pytest.raises(ValueError, match="'fusion'"):
        MultiTeacherLoss(["lidar", "fusion"])(s, teachers, pos, neg)
    with pytest.raises(TypeError, match="mapping"):
        MultiTeacherLoss(["lidar"])(s, teachers["lidar"], pos, neg)
    with pytest.raises(ValueError, match="positives_mask and negatives_mask"):
        MultiTeacherLoss(["lidar"])(s, teachers)
    with pytest.raises(ValueError, match="positives_mask and negatives_mask"):
        MultiTeacherLoss(["lidar"], hard_weight=0.0)(s, teachers)  # adaptive weights need the masks
    soft_only = MultiTeacherLoss(["lidar"], hard_weight=0.0, weighting="uniform")
    assert soft_only(s, teachers).item() == pytest.approx(soft_only(s, teachers, pos, neg).item())
    with pytest.raises(ValueError, match="batch sizes differ"):
        MultiTeacherLoss(["lidar"])(s[:4], teachers, pos, neg)
    with pytest.raises(ValueError, match=r"positives_mask must be \[5, 5\]"):
        MultiTeacherLoss(["lidar"])(s, teachers, pos[:4], neg)
    with pytest.raises(ValueError, match="B >= 2"):
        MultiTeacherLoss(["lidar"])(s[:1], {"lidar": teachers["lidar"][:1]}, pos[:1, :1], neg[:1, :1])
    with pytest.raises(ValueError, match="weighting"):
        MultiTeacherLoss(["lidar"], weighting="max")
    with pytest.raises(ValueError, match="unique"):
        MultiTeacherLoss(["lidar", "lidar"])
    with pytest.raises(ValueError, match="at least one"):
        MultiTeacherLoss([])
    with pytest.raises(TypeError, match="list of names"):
        MultiTeacherLoss("lidar")
    with pytest.raises(ValueError, match="temperature"):
        MultiTeacherLoss(["lidar"], temperature=0)
