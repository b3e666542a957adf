"""Truncated Smooth-AP: MinkLoc3Dv2's ranking loss (jac99/MinkLoc3Dv2 ``models/losses/truncated_smoothap.py``
with ``models/losses/loss_utils.py``'s ``sigmoid`` and ``compute_aff``).

Smooth-AP (Brown et al., ECCV 2020) replaces the rank indicator by a temperature sigmoid; the "truncated" variant of
MinkLoc3Dv2 (Komorowski, ICPR 2022) only scores the ``k = positives_per_query`` positives most similar to each query.
For a query q with positives P and negatives N (the masks; an item is never its own positive or negative) and
similarities s(q, ·), each of its k closest positives p gets

    R_P(p)   = 1 + Σ_{z ∈ P, z ≠ p} σ((s(q, z) − s(q, p)) / τ)      (its smooth rank among the positives)
    R_all(p) = R_P(p) + Σ_{z ∈ N} σ((s(q, z) − s(q, p)) / τ)          (... among positives and negatives)

with σ's argument clamped to [−50, 50] (upstream's ``sigmoid``). AP(q) is the mean of R_P / R_all over the
(at most k) positives q has, the loss is 1 − the mean AP over the queries having at least one positive. Items that
are neither positive nor negative of q do not take part in its ranking.

Deliberate differences from upstream:

- ``similarity`` names: ``dot`` is upstream's ``'cosine'`` (``compute_aff``: the plain dot product of the embeddings
  as they are; MinkLoc3Dv2 does not normalise them), ``cosine`` is the true cosine (L2-normalised first),
  ``euclidean`` the negative Euclidean distance (upstream's ``'euclidean'``). Note: upstream's class defaults to
  ``'cosine'`` but its training script passes ``TrainingParams.similarity``, whose default is ``'euclidean'`` and which
  the published configs (``config/config_*_v2.txt``) leave unset: the published model was trained with
  ``similarity='euclidean'`` (``configs/teacher_loss/smoothap.yaml`` follows that).
- k is capped at the batch size (upstream's ``topk`` fails when the batch is smaller than ``positives_per_query``).
- A batch without any query having a positive gives a zero loss that is still connected to the embeddings
  (upstream: NaN, the mean of nothing).
- Half-precision embeddings are scored in float32 (upstream has no mixed precision).
- ``best_positive_ranking`` and ``recall_at_1`` are averaged over the queries having a positive (upstream: over
  every row, ranking the rows without positives against an arbitrary item), and ``recall_at_1`` counts a hit when no
  negative is more similar than the closest positive (upstream's ``hard_ranking <= 1`` also counts one negative
  ahead, i.e. recall@2).
- Returns :class:`~crossmodal.losses.TripletLossOutput` with the statistics the teacher trainer reads from a triplet
  loss (``num_triplets`` etc., see :class:`TruncatedSmoothAP`) besides upstream's.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .kd import check_masks
from .triplet import TripletLossOutput, spread

__all__ = ["SIMILARITIES", "TruncatedSmoothAP", "affinity", "clamped_sigmoid"]

SIMILARITIES = ("dot", "cosine", "euclidean")
#: Bound of the sigmoid's argument (upstream ``loss_utils.sigmoid`` clamps its exponent to this).
SIGMOID_CLAMP = 50.0


def affinity(x: Tensor, similarity: str) -> Tensor:
    """``[B, B]`` similarities of the rows of ``x``: ``dot`` (x·xᵀ), ``cosine`` or ``euclidean`` (−distance)."""
    if similarity == "dot":
        return x @ x.T
    if similarity == "cosine":
        u = F.normalize(x, dim=1)
        return u @ u.T
    if similarity == "euclidean":
        return -torch.cdist(x.unsqueeze(0), x.unsqueeze(0)).squeeze(0)
    raise ValueError(f"similarity must be one of {SIMILARITIES}, got {similarity!r}")


def clamped_sigmoid(x: Tensor, tau: float) -> Tensor:
    """σ(x / τ) with the argument clamped to ±50 (zero gradient beyond, as upstream)."""
    return torch.sigmoid((x / tau).clamp(-SIGMOID_CLAMP, SIGMOID_CLAMP))


class TruncatedSmoothAP(nn.Module):
    """``loss_fn(embeddings [B, D], positives_mask [B, B], negatives_mask [B, B])`` → :class:`TripletLossOutput`.

    Args:
        tau1: sigmoid temperature on similarity differences (0.01, MinkLoc3Dv2's published value).
        similarity: ``dot`` (default: upstream's ``'cosine'``, the plain dot product of unnormalised embeddings),
            ``cosine`` (true cosine of L2-normalised embeddings) or ``euclidean`` (negative Euclidean distance).
        positives_per_query: how many of each query's closest positives are ranked (4).

    Stats (detached 0-d tensors): ``num_triplets`` (queries with at least one positive), ``num_non_zero_triplets``
    (those whose smooth AP is below 1), ``non_zero_fraction``, ``spread`` and ``mean_embedding_norm`` (as the
    triplet loss), ``pos_neg_gap`` (mean over queries having a positive and a negative of the Euclidean distance to
    the nearest negative minus that to the farthest positive, comparable with the triplet's), ``ap``,
    ``best_positive_ranking`` (negatives more similar than the closest positive), ``recall_at_1`` and
    ``positives_per_query`` (mean number of positives per row, as upstream).
    """

    def __init__(self, tau1: float = 0.01, similarity: str = "dot", positives_per_query: int = 4):
        super().__init__()
        if not float(tau1) > 0:
            raise ValueError(f"tau1 must be > 0, got {tau1}")
        if similarity not in SIMILARITIES:
            raise ValueError(f"similarity must be one of {SIMILARITIES}, got {similarity!r}")
        if int(positives_per_query) < 1:
            raise ValueError(f"positives_per_query must be >= 1, got {positives_per_query}")
        self.tau1, self.similarity, self.positives_per_query = float(tau1), similarity, int(positives_per_query)

    def forward(self, embeddings: Tensor, positives_mask: Tensor, negatives_mask: Tensor) -> TripletLossOutput:
        if embeddings.dim() != 2 or embeddings.shape[0] == 0:
            raise ValueError(f"embeddings must be [B, D] with B >= 1, got {tuple(embeddings.shape)}")
        x = embeddings.float() if embeddings.dtype in (torch.float16, torch.bfloat16) else embeddings
        pos, neg = check_masks("TruncatedSmoothAP", x.shape[0], positives_mask, negatives_mask, x.device)
        s = affinity(x, self.similarity)
        ratio, valid, closest = self._rank_ratios(s, pos, neg)
        n_valid = valid.sum(dim=1)
        queries = n_valid > 0
        ap_per_query = (ratio * valid).sum(dim=1)[queries] / n_valid[queries]
        if queries.any():
            ap = ap_per_query.mean()
            loss = 1.0 - ap
        else:
            ap, loss = x.new_zeros(()), x.sum() * 0.0
        stats = self._stats(x, s.detach(), pos, neg, closest, queries, ap_per_query.detach(), ap.detach())
        return TripletLossOutput(loss, stats)

    def _rank_ratios(self, s: Tensor, pos: Tensor, neg: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``R_P / R_all`` ``[B, k]`` for each query's k closest positives, which of the k are real positives
        (a query with fewer than k positives fills its list with other items), and the closest positive's index."""
        k = min(self.positives_per_query, s.shape[0])
        ranked = s.detach().masked_fill(~pos, float("-inf"))
        idx = ranked.topk(k, dim=1).indices  # [B, k], most similar first
        # diff[q, j, z] = s(q, z) - s(q, idx[q, j]): how far z ranks ahead of the j-th closest positive
        diff = s.unsqueeze(1) - s.gather(1, idx).unsqueeze(2)
        sig = clamped_sigmoid(diff, self.tau1)
        others = torch.ones_like(sig, dtype=torch.bool).scatter(2, idx.unsqueeze(2), False)  # z != the positive
        r_pos = 1.0 + (sig * (pos.unsqueeze(1) & others)).sum(dim=2)
        r_all = r_pos + (sig * neg.unsqueeze(1)).sum(dim=2)
        return r_pos / r_all, pos.gather(1, idx), idx[:, 0]

    @torch.no_grad()
    def _stats(self, embeddings: Tensor, s: Tensor, pos: Tensor, neg: Tensor, closest: Tensor, queries: Tensor,
               ap_per_query: Tensor, ap: Tensor) -> dict[str, Tensor]:
        e = embeddings.detach()
        nt = queries.sum().to(e.dtype)
        nz = (ap_per_query < 1.0).sum().to(e.dtype)
        # negatives strictly more similar than the closest positive, per query having a positive
        ahead = ((s > s.gather(1, closest.unsqueeze(1))) & neg).sum(dim=1)[queries].to(e.dtype)
        zero = e.new_zeros(())
        return {
            "num_triplets": nt,
            "num_non_zero_triplets": nz,
            "non_zero_fraction": nz / nt.clamp(min=1.0),
            "pos_neg_gap": _pos_neg_gap(e, pos, neg),
            "mean_embedding_norm": e.norm(dim=1).mean(),
            "spread": spread(e),
            "ap": ap.to(e.dtype),
            "best_positive_ranking": ahead.mean() if ahead.numel() else zero,
            "recall_at_1": (ahead == 0).to(e.dtype).mean() if ahead.numel() else zero,
            "positives_per_query": pos.sum(dim=1).to(e.dtype).mean(),
        }

    def extra_repr(self) -> str:
        return f"tau1={self.tau1}, similarity={self.similarity!r}, positives_per_query={self.positives_per_query}"


def _pos_neg_gap(e: Tensor, pos: Tensor, neg: Tensor) -> Tensor:
    """Mean over the rows having a positive and a negative of (nearest negative − farthest positive) distance."""
    d = torch.cdist(e.unsqueeze(0), e.unsqueeze(0)).squeeze(0)
    rows = pos.any(dim=1) & neg.any(dim=1)
    if not rows.any():
        return e.new_zeros(())
    far_pos = d.masked_fill(~pos, float("-inf")).max(dim=1).values
    near_neg = d.masked_fill(~neg, float("inf")).min(dim=1).values
    return (near_neg - far_pos)[rows].mean()
