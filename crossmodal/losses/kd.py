"""Classic knowledge-distillation baselines on descriptors (the methods VPR distillation papers compare against).

Every loss follows the project's distillation contract::

    loss(student [B, Ds], teacher [B, Dt], positives_mask=None, negatives_mask=None) -> scalar Tensor

The teacher is detached inside (gradients reach the student only), the masks are accepted and ignored (none of
these baselines mines triplets), and ``self.components`` holds the detached scalar parts of the last forward.
Losses that compare descriptors entry by entry (:class:`FeatureL2`, :class:`HintonKD`) need ``Ds == Dt`` and raise
a ``ValueError`` naming both dimensions otherwise; the relational ones (:class:`PKT`, :class:`SP`, :class:`CC`,
:class:`DarkRank`) only compare ``[B, B]`` relations, so the dimensions may differ.

References (each class says exactly which formula it follows):

* FitNet (Romero et al., ICLR 2015) / EPC-Net-style feature regression: :class:`FeatureL2`.
* Hinton et al. 2015, as RepDistiller's ``DistillKL``: :class:`HintonKD`.
* PKT (Passalis & Tefas, ECCV 2018), RepDistiller's ``PKT`` (the authors' code): :class:`PKT`.
* SP (Tung & Mori, ICCV 2019), RepDistiller's ``Similarity``: :class:`SP`.
* CCKD (Peng et al., ICCV 2019), the Gaussian-RBF Taylor form of Knowledge-Distillation-Zoo's ``CC``: :class:`CC`.
* DarkRank (Chen et al., AAAI 2018), "hard" (ListMLE / Plackett-Luce) variant: :class:`DarkRank`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .distances import Distance

__all__ = ["CC", "PKT", "SP", "DarkRank", "FeatureL2", "HintonKD"]


# ---------------------------------------------------------------------------------------------- shared checks


def check_student_teacher(loss: str, student: Tensor, teacher: Tensor, same_dim: bool = False) -> tuple[Tensor, Tensor]:
    """Validate ``student [B, Ds]`` / ``teacher [B, Dt]`` and return ``(student, detached teacher)``, the teacher
    cast to the student's dtype and device. ``same_dim`` requires ``Ds == Dt``."""
    if isinstance(teacher, Mapping):
        raise TypeError(f"{loss} takes one teacher tensor [B, Dt], got a mapping with keys {sorted(teacher)} "
                         f"(use MultiTeacherLoss for several teachers)")
    if not isinstance(student, Tensor) or student.dim() != 2:
        raise ValueError(f"{loss}: student must be a [B, Ds] tensor, got {_shape(student)}")
    if not isinstance(teacher, Tensor) or teacher.dim() != 2:
        raise ValueError(f"{loss}: teacher must be a [B, Dt] tensor, got {_shape(teacher)}")
    if teacher.shape[0] != student.shape[0]:
        raise ValueError(f"{loss}: student and teacher batch sizes differ: {student.shape[0]} vs {teacher.shape[0]}")
    if same_dim and teacher.shape[1] != student.shape[1]:
        raise ValueError(f"{loss} compares descriptors entry by entry and needs equal dimensions: student "
                         f"Ds={student.shape[1]}, teacher Dt={teacher.shape[1]} (add a projection to the student)")
    return student, teacher.detach().to(dtype=student.dtype, device=student.device)


def check_masks(loss: str, b: int, positives_mask: Tensor | None, negatives_mask: Tensor | None,
                device: torch.device, required: bool = True) -> tuple[Tensor | None, Tensor | None]:
    """Validate ``[B, B]`` masks and return them as bool on ``device`` with the diagonal cleared (an item is never
    its own positive or negative). ``(None, None)`` when both are absent and not ``required``."""
    if positives_mask is None or negatives_mask is None:
        if required or positives_mask is not None or negatives_mask is not None:
            raise ValueError(f"{loss} mines triplets from the batch: call it with both positives_mask and "
                             f"negatives_mask ([B, B] bool), got positives_mask={_shape(positives_mask)}, "
                             f"negatives_mask={_shape(negatives_mask)}")
        return None, None
    eye = torch.eye(b, dtype=torch.bool, device=device)
    out = []
    for name, m in (("positives_mask", positives_mask), ("negatives_mask", negatives_mask)):
        if tuple(m.shape) != (b, b):
            raise ValueError(f"{loss}: {name} must be [{b}, {b}], got {tuple(m.shape)}")
        out.append(m.to(device=device, dtype=torch.bool) & ~eye)
    return out[0], out[1]


def _shape(x) -> str:
    return str(tuple(x.shape)) if isinstance(x, Tensor) else type(x).__name__


def _positive(name: str, value: float) -> float:
    value = float(value)
    if not value > 0:
        raise ValueError(f"{name} must be > 0, got {value}")
    return value


# ---------------------------------------------------------------------------------------------------- losses


class FeatureL2(nn.Module):
    """FitNet / EPC-Net-style feature regression: ``mean((S − T)²)`` over all ``B·D`` entries
    (``F.mse_loss``), optionally on L2-normalised descriptors. Needs ``Ds == Dt``; zero iff ``S == T``.

    Components: ``feature_l2``.
    """

    def __init__(self, normalize: bool = False):
        super().__init__()
        self.normalize = bool(normalize)
        self.components: dict[str, Tensor] = {}

    def forward(self, student: Tensor, teacher: Tensor, positives_mask: Tensor | None = None,
                negatives_mask: Tensor | None = None) -> Tensor:
        s, t = check_student_teacher("FeatureL2", student, teacher, same_dim=True)
        if self.normalize:
            s, t = F.normalize(s, dim=1), F.normalize(t, dim=1)
        loss = F.mse_loss(s, t)
        self.components = {"feature_l2": loss.detach()}
        return loss

    def extra_repr(self) -> str:
        return f"normalize={self.normalize}"


class HintonKD(nn.Module):
    """Hinton et al. (2015) knowledge distillation with descriptors treated as logits, exactly RepDistiller's
    ``DistillKL``: ``τ² · Σ_i KL(softmax(T_i/τ) ‖ softmax(S_i/τ)) / B`` (sum over the batch and the softmax
    dimension, divided by ``B``: "batchmean"). Needs ``Ds == Dt``; zero iff ``softmax(S/τ) == softmax(T/τ)`` row
    by row (e.g. ``S == T``, or a per-row constant shift).

    Components: ``kd``.
    """

    def __init__(self, temperature: float = 4.0):
        super().__init__()
        self.temperature = _positive("temperature", temperature)
        self.components: dict[str, Tensor] = {}

    def forward(self, student: Tensor, teacher: Tensor, positives_mask: Tensor | None = None,
                negatives_mask: Tensor | None = None) -> Tensor:
        s, t = check_student_teacher("HintonKD", student, teacher, same_dim=True)
        tau = self.temperature
        log_p_s = F.log_softmax(s / tau, dim=1)
        log_p_t = F.log_softmax(t / tau, dim=1)
        loss = F.kl_div(log_p_s, log_p_t, reduction="sum", log_target=True) * tau**2 / max(s.shape[0], 1)
        self.components = {"kd": loss.detach()}
        return loss

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}"


class PKT(nn.Module):
    """Probabilistic knowledge transfer (Passalis & Tefas, ECCV 2018), exactly RepDistiller's ``PKT`` (the
    authors' ``cosine_similarity_loss``):

    * ``x̂ = x / (‖x‖ + eps)`` row by row (NaN entries set to 0), for student and teacher;
    * ``K = (x̂ x̂ᵀ + 1) / 2`` (cosine similarities mapped to ``[0, 1]``, diagonal included);
    * ``P = K / K.sum(1)`` row-normalised to conditional distributions;
    * ``loss = mean_{i,j}( P^T_ij · log((P^T_ij + eps) / (P^S_ij + eps)) )``.

    The reduction is RepDistiller's ``torch.mean`` over all ``B²`` entries, i.e. the row-summed KL(teacher ‖
    student) averaged over anchors and divided once more by ``B``. Dimensions may differ. Exactly 0 when the
    student's cosine matrix equals the teacher's; invariant (up to ``eps``) to per-row positive scaling and to
    orthogonal transforms of either input.

    Components: ``pkt``.
    """

    def __init__(self, eps: float = 1e-7):
        super().__init__()
        self.eps = float(eps)
        self.components: dict[str, Tensor] = {}

    def _conditional(self, x: Tensor) -> Tensor:
        x = x / (torch.linalg.vector_norm(x, dim=1, keepdim=True) + self.eps)
        x = torch.where(torch.isnan(x), torch.zeros_like(x), x)
        k = (x @ x.T + 1.0) / 2.0
        return k / k.sum(dim=1, keepdim=True)

    def forward(self, student: Tensor, teacher: Tensor, positives_mask: Tensor | None = None,
                negatives_mask: Tensor | None = None) -> Tensor:
        s, t = check_student_teacher("PKT", student, teacher)
        p_s, p_t = self._conditional(s), self._conditional(t)
        loss = torch.mean(p_t * torch.log((p_t + self.eps) / (p_s + self.eps)))
        self.components = {"pkt": loss.detach()}
        return loss

    def extra_repr(self) -> str:
        return f"eps={self.eps}"


class SP(nn.Module):
    """Similarity-preserving distillation (Tung & Mori, ICCV 2019), exactly RepDistiller's ``Similarity`` on one
    descriptor pair: ``G = X Xᵀ`` (batch Gram matrix), each row L2-normalised (``F.normalize``, eps 1e-12),
    ``loss = Σ_ij (G^T_ij − G^S_ij)² / B²``. Dimensions may differ. Zero when ``S == T``; invariant to a global
    positive scale and to orthogonal transforms of either input — *not* to per-row scaling (row ``i`` of ``G``
    carries the norms of all other items ``j``).

    Components: ``sp``.
    """

    def __init__(self):
        super().__init__()
        self.components: dict[str, Tensor] = {}

    def forward(self, student: Tensor, teacher: Tensor, positives_mask: Tensor | None = None,
                negatives_mask: Tensor | None = None) -> Tensor:
        s, t = check_student_teacher("SP", student, teacher)
        b = s.shape[0]
        g_s = F.normalize(s @ s.T, dim=1)
        g_t = F.normalize(t @ t.T, dim=1)
        loss = (g_t - g_s).square().sum() / max(b * b, 1)
        self.components = {"sp": loss.detach()}
        return loss


class CC(nn.Module):
    """Correlation congruence (Peng et al., CCKD, ICCV 2019) with the paper's Gaussian-RBF kernel in its
    truncated Taylor form, as Knowledge-Distillation-Zoo's ``CC`` (RepDistiller's ``Correlation`` computes a
    different, consecutive-pair formula that is not used here):

    * ``x̂ = x / max(‖x‖, 1e-12)`` (``F.normalize``), ``c_ij = ⟨x̂_i, x̂_j⟩``;
    * ``k(x_i, x_j) = exp(−γ‖x̂_i − x̂_j‖²) = exp(−2γ)·exp(2γ c_ij)
      ≈ Σ_{p=0}^{order} exp(−2γ)·(2γ)^p / p! · c_ij^p``;
    * ``loss = mean_{i,j}(k^S_ij − k^T_ij)²`` over all ``B²`` entries (``F.mse_loss``; the diagonal, equal for
      both, counts in the denominator).

    Dimensions may differ. Zero when the cosine matrices agree; invariant to per-row positive scaling.

    Components: ``cc``.
    """

    def __init__(self, gamma: float = 0.4, order: int = 2):
        super().__init__()
        if int(order) != order or order < 0:
            raise ValueError(f"order must be a non-negative integer, got {order}")
        self.gamma, self.order = float(gamma), int(order)
        self.components: dict[str, Tensor] = {}

    def correlation(self, x: Tensor) -> Tensor:
        """``[B, B]`` Taylor-approximated Gaussian-RBF kernel matrix of the rows of ``x``."""
        x = F.normalize(x, dim=1)
        c = x @ x.T
        out = torch.zeros_like(c)
        for p in range(self.order + 1):
            out = out + math.exp(-2.0 * self.gamma) * (2.0 * self.gamma) ** p / math.factorial(p) * c.pow(p)
        return out

    def forward(self, student: Tensor, teacher: Tensor, positives_mask: Tensor | None = None,
                negatives_mask: Tensor | None = None) -> Tensor:
        s, t = check_student_teacher("CC", student, teacher)
        loss = F.mse_loss(self.correlation(s), self.correlation(t))
        self.components = {"cc": loss.detach()}
        return loss

    def extra_repr(self) -> str:
        return f"gamma={self.gamma}, order={self.order}"


class DarkRank(nn.Module):
    """DarkRank (Chen, Wang & Zhang, AAAI 2018), "hard" variant: listwise transfer of the teacher's ranking.

    For each anchor ``i`` the other ``B − 1`` items are ranked by the teacher's Euclidean distance (ascending,
    stable sort; ties keep batch order), giving a permutation ``π_i``. The student scores them with
    ``s_ij = −α · d^S_ij^β`` (Euclidean distance, as DarkRank and RKD's ``HardDarkRank``) and the loss is the
    negative Plackett-Luce log-likelihood of the teacher's permutation, averaged over anchors::

        loss = −mean_i Σ_{k=1}^{L} [ s_{i,π_i(k)} − log Σ_{l=k}^{B−1} exp(s_{i,π_i(l)}) ]

    with ``L = list_length`` (default ``B − 1``, the whole list). The denominators run over *all* remaining items
    (the top-``L`` Plackett-Luce likelihood); RKD's ``HardDarkRank(permute_len=L)`` instead truncates the list to
    its first ``L`` items before normalising, which equals this only for ``L = B − 1``. The suffix log-sum-exps
    come from one ``logcumsumexp`` over the reversed list, so memory is ``O(B²)``. Dimensions may differ.

    The loss is not zero at ``S == T`` (a Plackett-Luce likelihood is below 1 for finite scores). For fixed
    per-anchor scores it is lowest when the scores are sorted in the teacher's order (swapping an adjacent
    inverted pair raises the likelihood), and a student with the teacher's order lowers it further by widening
    its score gaps (scaling such a student by ``c > 1`` decreases the loss towards 0).

    Args:
        alpha, beta: score scale and distance exponent (3 and 3 in DarkRank).
        list_length: how many of the teacher's top-ranked items per anchor enter the likelihood (None: all).
        normalize: L2-normalise both descriptors first (not in DarkRank; useful for unnormalised descriptors,
            whose large distances make ``α·d^β`` saturate).

    Components: ``darkrank``.
    """

    def __init__(self, alpha: float = 3.0, beta: float = 3.0, list_length: int | None = None,
                 normalize: bool = False):
        super().__init__()
        if list_length is not None and (int(list_length) != list_length or list_length < 1):
            raise ValueError(f"list_length must be a positive integer or None, got {list_length}")
        self.alpha, self.beta = float(alpha), _positive("beta", beta)
        self.list_length = None if list_length is None else int(list_length)
        self.distance = Distance("euclidean", normalize)
        self.components: dict[str, Tensor] = {}

    def forward(self, student: Tensor, teacher: Tensor, positives_mask: Tensor | None = None,
                negatives_mask: Tensor | None = None) -> Tensor:
        s, t = check_student_teacher("DarkRank", student, teacher)
        b = s.shape[0]
        if b < 2:
            raise ValueError(f"DarkRank ranks the other items of the batch and needs B >= 2, got B={b}")
        eye = torch.eye(b, dtype=torch.bool, device=s.device)
        with torch.no_grad():
            d_t = self.distance.pairwise(self.distance.prepare(t)).masked_fill(eye, float("inf"))
            order = torch.sort(d_t, dim=1, stable=True).indices[:, : b - 1]  # self (inf) sorts last
        d_s = self.distance.pairwise(self.distance.prepare(s))
        scores = -self.alpha * d_s.gather(1, order).pow(self.beta)  # [B, B-1] in the teacher's order
        suffix = torch.logcumsumexp(scores.flip(1), dim=1).flip(1)  # log Σ_{l>=k} exp(s_l)
        length = b - 1 if self.list_length is None else min(self.list_length, b - 1)
        loss = -(scores - suffix)[:, :length].sum(dim=1).mean()
        self.components = {"darkrank": loss.detach()}
        return loss

    def extra_repr(self) -> str:
        return (f"alpha={self.alpha}, beta={self.beta}, list_length={self.list_length}, "
                f"normalize={self.distance.normalize}")
