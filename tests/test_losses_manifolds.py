"""Manifolds (Euclidean, Spherical, Poincare, Stereographic) against naive float64 loops, geoopt and hand values."""

from __future__ import annotations

import math

import pytest
import torch

from crossmodal.losses import (
    MANIFOLDS,
    Euclidean,
    Poincare,
    Spherical,
    Stereographic,
    make_manifold,
)

DT = torch.float64


def rows(gen, n, d, scale=1.0):
    return torch.randn(n, d, dtype=DT, generator=gen) * scale


def loop_matrix(fn, x, y):
    return torch.stack([torch.stack([fn(x[i], y[j]) for j in range(y.shape[0])]) for i in range(x.shape[0])])


def naive_euclid(a, b):
    return torch.sqrt(sum((a[k] - b[k]) ** 2 for k in range(a.shape[0])))


def naive_cos(a, b):
    return (a * b).sum() / (a.norm() * b.norm())


def naive_to_ball(u, c, eps=1e-3, scale=1.0):
    """hyptorch's ToPoincare(c, riemannian=False): project(expmap0(u))."""
    u = u * scale
    n = u.norm()
    p = torch.tanh(math.sqrt(c) * n) * u / (math.sqrt(c) * n)
    maxnorm = (1 - eps) / math.sqrt(c)
    return p / p.norm() * maxnorm if p.norm().item() > maxnorm else p


def naive_mobius_add(x, y, c):
    xy, x2, y2 = (x * y).sum(), (x * x).sum(), (y * y).sum()
    return ((1 + 2 * c * xy + c * y2) * x + (1 - c * x2) * y) / (1 + 2 * c * xy + c ** 2 * x2 * y2)


def naive_poincare(a, b, c=0.1, eps=1e-3, scale=1.0):
    """DistilVPR's G: (2/√c)·artanh(√c‖(−P(a)) ⊕_c P(b)‖) (hyptorch's dist_matrix without its 1e-5 guards)."""
    p, q = naive_to_ball(a, c, eps, scale), naive_to_ball(b, c, eps, scale)
    return 2 / math.sqrt(c) * torch.atanh(math.sqrt(c) * naive_mobius_add(-p, q, c).norm())


def geoopt():
    from crossmodal.losses.manifolds import _geoopt

    return _geoopt()


# ----------------------------------------------------------------------------------------------------- Euclidean


def test_euclidean_matches_loop_and_is_exact():
    gen = torch.Generator().manual_seed(0)
    x, y = rows(gen, 6, 5), rows(gen, 4, 5)
    e = Euclidean()
    assert e.kind == "distance"
    torch.testing.assert_close(e.pairwise(x, y), loop_matrix(naive_euclid, x, y), rtol=1e-13, atol=1e-14)
    torch.testing.assert_close(e(x), loop_matrix(naive_euclid, x, x), rtol=1e-13, atol=1e-14)
    torch.testing.assert_close(e.paired(x[:4], y), torch.stack([naive_euclid(x[i], y[i]) for i in range(4)]))
    # no |a|² + |b|² − 2ab cancellation: two nearby points far from the origin
    far = torch.tensor([[1e4, 0.0], [1e4, 1e-6]], dtype=DT)
    assert e(far)[0, 1].item() == pytest.approx(1e-6, rel=1e-9)
    assert e(far.float())[0, 1].item() == pytest.approx(1e-6, rel=1e-5)


def test_euclidean_gradient_at_zero_distance_is_zero_not_nan():
    gen = torch.Generator().manual_seed(1)
    x = rows(gen, 5, 3)
    x[3] = x[1]  # two coinciding points besides the diagonal
    x.requires_grad_(True)
    d = Euclidean()(x)
    assert torch.equal(d.diagonal(), torch.zeros(5, dtype=DT)) and d[1, 3].item() == 0
    (g,) = torch.autograd.grad(d.sum(), x)
    assert torch.isfinite(g).all()
    (g_diag,) = torch.autograd.grad(Euclidean()(x).diagonal().sum(), x)
    assert torch.equal(g_diag, torch.zeros_like(g_diag))
    (g_pair,) = torch.autograd.grad(Euclidean().paired(x, x.detach().clone()).sum(), x)
    assert torch.equal(g_pair, torch.zeros_like(g_pair))
    y = rows(gen, 5, 3).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a: Euclidean()(a), (y,))
    assert torch.autograd.gradcheck(lambda a, b: Euclidean()(a, b), (y, rows(gen, 3, 3).requires_grad_(True)))


# ----------------------------------------------------------------------------------------------------- Spherical


def test_spherical_cosine_and_geodesic_match_loops():
    gen = torch.Generator().manual_seed(2)
    x, y = rows(gen, 6, 4, 3.0), rows(gen, 5, 4)
    cos = Spherical()
    assert cos.kind == "similarity"
    torch.testing.assert_close(cos(x, y), loop_matrix(naive_cos, x, y))
    torch.testing.assert_close(cos.paired(x[:5], y), torch.stack([naive_cos(x[i], y[i]) for i in range(5)]))
    geo = Spherical(geodesic=True)
    assert geo.kind == "distance"
    ref = loop_matrix(lambda a, b: torch.arccos(naive_cos(a, b).clamp(-1, 1)), x, y)
    torch.testing.assert_close(geo(x, y), ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(geo.paired(x[:5], y), ref.diagonal())
    # identical and opposite points: exactly 0 and π, finite gradients
    z = torch.cat([x[:2], -x[:1]]).requires_grad_(True)
    g = geo(z)
    assert torch.equal(g.diagonal(), torch.zeros(3, dtype=DT))
    assert g[0, 2].item() == pytest.approx(math.pi, abs=1e-12)
    (grad,) = torch.autograd.grad(g.sum(), z)
    assert torch.isfinite(grad).all()
    # invariant to the rows' scale
    torch.testing.assert_close(cos(3 * x, 0.5 * y), cos(x, y))


# ------------------------------------------------------------------------------------------------------ Poincare


@pytest.mark.parametrize("scale_in,tol", [(0.5, 1e-11), (1.0, 1e-11), (30.0, 1e-7)])
def test_poincare_matches_distilvpr_formula_loop(scale_in, tol):
    """scale_in 30: points clipped by the projection onto the ball's boundary (atanh close to 1 in the naive loop
    limits its own accuracy)."""
    gen = torch.Generator().manual_seed(3)
    x, y = rows(gen, 5, 4, scale_in), rows(gen, 4, 4, scale_in)
    p = Poincare(c=0.1)
    ref = loop_matrix(lambda a, b: naive_poincare(a, b, 0.1), x, y)
    torch.testing.assert_close(p(x, y), ref, rtol=tol, atol=tol)
    torch.testing.assert_close(p.paired(x[:4], y), ref.diagonal(), rtol=tol, atol=tol)
    if scale_in == 30.0:  # the projection is active: every point at (1 − 1e-3)/√c
        norms = p.to_manifold(x).norm(dim=1)
        torch.testing.assert_close(norms, torch.full_like(norms, 0.999 / math.sqrt(0.1)))


def test_poincare_equals_geoopt_poincare_ball():
    gen = torch.Generator().manual_seed(4)
    x, y = rows(gen, 6, 5, 2.0), rows(gen, 4, 5)
    p = Poincare(c=0.3)
    ball = geoopt().PoincareBall(c=torch.tensor(0.3, dtype=DT))
    px, py = ball.projx(ball.expmap0(x)), ball.projx(ball.expmap0(y))
    torch.testing.assert_close(p.to_manifold(x), geoopt().manifolds.stereographic.math.project(
        ball.expmap0(x), k=ball.k, eps=1e-3))
    torch.testing.assert_close(p(x, y), ball.dist(p.to_manifold(x)[:, None], p.to_manifold(y)[None]), rtol=1e-10,
                               atol=1e-12)
    assert px.shape == x.shape and py.shape == y.shape


def test_poincare_gradients_and_diagonal():
    gen = torch.Generator().manual_seed(5)
    x = rows(gen, 5, 3).requires_grad_(True)
    y = rows(gen, 4, 3).requires_grad_(True)
    p = Poincare(c=0.1)
    assert torch.autograd.gradcheck(lambda a, b: p(a, b), (x, y))
    assert torch.autograd.gradcheck(lambda a: p(a), (x,))
    g = p(x)
    assert torch.equal(g.diagonal(), torch.zeros(5, dtype=DT))
    (grad,) = torch.autograd.grad(g.diagonal().sum(), x)
    assert torch.equal(grad, torch.zeros_like(grad))


def test_poincare_scale_fixed_and_learnable():
    gen = torch.Generator().manual_seed(6)
    x = rows(gen, 6, 4)
    torch.testing.assert_close(Poincare(scale=2.5)(x), Poincare()(2.5 * x))
    ref = loop_matrix(lambda a, b: naive_poincare(a, b, 0.1, scale=2.5), x, x)
    torch.testing.assert_close(Poincare(scale=2.5)(x), ref, rtol=1e-10, atol=1e-10)
    learn = Poincare(scale=2.5, learnable_scale=True)
    assert [n for n, _ in learn.named_parameters()] == ["scale"]
    torch.testing.assert_close(learn(x), Poincare(scale=2.5)(x))
    learn(x).sum().backward()
    assert learn.scale.grad is not None and learn.scale.grad.abs() > 0


def test_poincare_on_unit_inputs_is_a_rescaled_euclidean():
    """docs/distillation.md: unit-norm inputs all land on one sphere of radius tanh(√c)/√c ≈ 0.968 and G ≈ 2.1·E."""
    gen = torch.Generator().manual_seed(7)
    x = torch.nn.functional.normalize(rows(gen, 64, 16), dim=1)
    p = Poincare(c=0.1)
    norms = p.to_manifold(x).norm(dim=1)
    torch.testing.assert_close(norms, torch.full_like(norms, math.tanh(math.sqrt(0.1)) / math.sqrt(0.1)))
    assert norms[0].item() == pytest.approx(0.968, abs=1e-3)
    off = ~torch.eye(64, dtype=torch.bool)
    g, e = p(x)[off], Euclidean()(x)[off]
    corr = torch.corrcoef(torch.stack([g, e]))[0, 1].item()
    assert corr > 0.999
    ratio = (g / e).mean().item()
    assert 2.0 < ratio < 2.2
    # a larger scale pushes the points towards the boundary: no longer a rescaled Euclidean distance
    g8 = Poincare(c=0.1, scale=8.0)(x)[off]
    assert torch.corrcoef(torch.stack([g8, e]))[0, 1].item() < corr


# ------------------------------------------------------------------------------------------------- Stereographic


def test_stereographic_kappa_zero_is_twice_euclidean():
    """geoopt's convention: dist = 2·artan_κ(‖(−x) ⊕_κ y‖), i.e. 2‖x − y‖ at κ = 0 (expmap0 is the identity)."""
    gen = torch.Generator().manual_seed(8)
    x, y = rows(gen, 5, 4), rows(gen, 3, 4)
    s = Stereographic(kappa=0.0)
    torch.testing.assert_close(s(x, y), 2 * Euclidean()(x, y))
    torch.testing.assert_close(s.paired(x[:3], y), 2 * Euclidean().paired(x[:3], y))


@pytest.mark.parametrize("c", [0.1, 0.25, 1.0])
def test_stereographic_negative_kappa_is_poincare(c):
    gen = torch.Generator().manual_seed(9)
    x, y = rows(gen, 5, 4, 1.5), rows(gen, 4, 4, 1.5)
    torch.testing.assert_close(Stereographic(kappa=-c)(x, y), Poincare(c=c)(x, y), rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(Stereographic(kappa=-c, scale=0.3)(x), Poincare(c=c, scale=0.3)(x))


@pytest.mark.parametrize("kappa", [-0.5, -1e-7, 0.0, 1e-7, 0.3])
def test_stereographic_equals_geoopt_dist(kappa):
    gen = torch.Generator().manual_seed(10)
    x, y = rows(gen, 6, 3, 0.8), rows(gen, 5, 3, 0.8)
    s = Stereographic(kappa=kappa)
    ball = geoopt().Stereographic(k=torch.tensor(kappa, dtype=DT))
    ref = ball.dist(s.to_manifold(x)[:, None], s.to_manifold(y)[None])
    torch.testing.assert_close(s(x, y), ref, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(s.paired(x[:5], y), ref.diagonal(), rtol=1e-9, atol=1e-12)


def test_stereographic_positive_kappa_is_the_sphere_distance():
    """κ > 0: expmap0 then the stereographic distance is the great-circle distance on the sphere of radius 1/√κ
    between the points reached along the tangent directions, at polar angles 2√κ‖u‖ (geoopt's expmap0 covers a
    distance 2‖u‖ from the origin, the conformal factor there being 2)."""
    kappa = 0.3
    u = torch.tensor([[0.5, 0.0], [0.0, 1.2], [-0.9, 0.4]], dtype=DT)
    s = Stereographic(kappa=kappa)
    r = 1 / math.sqrt(kappa)

    def on_sphere(v):  # polar angle 2√κ‖v‖ from the pole, azimuth from v's direction
        t = 2 * math.sqrt(kappa) * v.norm()
        return r * torch.cat([torch.sin(t) * v / v.norm(), torch.cos(t).reshape(1)])

    def great_circle(a, b):
        pa, pb = on_sphere(a), on_sphere(b)
        return r * torch.arccos(((pa * pb).sum() / r ** 2).clamp(-1, 1))

    torch.testing.assert_close(s(u), loop_matrix(great_circle, u, u), rtol=1e-10, atol=1e-10)


def test_stereographic_learnable_kappa_gets_the_right_gradient():
    gen = torch.Generator().manual_seed(11)
    x, y = rows(gen, 5, 3), rows(gen, 4, 3)
    for kappa in (-0.2, 0.0, 0.2):
        s = Stereographic(kappa=kappa, learnable=True)
        assert [n for n, p in s.named_parameters() if p.requires_grad] == ["manifold.k"]
        s(x, y).sum().backward()
        grad = s.kappa.grad.item()
        h = 1e-6
        num = (Stereographic(kappa + h)(x, y).sum() - Stereographic(kappa - h)(x, y).sum()).item() / (2 * h)
        assert grad == pytest.approx(num, rel=1e-5, abs=1e-8), kappa
    fixed = Stereographic(kappa=-0.1)
    assert not any(p.requires_grad for p in fixed.parameters())
    # float32 inputs with the float64 curvature parameter: float32 output, gradient still reaches κ
    s32 = Stereographic(kappa=-0.1, learnable=True)
    out = s32(x.float())
    assert out.dtype == torch.float32
    out.sum().backward()
    assert s32.kappa.grad is not None


def test_make_manifold_and_kinds():
    assert isinstance(make_manifold("Poincare"), Poincare)
    e = Euclidean()
    assert make_manifold(e) is e
    assert set(MANIFOLDS) == {"euclidean", "spherical", "poincare", "stereographic"}
    with pytest.raises(ValueError, match="manifold"):
        make_manifold("lorentz")
    with pytest.raises(ValueError, match="positive"):
        Poincare(c=0.0)
    with pytest.raises(ValueError, match="same dimension"):
        Euclidean()(torch.zeros(2, 3), torch.zeros(2, 4))
    assert "c=0.1" in repr(Poincare()) and "kappa=-0.1" in repr(Stereographic())


def test_blocked_cdist_backward_equals_torch(monkeypatch):
    """The row-blocked backward used off the CPU (torch's CUDA cdist backward allocates an [N, M, D] buffer)."""
    from crossmodal.losses import manifolds

    monkeypatch.setattr(manifolds, "CDIST_BLOCK_ELEMENTS", 2 * 5 * 3)  # blocks of 2 rows for M = 5, D = 3
    gen = torch.Generator().manual_seed(12)
    x, y = rows(gen, 7, 3).requires_grad_(True), rows(gen, 5, 3).requires_grad_(True)
    w = rows(gen, 7, 5)
    out = manifolds._BlockedCdist.apply(x, y)
    torch.testing.assert_close(out, manifolds._plain_cdist(x, y), rtol=0, atol=0)
    gx, gy = torch.autograd.grad((out * w).sum(), (x, y))
    rx, ry = torch.autograd.grad((manifolds._plain_cdist(x, y) * w).sum(), (x, y))
    torch.testing.assert_close(gx, rx, rtol=1e-14, atol=1e-15)
    torch.testing.assert_close(gy, ry, rtol=1e-14, atol=1e-15)
    # the same tensor on both sides, a zero diagonal, one side without gradient
    (gs,) = torch.autograd.grad((manifolds._BlockedCdist.apply(x, x) * w[:, :1]).sum(), x)
    (rs,) = torch.autograd.grad((manifolds._plain_cdist(x, x) * w[:, :1]).sum(), x)
    torch.testing.assert_close(gs, rs, rtol=1e-14, atol=1e-15)
    (g1,) = torch.autograd.grad(manifolds._BlockedCdist.apply(x, y.detach()).sum(), x)
    torch.testing.assert_close(g1, torch.autograd.grad(manifolds._plain_cdist(x, y.detach()).sum(), x)[0])
    assert torch.autograd.gradcheck(manifolds._BlockedCdist.apply, (x, y))
