"""Manifolds as small relation objects: the "spaces" of DistilVPR's relation losses.

Every manifold is an ``nn.Module`` (so a learnable curvature or scale is optimised with the model) with

- ``pairwise(x [N, D], y [M, D] | None) -> [N, M]``: the relation matrix between the rows of ``x`` and ``y``
  (``y`` defaults to ``x``); ``manifold(x, y)`` is the same;
- ``paired(x [N, D], y [N, D]) -> [N]``: the relation between matching rows;
- ``kind``: ``"distance"`` (larger = more different) or ``"similarity"`` (larger = more alike).

Formulas follow DistilVPR (Wang et al., AAAI 2024) as its public code computes them (``compute_distil_loss.py``,
``selfagent/rkdg.py`` with hyptorch's ``pmath``); see ``docs/distillation.md``. Every distance here is computed
from exact Euclidean differences (``torch.cdist`` without the ``|a|² + |b|² − 2ab`` expansion), so the matrices
need O(N·M) memory, identical points are exactly 0 apart and a zero distance passes a zero (finite) gradient.

geoopt is imported lazily (its import compiles TorchScript and takes about a second).
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

KINDS = ("distance", "similarity")


def _geoopt():
    """The geoopt module (imported on first use, its TorchScript deprecation warnings silenced)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, message=r".*torch\.jit.*")
        warnings.filterwarnings("ignore", category=DeprecationWarning, message=r".*torch\.jit.*")
        import geoopt
        import geoopt.manifolds.stereographic.math
    return geoopt


def _stereo_math():
    return _geoopt().manifolds.stereographic.math


#: entries (rows · M · D) of one block of :class:`_BlockedCdist`'s backward
CDIST_BLOCK_ELEMENTS = 1 << 24


def _plain_cdist(x: Tensor, y: Tensor) -> Tensor:
    return torch.cdist(x.unsqueeze(0), y.unsqueeze(0), compute_mode="donot_use_mm_for_euclid_dist").squeeze(0)


class _BlockedCdist(torch.autograd.Function):
    """torch's exact cdist whose backward runs block by block over the rows of ``x``: torch's CUDA cdist backward
    allocates an ``[N, M, D]`` buffer (400 MiB for N = M = 512, D = 384 in float32); per block it is
    ``[rows, M, D]`` with rows·M·D ≤ ``CDIST_BLOCK_ELEMENTS``. Same gradient values (torch's kernel per block)."""

    @staticmethod
    def forward(ctx, x: Tensor, y: Tensor) -> Tensor:
        ctx.save_for_backward(x, y)
        return _plain_cdist(x, y)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        x, y = ctx.saved_tensors
        need_x, need_y = ctx.needs_input_grad
        gx = torch.zeros_like(x) if need_x else None
        gy = torch.zeros_like(y) if need_y else None
        rows = max(1, CDIST_BLOCK_ELEMENTS // max(1, y.shape[0] * x.shape[1]))
        for start in range(0, x.shape[0], rows):
            with torch.enable_grad():
                xb = x[start:start + rows].detach().requires_grad_(need_x)
                yb = y.detach().requires_grad_(need_y)
                inputs = [t for t, need in ((xb, need_x), (yb, need_y)) if need]
                grads = torch.autograd.grad(_plain_cdist(xb, yb), inputs, grad[start:start + rows])
            if need_x:
                gx[start:start + rows] = grads[0]
            if need_y:
                gy += grads[-1]
        return gx, gy


def _cdist(x: Tensor, y: Tensor) -> Tensor:
    """Exact ``[N, M]`` Euclidean distances (no ``|a|² + |b|² − 2ab`` cancellation); the gradient at a zero distance
    is 0 (torch's cdist backward). Off the CPU the backward is blocked (:class:`_BlockedCdist`) so the memory stays
    O(N·M + block); torch's CPU backward needs no buffer."""
    if x.device.type != "cpu" and torch.is_grad_enabled() and (x.requires_grad or y.requires_grad):
        return _BlockedCdist.apply(x, y)
    return _plain_cdist(x, y)


def _check_rows(x: Tensor, y: Tensor | None, paired: bool) -> None:
    if x.dim() != 2 or (y is not None and y.dim() != 2):
        raise ValueError(f"expected [N, D] inputs, got {tuple(x.shape)} and {None if y is None else tuple(y.shape)}")
    if y is not None and x.shape[1] != y.shape[1]:
        raise ValueError(f"both inputs must have the same dimension, got {x.shape[1]} and {y.shape[1]}")
    if paired and y is not None and x.shape[0] != y.shape[0]:
        raise ValueError(f"paired() needs the same number of rows, got {x.shape[0]} and {y.shape[0]}")


class Manifold(nn.Module):
    """Base class: ``forward`` is :meth:`pairwise`."""

    kind: str = "distance"

    def pairwise(self, x: Tensor, y: Tensor | None = None) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def paired(self, x: Tensor, y: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        return self.pairwise(x, y)


class Euclidean(Manifold):
    """``E(a, b)_ij = ‖a_i − b_j‖₂`` (DistilVPR's cross-agent Euclidean term and RKD's distance).

    Deviation from the upstream code: RKD's ``pdist`` expands ``|a|² + |b|² − 2ab`` (clamped at 1e-12, diagonal set
    to 0); here the differences are exact. Same values up to that cancellation; the diagonal is 0 and, like
    upstream's (overwritten) diagonal, passes no gradient.
    """

    kind = "distance"

    def pairwise(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        _check_rows(x, y, paired=False)
        return _cdist(x, x if y is None else y)

    def paired(self, x: Tensor, y: Tensor) -> Tensor:
        _check_rows(x, y, paired=True)
        return torch.linalg.vector_norm(x - y, dim=-1)


class Spherical(Manifold):
    """Cosine similarity ``C(a, b)_ij = ⟨a_i, b_j⟩ / (‖a_i‖‖b_j‖)`` (kind ``similarity``), as DistilVPR's
    ``crosslogitsim`` term with ``divide=True`` (rows normalised here with ``F.normalize``, so a zero row gives 0
    instead of upstream's NaN).

    ``geodesic=True``: the great-circle distance ``arccos C`` (kind ``distance``), computed as
    ``2·atan2(‖â − b̂‖, ‖â + b̂‖)`` for unit rows â, b̂: the same value as a clamped ``arccos`` without its
    infinite slope at ``C = ±1`` (identical rows give exactly 0 with a zero gradient).
    """

    def __init__(self, geodesic: bool = False):
        super().__init__()
        self.geodesic = bool(geodesic)
        self.kind = "distance" if self.geodesic else "similarity"

    def pairwise(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        _check_rows(x, y, paired=False)
        a = F.normalize(x, dim=-1)
        b = a if y is None else F.normalize(y, dim=-1)
        if not self.geodesic:
            return a @ b.T
        return 2.0 * torch.atan2(_cdist(a, b), _cdist(a, -b))

    def paired(self, x: Tensor, y: Tensor) -> Tensor:
        _check_rows(x, y, paired=True)
        a, b = F.normalize(x, dim=-1), F.normalize(y, dim=-1)
        if not self.geodesic:
            return (a * b).sum(-1)
        return 2.0 * torch.atan2(torch.linalg.vector_norm(a - b, dim=-1), torch.linalg.vector_norm(a + b, dim=-1))

    def extra_repr(self) -> str:
        return f"geodesic={self.geodesic}"


def _arsin_k(x: Tensor, k: Tensor) -> Tensor:
    """``arsin_κ(x)``: ``asinh(√−κ x)/√−κ`` (κ < 0), ``x`` (κ = 0), ``asin(√κ x)/√κ`` (κ > 0) for a scalar κ; a
    Taylor series for |κ| < 1e-6 keeps the value and the κ-gradient accurate around κ = 0."""
    kv = float(k.detach())
    if abs(kv) < 1e-6:
        x2 = x * x
        return x * (1.0 + k * x2 / 6.0 + 3.0 * k * k * x2 * x2 / 40.0)
    sk = k.abs().sqrt()
    if kv < 0:
        return torch.asinh(sk * x) / sk
    return torch.asin((sk * x).clamp(max=1.0)) / sk


class _ConstantCurvature(Manifold):
    """κ-stereographic model: points ``P(x) = proj(expmap0(scale·x))`` (geoopt's functions), distance
    ``2·artan_κ(‖(−P(a)) ⊕_κ P(b)‖)`` (geoopt's ``dist``, for κ = −c DistilVPR's ``dist_matrix``).

    The distance is evaluated in the closed form ``2·arsin_κ(‖p − q‖ / √((1 + κ‖p‖²)(1 + κ‖q‖²)))`` (for κ = −c:
    ``(2/√c)·asinh(√c‖p − q‖ / √((1 − c‖p‖²)(1 − c‖q‖²)))``), which is the same function (‖(−p) ⊕_κ q‖² =
    ‖p − q‖² / ((1 + κ‖p‖²)(1 + κ‖q‖²) − κ‖p − q‖²)) but needs only ``[N, M]`` memory instead of the ``[N, M, D]``
    Möbius sums, has no ``artanh`` of an argument close to 1 and gives exactly 0 (zero gradient) for identical
    points.
    """

    kind = "distance"

    def __init__(self, eps: float = 1e-3, scale: float = 1.0, learnable_scale: bool = False):
        super().__init__()
        if not 0.0 < eps < 1.0:
            raise ValueError(f"eps must be in (0, 1), got {eps}")
        self.eps = float(eps)
        if learnable_scale:
            self.scale = nn.Parameter(torch.tensor(float(scale), dtype=torch.float64))
        else:
            self.scale = float(scale)

    def curvature(self) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def to_manifold(self, x: Tensor) -> Tensor:
        """``P(x) = proj(expmap0(scale·x))``: ``tanh(√c‖u‖)·u/(√c‖u‖)`` for κ = −c, the norm clipped to
        ``(1 − eps)/√c`` (κ < 0 only; geoopt's ``expmap0`` and ``project``)."""
        k = self.curvature().to(dtype=x.dtype, device=x.device)
        scale = self.scale.to(dtype=x.dtype, device=x.device) if isinstance(self.scale, Tensor) else self.scale
        m = _stereo_math()
        return m.project(m.expmap0(x * scale, k=k), k=k, eps=self.eps)

    def _conformal(self, p: Tensor, k: Tensor) -> Tensor:
        return 1.0 + k * p.square().sum(-1)

    def pairwise(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        _check_rows(x, y, paired=False)
        k = self.curvature().to(dtype=x.dtype, device=x.device)
        p = self.to_manifold(x)
        q = p if y is None else self.to_manifold(y)
        cp = self._conformal(p, k)
        cq = cp if y is None else self._conformal(q, k)
        ratio = _cdist(p, q) / torch.sqrt(cp[:, None] * cq[None, :])
        return 2.0 * _arsin_k(ratio, k)

    def paired(self, x: Tensor, y: Tensor) -> Tensor:
        _check_rows(x, y, paired=True)
        k = self.curvature().to(dtype=x.dtype, device=x.device)
        p, q = self.to_manifold(x), self.to_manifold(y)
        ratio = torch.linalg.vector_norm(p - q, dim=-1) / torch.sqrt(self._conformal(p, k) * self._conformal(q, k))
        return 2.0 * _arsin_k(ratio, k)


class Poincare(_ConstantCurvature):
    """DistilVPR's hyperbolic manifold: the Poincaré ball of curvature −c (default c = 0.1).

    ``P(x) = proj(expmap0(scale·x))`` with ``expmap0(u) = tanh(√c‖u‖)·u/(√c‖u‖)`` and ``proj`` clipping the norm to
    ``(1 − eps)/√c`` (hyptorch's ``ToPoincare(c, riemannian=False)``); ``G(a, b)_ij = (2/√c)·artanh(√c‖(−P(a_i))
    ⊕_c P(b_j)‖)`` (hyptorch's ``dist_matrix``), evaluated in the equivalent closed form of
    :class:`_ConstantCurvature`. ``geoopt.PoincareBall(c).dist`` is the same function.

    Args:
        c: curvature magnitude (a Python float, kept exact; use :class:`Stereographic` for a learnable one).
        eps: the projection margin (hyptorch: 1e-3; geoopt's default is 4e-3 in float32).
        scale: factor applied before ``expmap0`` (1: DistilVPR). With unit-norm inputs and c = 0.1 every point
            lands on one sphere of radius ≈ 0.968 and ``G ≈ 2.1·E``; a larger scale moves the points towards the
            boundary where the two differ.
        learnable_scale: make ``scale`` a parameter.

    Deviations from hyptorch (numerics only): it adds 1e-5 to the Möbius denominator, clamps the ``artanh``
    argument to 1 − 1e-5 (so its distances saturate at (2/√c)·artanh(1 − 1e-5) ≈ 38.6 for c = 0.1, reached by
    far-apart points near the boundary, i.e. raw descriptors with √c‖x‖ ≳ 4) and clamps norms at 1e-5 in
    ``expmap0``; here the distance is exact (no saturation) and norms are clamped at 1e-15 (geoopt).
    """

    def __init__(self, c: float = 0.1, eps: float = 1e-3, scale: float = 1.0, learnable_scale: bool = False):
        super().__init__(eps=eps, scale=scale, learnable_scale=learnable_scale)
        if not c > 0:
            raise ValueError(f"c must be positive, got {c}")
        self.c = float(c)

    def curvature(self) -> Tensor:
        return torch.tensor(-self.c, dtype=torch.float64)

    def extra_repr(self) -> str:
        scale = "learnable" if isinstance(self.scale, Tensor) else f"{self.scale:g}"
        return f"c={self.c:g}, eps={self.eps:g}, scale={scale}"


class Stereographic(_ConstantCurvature):
    """The κ-stereographic model (geoopt's ``Stereographic``): κ < 0 the Poincaré ball of curvature κ, κ = 0
    Euclidean space, κ > 0 the stereographically projected sphere; ``kappa`` optionally learnable.

    ``pairwise`` is geoopt's ``dist`` after ``proj(expmap0(scale·x))``: ``2·artan_κ(‖(−p) ⊕_κ q‖)``. Conventions
    (geoopt's): at κ = 0 the distance is ``2·‖x − y‖`` (twice :class:`Euclidean`); for κ = −c it equals
    :class:`Poincare` ``(c)`` (same ``eps``); ``expmap0(u)`` lies at distance 2‖u‖ from the origin (the conformal
    factor there is 2); for κ > 0 it is ``tan(√κ‖u‖)·u/(√κ‖u‖)``, which passes the antipode of the origin at
    √κ‖u‖ = π/2 and wraps around beyond (scale inputs accordingly); distances are at most π/√κ.

    Args:
        kappa: initial curvature κ (stored in float64 as the ``k`` parameter of the geoopt manifold ``.manifold``).
        learnable: optimise κ (its gradient flows through ``expmap0``, ``proj`` and the distance; κ may cross 0).
        scale, learnable_scale, eps: as :class:`Poincare`.
    """

    def __init__(self, kappa: float = -0.1, learnable: bool = False, scale: float = 1.0,
                 learnable_scale: bool = False, eps: float = 1e-3):
        super().__init__(eps=eps, scale=scale, learnable_scale=learnable_scale)
        if torch.is_tensor(kappa) and kappa.is_floating_point():
            k = kappa.detach().clone()
        else:
            k = torch.tensor(float(kappa), dtype=torch.float64)
        self.manifold = _geoopt().Stereographic(k=k, learnable=bool(learnable))

    @property
    def kappa(self) -> Tensor:
        """The curvature parameter (``.manifold.k``)."""
        return self.manifold.k

    def curvature(self) -> Tensor:
        return self.manifold.k

    def extra_repr(self) -> str:
        scale = "learnable" if isinstance(self.scale, Tensor) else f"{self.scale:g}"
        return (f"kappa={float(self.manifold.k.detach()):g}, learnable={self.manifold.k.requires_grad}, eps={self.eps:g}, "
                f"scale={scale}")


MANIFOLDS = {"euclidean": Euclidean, "spherical": Spherical, "poincare": Poincare, "stereographic": Stereographic}


def make_manifold(spec: Manifold | str) -> Manifold:
    """A manifold from an instance or a name of :data:`MANIFOLDS` (default arguments)."""
    if isinstance(spec, nn.Module):
        return spec
    if isinstance(spec, str) and spec.lower() in MANIFOLDS:
        return MANIFOLDS[spec.lower()]()
    raise ValueError(f"manifold must be a module or one of {sorted(MANIFOLDS)}, got {spec!r}")


__all__ = ["KINDS", "MANIFOLDS", "Euclidean", "Manifold", "Poincare", "Spherical", "Stereographic", "make_manifold"]

