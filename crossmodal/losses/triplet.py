"""Batch-hard triplet loss with masks (MinkLoc3D's ``BatchHardTripletLossWithMasks`` on pytorch-metric-learning).

For every anchor a with at least one positive and one negative in the batch (masks from the collate function):
p = the hardest positive (largest d(a, ·) among positives), n = the hardest negative (smallest d(a, ·) among
negatives), both mined on detached embeddings; loss_a = relu(d(a, p) − d'(a, n) + margin) with
d'(a, n) = min(d(a, n), d(p, n)) when ``swap`` (the negative is only swapped against the positive *after*
choosing n by the anchor, as pytorch-metric-learning's ``TripletMarginLoss(swap=True)`` does on mined triplets),
else d(a, n). Reduced by the mean over non-zero losses (``AvgNonZeroReducer``). Anchors without a positive or
without a negative make no triplet.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from .distances import Distance
from .miners import BatchHardMiner, mine_batch_hard
from .reducers import REDUCERS

__all__ = ["BatchHardTripletLoss", "TripletLossOutput", "mine_batch_hard", "spread"]


class TripletLossOutput(NamedTuple):
    loss: Tensor  #: scalar, differentiable
    stats: dict[str, Tensor]  #: detached 0-d tensors (see :class:`BatchHardTripletLoss`)

    def floats(self) -> dict[str, float]:
        """``loss`` and ``stats`` as Python floats (one device sync), for logging and batch expansion."""
        out = {"loss": float(self.loss.detach())}
        out.update({k: float(v) for k, v in self.stats.items()})
        return out


def spread(embeddings: Tensor) -> Tensor:
    """Mean distance of the L2-normalised rows to their mean (0: all one direction, collapsed; about 1 for
    directions spread over the sphere)."""
    u = torch.nn.functional.normalize(embeddings.float(), dim=1)
    return (u - u.mean(dim=0, keepdim=True)).norm(dim=1).mean()


class BatchHardTripletLoss(nn.Module):
    """``loss_fn(embeddings [B, D], positives_mask [B, B], negatives_mask [B, B])`` → :class:`TripletLossOutput`.

    Args:
        margin: triplet margin (0.2).
        swap: also use the positive–negative distance (MinkLoc3D).
        distance: ``euclidean`` (default, unnormalised as DistilVPR), ``squared_euclidean`` or ``cosine``.
        normalize: L2-normalise embeddings first.
        reducer: ``avg_non_zero`` (default) or ``mean`` (TSCM: the sum over all triplets over their number).
        miner: ``miner(dist, positives_mask, negatives_mask) -> (a, p, n)`` on the detached distances
            (:mod:`crossmodal.losses.miners`); ``None``: batch hard. With :class:`~crossmodal.losses.TSCMMiner` an
            anchor can make several triplets.

    Stats: ``num_triplets`` (triplets mined; batch hard: the anchors used), ``num_non_zero_triplets``, ``non_zero_fraction`` (0 without
    triplets; MinkLoc3D grows the batch when it falls below a threshold), ``mean_pos_dist`` / ``mean_neg_dist``
    (hardest positive / hardest anchor–negative distances, before swap, over the anchors used),
    ``pos_neg_gap`` (their difference: ≤ 0 means the hardest negatives sit closer than the hardest positives),
    ``mean_embedding_norm`` and ``spread`` (mean distance of the L2-normalised embeddings to their mean
    direction: 0 when every descriptor points the same way, i.e. collapse).
    """

    def __init__(self, margin: float = 0.2, swap: bool = True, distance: str = "euclidean",
                 normalize: bool = False, reducer: str = "avg_non_zero", miner: Any = None):
        super().__init__()
        if reducer not in REDUCERS:
            raise ValueError(f"reducer must be one of {sorted(REDUCERS)}, got {reducer!r}")
        self.margin, self.swap, self.reducer = float(margin), bool(swap), reducer
        self.distance = Distance(distance, normalize)
        if miner is not None and not callable(miner):
            raise ValueError(f"miner must be callable (dist, positives_mask, negatives_mask), got {miner!r}")
        self.miner = BatchHardMiner() if miner is None else miner

    def forward(self, embeddings: Tensor, positives_mask: Tensor, negatives_mask: Tensor) -> TripletLossOutput:
        if embeddings.dim() != 2:
            raise ValueError(f"embeddings must be [B, D], got {tuple(embeddings.shape)}")
        b = embeddings.shape[0]
        for name, m in (("positives_mask", positives_mask), ("negatives_mask", negatives_mask)):
            if tuple(m.shape) != (b, b):
                raise ValueError(f"{name} must be [{b}, {b}], got {tuple(m.shape)}")
        device = embeddings.device
        pos = positives_mask.to(device=device, dtype=torch.bool)
        neg = negatives_mask.to(device=device, dtype=torch.bool)
        eye = torch.eye(b, dtype=torch.bool, device=device)
        pos, neg = pos & ~eye, neg & ~eye
        x = self.distance.prepare(embeddings)
        with torch.no_grad():
            a, p, n = self.miner(self.distance.pairwise(x.detach()), pos, neg)
        ap = self.distance.paired(x[a], x[p])
        an = self.distance.paired(x[a], x[n])
        an_eff = torch.minimum(an, self.distance.paired(x[p], x[n])) if self.swap else an
        losses = torch.relu(ap - an_eff + self.margin)
        loss = REDUCERS[self.reducer](losses, embeddings)
        with torch.no_grad():
            nt = torch.tensor(float(a.numel()), device=device)
            nz = (losses > 0).sum().to(nt.dtype)
            stats = {
                "num_triplets": nt,
                "num_non_zero_triplets": nz,
                "non_zero_fraction": nz / nt.clamp(min=1.0),
                "mean_pos_dist": ap.detach().mean() if a.numel() else nt * 0,
                "mean_neg_dist": an.detach().mean() if a.numel() else nt * 0,
                "mean_embedding_norm": embeddings.detach().norm(dim=1).mean() if b else nt * 0,
            }
            stats["pos_neg_gap"] = stats["mean_neg_dist"] - stats["mean_pos_dist"]
            stats["spread"] = spread(embeddings.detach()) if b else nt * 0
        return TripletLossOutput(loss, stats)

    def extra_repr(self) -> str:
        return (f"margin={self.margin}, swap={self.swap}, distance={self.distance}, reducer={self.reducer!r}, "
                f"miner={self.miner!r}")
