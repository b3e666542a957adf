"""Triplet miners: ``miner(dist [B, B], positives_mask, negatives_mask) -> (anchors, positives, negatives)``, index
tensors of equal length, one entry per triplet (pytorch-metric-learning's ``miners`` idea). Masks are bool with
the diagonal cleared; ``dist`` is detached. Losses that take a ``miner`` mine with it on the detached student.

- :class:`BatchHardMiner` (MinkLoc3D / DistilVPR): one triplet per anchor having a positive and a negative, the
  hardest (farthest) positive and the hardest (nearest) negative.
- :class:`TSCMMiner` (TSCM, ICRA 2024, ``datasets/pitts.py`` of nubot-nudt/TSCM, itself from STUN): per anchor the
  *nearest* positive, then up to ``max_negatives`` (10) negatives, nearest first, among those that violate
  ``d(a, n) < d(a, p) + sqrt(margin)`` (upstream compares with ``margin ** 0.5``, 0.316 for margin 0.1, not the
  margin itself); an anchor without a violating negative makes no triplet (upstream drops that query from the
  batch). Upstream picks the negatives among 1,000 sampled from the whole database (plus each query's previous
  negatives) on a descriptor cache; here they come from the batch's negatives, on the current embeddings.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def mine_batch_hard(dist: Tensor, positives_mask: Tensor, negatives_mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Anchor, hardest-positive and hardest-negative indices for the anchors having both (``dist`` [B, B])."""
    pos, neg = positives_mask.bool(), negatives_mask.bool()
    hp = dist.masked_fill(~pos, float("-inf")).argmax(dim=1)
    hn = dist.masked_fill(~neg, float("inf")).argmin(dim=1)
    a = torch.nonzero(pos.any(dim=1) & neg.any(dim=1)).squeeze(1)
    return a, hp[a], hn[a]


class BatchHardMiner:
    """Hardest positive and hardest negative of every anchor that has both (:func:`mine_batch_hard`)."""

    def __call__(self, dist: Tensor, positives_mask: Tensor, negatives_mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return mine_batch_hard(dist, positives_mask, negatives_mask)

    def __repr__(self) -> str:
        return "BatchHardMiner()"


class TSCMMiner:
    """TSCM's mining: nearest positive, up to ``max_negatives`` violating negatives (nearest first).

    Args:
        margin: the triplet margin ``m``; a negative violates when ``d(a, n) < d(a, p) + threshold``.
        max_negatives: most negatives per anchor (TSCM's ``nNeg`` = 10).
        threshold: the violation threshold; ``None``: ``sqrt(margin)`` as upstream computes it.
    """

    def __init__(self, margin: float = 0.1, max_negatives: int = 10, threshold: float | None = None):
        if not margin >= 0:
            raise ValueError(f"margin must be >= 0, got {margin}")
        if int(max_negatives) < 1:
            raise ValueError(f"max_negatives must be at least 1, got {max_negatives}")
        self.margin, self.max_negatives = float(margin), int(max_negatives)
        self.threshold = math.sqrt(self.margin) if threshold is None else float(threshold)

    def __call__(self, dist: Tensor, positives_mask: Tensor, negatives_mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        pos, neg = positives_mask.bool(), negatives_mask.bool()
        b = dist.shape[0]
        ap, p = dist.masked_fill(~pos, float("inf")).min(dim=1)  # nearest positive (inf: none)
        k = min(self.max_negatives, b)
        dn, n = dist.masked_fill(~neg, float("inf")).topk(k, dim=1, largest=False)  # nearest negatives, sorted
        violating = torch.isfinite(dn) & (dn < ap.unsqueeze(1) + self.threshold) & torch.isfinite(ap).unsqueeze(1)
        rows, cols = torch.nonzero(violating, as_tuple=True)  # row-major: anchors in order, negatives nearest first
        return rows, p[rows], n[rows, cols]

    def __repr__(self) -> str:
        return f"TSCMMiner(margin={self.margin}, max_negatives={self.max_negatives}, threshold={self.threshold:.4g})"


MINERS = {"batch_hard": BatchHardMiner, "tscm": TSCMMiner}
