"""TSCM (ICRA 2024) cross-metric distillation term, as ``docs/distillation.md`` prints it.

For a triplet (a, p, n) of L2-normalised descriptors the doc gives the student loss as
``triplet(S_a, S_p, S_n; margin 0.1) + 0.5·(m + ‖S_a−T_p‖² + ‖S_p−T_a‖² + ‖S_a−T_a‖² + ‖S_p−T_p‖² + ‖S_n−T_n‖²)²``
with m = 0.1. :class:`TSCMCrossMetric` is the second part only; the task triplet is the trainer's task loss
(:class:`crossmodal.losses.BatchHardTripletLoss` with margin 0.1, TSCM's miner and the plain mean, set in
``configs/distill/tscm.yaml``).

Upstream (nubot-nudt/TSCM, ``trainer.py``: ``CKD_loss`` and ``process_batch_stu``) sums the term over every
(anchor, positive, negative) triplet of the batch and divides by the number of triplets; the triplets come from
:class:`crossmodal.losses.TSCMMiner` (nearest positive, up to 10 violating negatives). Both are the defaults here.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .distances import Distance
from .kd import check_masks, check_student_teacher
from .miners import TSCMMiner
from .reducers import mean

__all__ = ["TSCMCrossMetric"]


class TSCMCrossMetric(nn.Module):
    """TSCM's cross-metric + same-sample distillation term, implemented literally as published.

    Student and teacher descriptors are L2-normalised. Triplets come from the masks, mined on the detached
    student's Euclidean distances by ``miner``: TSCM's own by default (:class:`crossmodal.losses.TSCMMiner`:
    nearest positive, up to 10 negatives violating ``d(a, n) < d(a, p) + sqrt(m)``, so an anchor can make several
    triplets or none), or :class:`crossmodal.losses.BatchHardMiner` (one triplet per anchor). Per triplet::

        L_cm   = ‖S_a − T_p‖² + ‖S_p − T_a‖²                     (cross-metric: anchor ↔ positive across models)
        L_soft = ‖S_a − T_a‖² + ‖S_p − T_p‖² + ‖S_n − T_n‖²      (same-sample terms)
        loss   = 0.5 · (m + L_cm + L_soft)²                      (soft=True)
        loss   = 0.5 · (m + L_cm)²                               (soft=False: L_cm only)

    averaged over the triplets (a differentiable 0 when there is none). As printed, the formula has
    no hinge and no negative term with a minus sign: every distance is pulled towards 0, the loss floor is
    ``0.5·m²`` (not 0), and the "margin" only scales the gradient (``∂loss = (m + Σ)·∂Σ``); the negative enters
    only through its same-sample term ``‖S_n − T_n‖²``. Needs ``Ds == Dt``.

    Args:
        margin: ``m`` (0.1 in TSCM).
        soft: include the same-sample terms (``L_soft``).
        miner: ``miner(dist, positives_mask, negatives_mask) -> (a, p, n)``; ``None``: ``TSCMMiner(margin)``.

    Components: ``cross_metric`` and ``soft`` (means of ``L_cm`` and ``L_soft`` over the triplets; ``soft`` is
    logged even when not used) and ``num_triplets``.
    """

    def __init__(self, margin: float = 0.1, soft: bool = True, miner: Any = None):
        super().__init__()
        self.margin, self.soft = float(margin), bool(soft)
        if miner is not None and not callable(miner):
            raise ValueError(f"miner must be callable (dist, positives_mask, negatives_mask), got {miner!r}")
        self.miner = TSCMMiner(self.margin) if miner is None else miner
        self.distance = Distance("euclidean", normalize=True)
        self.components: dict[str, Tensor] = {}

    def forward(self, student: Tensor, teacher: Tensor, positives_mask: Tensor | None = None,
                negatives_mask: Tensor | None = None) -> Tensor:
        s, t = check_student_teacher("TSCMCrossMetric", student, teacher, same_dim=True)
        pos, neg = check_masks("TSCMCrossMetric", s.shape[0], positives_mask, negatives_mask, s.device)
        s, t = F.normalize(s, dim=1), F.normalize(t, dim=1)
        with torch.no_grad():
            a, p, n = self.miner(self.distance.pairwise(s.detach()), pos, neg)

        def sq(x: Tensor, y: Tensor) -> Tensor:
            return (x - y).square().sum(dim=1)

        cross = sq(s[a], t[p]) + sq(s[p], t[a])
        same = sq(s[a], t[a]) + sq(s[p], t[p]) + sq(s[n], t[n])
        inner = self.margin + cross + same if self.soft else self.margin + cross
        loss = mean(0.5 * inner.square(), student)
        with torch.no_grad():
            num = torch.tensor(float(a.numel()), dtype=s.dtype, device=s.device)
            self.components = {
                "cross_metric": cross.mean() if a.numel() else num * 0,
                "soft": same.mean() if a.numel() else num * 0,
                "num_triplets": num,
            }
        return loss

    def extra_repr(self) -> str:
        return f"margin={self.margin}, soft={self.soft}, miner={self.miner!r}"
