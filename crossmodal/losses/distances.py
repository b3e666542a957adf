"""Distances between embeddings (pytorch-metric-learning's ``distances`` idea, reduced to what we use).

Every distance grows with dissimilarity (cosine is used as ``1 - cos``), so the hardest positive is the row
maximum and the hardest negative the row minimum whatever the kind. ``normalize`` L2-normalises embeddings first.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

KINDS = ("euclidean", "squared_euclidean", "cosine")


class Distance:
    def __init__(self, kind: str = "euclidean", normalize: bool = False):
        if kind not in KINDS:
            raise ValueError(f"distance must be one of {KINDS}, got {kind!r}")
        self.kind, self.normalize = kind, bool(normalize)

    def prepare(self, x: Tensor) -> Tensor:
        return F.normalize(x, dim=-1) if self.normalize else x

    def pairwise(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """``[N, M]`` distances between the rows of (prepared) ``x`` and ``y`` (default ``x``), exact (no
        ``|a|² + |b|² - 2ab`` cancellation)."""
        y = x if y is None else y
        if self.kind == "cosine":
            return 1.0 - F.normalize(x, dim=-1) @ F.normalize(y, dim=-1).T
        d = torch.cdist(x.unsqueeze(0), y.unsqueeze(0), compute_mode="donot_use_mm_for_euclid_dist").squeeze(0)
        return d.square() if self.kind == "squared_euclidean" else d

    def paired(self, x: Tensor, y: Tensor) -> Tensor:
        """``[N]`` distances between matching rows of (prepared) ``x`` and ``y``, differentiable."""
        if self.kind == "cosine":
            return 1.0 - F.cosine_similarity(x, y, dim=-1)
        diff = x - y
        if self.kind == "squared_euclidean":
            return diff.square().sum(-1)
        return torch.linalg.vector_norm(diff, dim=-1)

    def __repr__(self) -> str:
        return f"Distance(kind={self.kind!r}, normalize={self.normalize})"
