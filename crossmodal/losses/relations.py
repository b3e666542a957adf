"""DistilVPR's relation losses (AAAI 2024): the self-agent "RKDG" terms and the cross-agent term.

Every loss is called as ``loss(student [B, Ds], teacher [B, Dt], positives_mask=None, negatives_mask=None)`` and
returns a scalar tensor (the masks are accepted and ignored, so all distillation losses share one signature). The
teacher is detached inside and its relation matrices are computed without gradient (they are targets: ``sg`` in
``docs/distillation.md``); the gradient reaches the student (and learnable manifold parameters through the student
side) only. After each call ``loss.components`` holds detached, unweighted scalars of the loss's parts.

Self-agent terms (``selfagent/rkdg.py`` of DistilVPR, RKD of Park et al. 2019 as in RepDistiller), on raw
descriptors, each a torch ``smooth_l1_loss`` (β = 1) averaged over every entry of the relation tensor:

- distance: ``D = M(X, X) / mean(D_ij > 0)``, ``L_D = SmoothL1(D_S, D_T)`` over the B×B matrix;
- angle: ``e_ij = normalise(x_j − x_i)``, ``A_ijk = ⟨e_ij, e_ik⟩`` (0 when x_j = x_i), ``L_A = SmoothL1(A_S, A_T)``
  over the B×B×B tensor;
- geodesic: ``H = G(X, X) / mean(H_ij > 0)`` with the Poincaré ball (c = 0.1), ``L_G = SmoothL1(H_S, H_T)``.

Cross-agent term (``compute_distil_loss.py``): descriptors L2-normalised, ``ss = M(S,S)``, ``st = M(S,T)``,
``tt = M(T,T)``, ``L = w_st2ss·MSE(ss, sg st) + w_tt2st·MSE(st, sg tt)``, MSE over the full B×B matrix.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from .manifolds import Euclidean, Manifold, Poincare, make_manifold

#: entries of one ``[chunk, B, B]`` angle block when ``chunk_size`` is automatic (16 MiB in float32)
ANGLE_CHUNK_ELEMENTS = 1 << 22


def _check_pair(student: Tensor, teacher: Tensor, same_dim: bool, who: str) -> None:
    if student.dim() != 2 or teacher.dim() != 2:
        raise ValueError(f"{who} expects [B, D] student and teacher descriptors, got {tuple(student.shape)} and "
                         f"{tuple(teacher.shape)}")
    if student.shape[0] != teacher.shape[0]:
        raise ValueError(f"{who}: student and teacher batch sizes differ ({student.shape[0]} and "
                         f"{teacher.shape[0]})")
    if same_dim and student.shape[1] != teacher.shape[1]:
        raise ValueError(f"{who} compares student and teacher descriptors directly and needs the same dimension, "
                         f"got student dimension {student.shape[1]} and teacher dimension {teacher.shape[1]} "
                         f"(add a projection head to the student)")


def _zero(student: Tensor) -> Tensor:
    """A zero attached to the student's graph."""
    return student.sum() * 0.0


def normalise_by_positive_mean(m: Tensor) -> Tensor:
    """``m / mean(m_ij > 0)`` (RKD's normalisation); ``m`` unchanged when no entry is positive. No device sync."""
    pos = m > 0
    count = pos.sum()
    mean = torch.where(pos, m, torch.zeros_like(m)).sum() / count.clamp(min=1).to(m.dtype)
    return m / torch.where(count > 0, mean, torch.ones_like(mean))


# --------------------------------------------------------------------------------------------- distance / geodesic


class DistanceRelation(nn.Module):
    """RKD distance term (and DistilVPR's geodesic term with :class:`~crossmodal.losses.Poincare`):
    ``L = SmoothL1(M(S,S)/mean⁺, M(T,T)/mean⁺)``, ``mean⁺`` the mean of the matrix's positive entries (the
    diagonal is 0, so off-diagonal entries of distinct points), the SmoothL1 mean over all B² entries (diagonal
    included, 0 against 0), as ``F.smooth_l1_loss`` in RKD / DistilVPR. Invariant to a uniform scaling of either
    input for :class:`~crossmodal.losses.Euclidean`.

    Args:
        manifold: a distance-kind manifold (default Euclidean).
    """

    component = "distance"

    def __init__(self, manifold: Manifold | str | None = None):
        super().__init__()
        self.manifold = make_manifold(manifold) if manifold is not None else Euclidean()
        if getattr(self.manifold, "kind", "distance") != "distance":
            raise ValueError(f"{type(self).__name__} normalises distances by their mean and needs a distance-kind "
                             f"manifold, got {self.manifold!r} (kind {self.manifold.kind!r}); use CrossAgentLoss "
                             f"for similarities")
        self.components: dict[str, Tensor] = {}

    def from_matrices(self, ms: Tensor, mt: Tensor) -> Tensor:
        """The loss from the student's (differentiable) and the teacher's relation matrices."""
        loss = F.smooth_l1_loss(normalise_by_positive_mean(ms), normalise_by_positive_mean(mt.detach()))
        self.components = {self.component: loss.detach()}
        return loss

    def forward(self, student: Tensor, teacher: Tensor, positives_mask: Tensor | None = None,
                negatives_mask: Tensor | None = None) -> Tensor:
        _check_pair(student, teacher, same_dim=False, who=type(self).__name__)
        with torch.no_grad():
            mt = self.manifold.pairwise(teacher.detach())
        return self.from_matrices(self.manifold.pairwise(student), mt)


class GeodesicRelation(DistanceRelation):
    """DistilVPR's geodesic self-agent term: :class:`DistanceRelation` on the Poincaré ball,
    ``H = G(X, X) / mean(H > 0)``, ``L_G = SmoothL1(H_S, H_T)`` (``selfagent/rkdg.py``; see
    :class:`~crossmodal.losses.Poincare` for the numerical deviations from hyptorch).

    The diagonal of H is exactly 0 here, so ``mean(H > 0)`` is over the off-diagonal entries as the formula
    intends. Upstream's batched Möbius sum leaves rounding residues on the diagonal (float32: about 1e-6 for
    descriptors of norm ≈ 2, more near the ball's boundary; about half of the entries positive), which its
    ``mean(H > 0)`` then counts: its normalising mean is up to (B − 1)/B of ours.

    Args:
        c: curvature magnitude (0.1); eps, scale: as :class:`~crossmodal.losses.Poincare`.
    """

    component = "geodesic"

    def __init__(self, c: float = 0.1, eps: float = 1e-3, scale: float = 1.0):
        super().__init__(Poincare(c=c, eps=eps, scale=scale))


# ------------------------------------------------------------------------------------------------------------ angle


def _angle_block(d: Tensor, half_sq: Tensor, rows: Tensor) -> tuple[Tensor, Tensor]:
    """``A[c, B, B]`` for the anchors ``rows`` from the distance matrix ``d`` [B, B] (``half_sq = d²/2``), by the
    law of cosines: ``A_ijk = r_ij·r_ik·(d_ij²/2 + d_ik²/2 − d_jk²/2)`` with ``r_ij = 1/d_ij`` (0 when d_ij = 0, so
    ``A_ijk = 0`` when x_j or x_k coincides with the anchor, as ``F.normalize`` of a zero difference upstream).
    Also returns ``r [c, B]``."""
    a = d[rows]
    pos = a > 0
    r = torch.where(pos, 1.0 / torch.where(pos, a, torch.ones_like(a)), torch.zeros_like(a))
    p = half_sq[rows]
    block = p[:, :, None] + p[:, None, :]
    block.sub_(half_sq)
    block.mul_(r[:, :, None]).mul_(r[:, None, :])
    return block, r


class _AngleSum(torch.autograd.Function):
    """``Σ_{i ∈ anchors} Σ_jk SmoothL1(A^S_ijk − A^T_ijk)`` from the student's and the teacher's distance matrices,
    block by block over the anchors. The gradient with respect to ``ds`` is accumulated in the forward pass (one
    ``[B, B]`` matrix), so no block outlives its iteration: memory O(chunk·B²) forwards and backwards.

    With ``g = clamp(A^S − A^T, −1, 1)`` (SmoothL1' for β = 1, symmetric in j, k) and ``A_jk = r_j r_k h_jk``,
    ``h_jk = (a_j² + a_k² − d_jk²)/2`` for one anchor (``a = d_i·``, ``r = 1/a``):
    ``∂L/∂a_j = 2·Σ_k g_jk (r_k − r_j A_jk)`` (for a_j > 0; a zero distance passes no gradient through cdist),
    ``∂L/∂(d_jk²/2) = −Σ_i g_ijk r_ij r_ik``.
    """

    @staticmethod
    def forward(ctx, ds: Tensor, dt: Tensor, anchors: Tensor, chunk: int, need_grad: bool) -> Tensor:
        hs, ht = 0.5 * ds * ds, 0.5 * dt * dt
        total = ds.new_zeros(())
        grad_a = torch.zeros_like(ds) if need_grad else None
        grad_h = torch.zeros_like(ds) if need_grad else None
        for start in range(0, anchors.numel(), chunk):
            rows = anchors[start:start + chunk]
            a_s, r_s = _angle_block(ds, hs, rows)
            diff, _ = _angle_block(dt, ht, rows)
            diff.neg_().add_(a_s)  # A^S − A^T
            total += F.smooth_l1_loss(diff, diff.new_zeros(()).expand_as(diff), reduction="sum")
            if need_grad:
                g = diff.clamp_(-1.0, 1.0)
                g_r = torch.bmm(g, r_s.unsqueeze(2)).squeeze(2)
                g_ra = a_s.mul_(g).sum(2)
                pos = (ds[rows] > 0).to(ds.dtype)
                grad_a.index_add_(0, rows, 2.0 * (g_r * pos - r_s * g_ra))
                g.mul_(r_s[:, :, None]).mul_(r_s[:, None, :])
                grad_h.sub_(g.sum(0))
            del a_s, diff
        if need_grad:
            ctx.save_for_backward(grad_a.add_(grad_h.mul_(ds)))
        else:
            ctx.save_for_backward(None)
        return total

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Tensor):
        (grad_d,) = ctx.saved_tensors
        if grad_d is None:  # pragma: no cover - only reached if the graph was built without need_grad
            raise RuntimeError("AngleRelation was evaluated without gradient support")
        return grad_out * grad_d, None, None, None, None


class AngleRelation(nn.Module):
    """RKD angle term: ``e_ij = normalise(x_j − x_i)``, ``A_ijk = ⟨e_ij, e_ik⟩``, ``L_A = SmoothL1(A_S, A_T)``
    averaged over all B³ entries (RKD / DistilVPR's ``F.smooth_l1_loss`` over the flattened ``bmm``; entries with
    j = i or k = i are 0 on both sides).

    The B×B×B tensor is never materialised: ``A`` is computed from the exact pairwise distances by the law of
    cosines, ``A_ijk = (d_ij² + d_ik² − d_jk²)/(2 d_ij d_ik)`` (O(B³) work instead of O(B³·D)), in blocks of
    ``chunk_size`` anchors i; the value is the sum of the per-block SmoothL1 sums divided by B³ (the full mean up to
    summation order) and the gradient is accumulated block by block (memory O(chunk·B²)). Relative to the
    ``normalise``/``bmm`` form the rounding error grows with the ratio of the two distances d_ij/d_ik (float32:
    about 6e-8 times that ratio).

    Args:
        max_anchors: use that many anchors i drawn uniformly without replacement (the SmoothL1 sum over them
            divided by ``max_anchors``·B²): an unbiased estimate of ``L_A`` at a fraction of the cost; None or ≥ B:
            exact.
        chunk_size: anchors per block (None: as many as fit ``ANGLE_CHUNK_ELEMENTS`` = 2²² entries per block).
        seed: seed of the module's own ``torch.Generator`` for the anchor draws (None: torch's global generator).
    """

    component = "angle"

    def __init__(self, max_anchors: int | None = None, chunk_size: int | None = None, seed: int | None = None):
        super().__init__()
        if max_anchors is not None and int(max_anchors) < 1:
            raise ValueError(f"max_anchors must be a positive integer or None, got {max_anchors}")
        if chunk_size is not None and int(chunk_size) < 1:
            raise ValueError(f"chunk_size must be a positive integer or None, got {chunk_size}")
        self.max_anchors = None if max_anchors is None else int(max_anchors)
        self.chunk_size = None if chunk_size is None else int(chunk_size)
        self.seed = seed
        self._generator: torch.Generator | None = None
        self.components: dict[str, Tensor] = {}

    def chunk_for(self, batch: int) -> int:
        """Anchors per block for a batch of ``batch`` descriptors."""
        if self.chunk_size is not None:
            return self.chunk_size
        return max(1, ANGLE_CHUNK_ELEMENTS // max(1, batch * batch))

    def anchors(self, batch: int, device: torch.device) -> Tensor:
        """The anchor indices of one evaluation (all of them, or a uniform sample of ``max_anchors``)."""
        if self.max_anchors is None or self.max_anchors >= batch:
            return torch.arange(batch, device=device)
        if self.seed is not None and self._generator is None:
            self._generator = torch.Generator().manual_seed(int(self.seed))
        idx = torch.randperm(batch, generator=self._generator)[:self.max_anchors]
        return idx.sort().values.to(device)

    def from_distances(self, ds: Tensor, dt: Tensor) -> Tensor:
        """The loss from the student's (differentiable) and the teacher's Euclidean distance matrices."""
        b = ds.shape[0]
        if b == 0:
            loss = _zero(ds)
        else:
            anchors = self.anchors(b, ds.device)
            need_grad = torch.is_grad_enabled() and ds.requires_grad
            total = _AngleSum.apply(ds, dt.detach(), anchors, self.chunk_for(b), need_grad)
            loss = total / (anchors.numel() * b * b)
        self.components = {self.component: loss.detach()}
        return loss

    def forward(self, student: Tensor, teacher: Tensor, positives_mask: Tensor | None = None,
                negatives_mask: Tensor | None = None) -> Tensor:
        _check_pair(student, teacher, same_dim=False, who=type(self).__name__)
        euclid = Euclidean()
        with torch.no_grad():
            dt = euclid.pairwise(teacher.detach())
        return self.from_distances(euclid.pairwise(student), dt)

    def extra_repr(self) -> str:
        return f"max_anchors={self.max_anchors}, chunk_size={self.chunk_size}, seed={self.seed}"


# ------------------------------------------------------------------------------------------------ self / cross agent


class SelfAgentLoss(nn.Module):
    """DistilVPR's self-agent "RKDG" loss on raw (unnormalised) descriptors:
    ``distance_weight·L_D + angle_weight·L_A + geodesic_weight·L_G`` (``selfagent/rkdg.py``; see
    :class:`DistanceRelation`, :class:`AngleRelation`, :class:`GeodesicRelation`). A term of weight 0 is not
    computed. RKD as in RepDistiller is ``SelfAgentLoss(distance_weight=25, angle_weight=50, geodesic_weight=0)``.

    Args:
        distance_weight, angle_weight, geodesic_weight: term weights (1, 1, 1 as DistilVPR).
        c: the geodesic term's curvature (0.1).
        angle_chunk, max_anchors, seed: :class:`AngleRelation`'s ``chunk_size``, ``max_anchors``, ``seed``.

    Components: ``distance``, ``angle``, ``geodesic`` (unweighted; only the computed ones).
    """

    def __init__(self, distance_weight: float = 1.0, angle_weight: float = 1.0, geodesic_weight: float = 1.0,
                 c: float = 0.1, angle_chunk: int | None = None, max_anchors: int | None = None,
                 seed: int | None = None):
        super().__init__()
        self.distance_weight, self.angle_weight = float(distance_weight), float(angle_weight)
        self.geodesic_weight = float(geodesic_weight)
        self.distance = DistanceRelation(Euclidean())
        self.angle = AngleRelation(max_anchors=max_anchors, chunk_size=angle_chunk, seed=seed)
        self.geodesic = GeodesicRelation(c=c)
        self.components: dict[str, Tensor] = {}

    def forward(self, student: Tensor, teacher: Tensor, positives_mask: Tensor | None = None,
                negatives_mask: Tensor | None = None) -> Tensor:
        _check_pair(student, teacher, same_dim=False, who=type(self).__name__)
        teacher = teacher.detach()
        total = _zero(student)
        parts: dict[str, Tensor] = {}
        if self.distance_weight or self.angle_weight:
            euclid = self.distance.manifold
            with torch.no_grad():
                dt = euclid.pairwise(teacher)
            ds = euclid.pairwise(student)
            if self.distance_weight:
                total = total + self.distance_weight * self.distance.from_matrices(ds, dt)
                parts.update(self.distance.components)
            if self.angle_weight:
                total = total + self.angle_weight * self.angle.from_distances(ds, dt)
                parts.update(self.angle.components)
        if self.geodesic_weight:
            total = total + self.geodesic_weight * self.geodesic(student, teacher)
            parts.update(self.geodesic.components)
        self.components = parts
        return total

    def extra_repr(self) -> str:
        return (f"distance_weight={self.distance_weight:g}, angle_weight={self.angle_weight:g}, "
                f"geodesic_weight={self.geodesic_weight:g}")


class CrossAgentLoss(nn.Module):
    """DistilVPR's cross-agent term for one manifold M (``compute_distil_loss.py``):
    ``w_st2ss·MSE(M(S,S), sg M(S,T)) + w_tt2st·MSE(M(S,T), sg M(T,T))`` on L2-normalised descriptors, MSE averaged
    over the full B×B matrix (diagonal included, as upstream). DistilVPR publishes w_st2ss = 0.1, w_tt2st = 0 for
    each of Euclidean, Spherical and Poincare(c=0.1); CSD is ``CrossAgentLoss(Spherical(), w_st2ss=0, w_tt2st=1)``.

    Gradients: st2ss reaches the student through M(S,S) only (its target is detached; the diagonal of M(S,S) is
    constant, so its entries pass no gradient); tt2st through M(S,T), whose diagonal (S_i against T_i) does pull
    each student descriptor towards its teacher's. A term of weight 0 is not computed.

    Args:
        manifold: a manifold instance or name (``euclidean``, ``spherical``, ``poincare``, ``stereographic``).
        w_st2ss, w_tt2st: term weights.
        normalize: L2-normalise both descriptors first (DistilVPR's ``logit_norm_fn='l2'``).

    Components: ``st2ss``, ``tt2st`` (unweighted MSEs of the computed terms).
    """

    def __init__(self, manifold: Manifold | str = "euclidean", w_st2ss: float = 0.1, w_tt2st: float = 0.0,
                 normalize: bool = True):
        super().__init__()
        self.manifold = make_manifold(manifold)
        self.w_st2ss, self.w_tt2st, self.normalize = float(w_st2ss), float(w_tt2st), bool(normalize)
        self.components: dict[str, Tensor] = {}

    def forward(self, student: Tensor, teacher: Tensor, positives_mask: Tensor | None = None,
                negatives_mask: Tensor | None = None) -> Tensor:
        _check_pair(student, teacher, same_dim=True, who=type(self).__name__)
        s, t = student, teacher.detach()
        if self.normalize:
            s, t = F.normalize(s, dim=1), F.normalize(t, dim=1)
        total = _zero(student)
        parts: dict[str, Tensor] = {}
        if self.w_st2ss or self.w_tt2st:
            st = self.manifold.pairwise(s, t)
            if self.w_st2ss:
                loss = F.mse_loss(self.manifold.pairwise(s), st.detach())
                total = total + self.w_st2ss * loss
                parts["st2ss"] = loss.detach()
            if self.w_tt2st:
                with torch.no_grad():
                    tt = self.manifold.pairwise(t)
                loss = F.mse_loss(st, tt)
                total = total + self.w_tt2st * loss
                parts["tt2st"] = loss.detach()
        self.components = parts
        return total

    def extra_repr(self) -> str:
        return f"w_st2ss={self.w_st2ss:g}, w_tt2st={self.w_tt2st:g}, normalize={self.normalize}"


__all__ = ["ANGLE_CHUNK_ELEMENTS", "AngleRelation", "CrossAgentLoss", "DistanceRelation", "GeodesicRelation",
           "SelfAgentLoss", "normalise_by_positive_mean"]
