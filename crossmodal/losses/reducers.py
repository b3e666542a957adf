"""Reducers from per-triplet losses to a scalar (pytorch-metric-learning's ``reducers`` idea)."""

from __future__ import annotations

from torch import Tensor


def avg_non_zero(losses: Tensor, anchor: Tensor | None = None) -> Tensor:
    """Mean over the strictly positive entries; 0 (still attached to the graph) when there are none.
    ``anchor`` (any tensor of the graph) keeps a zero loss differentiable when ``losses`` is empty."""
    nz = losses > 0
    if bool(nz.any()):
        return losses[nz].mean()
    zero = losses.sum() * 0.0
    return zero + anchor.sum() * 0.0 if anchor is not None else zero


def mean(losses: Tensor, anchor: Tensor | None = None) -> Tensor:
    """Plain mean; 0 when empty."""
    if losses.numel():
        return losses.mean()
    zero = losses.sum() * 0.0
    return zero + anchor.sum() * 0.0 if anchor is not None else zero


REDUCERS = {"avg_non_zero": avg_non_zero, "mean": mean}
