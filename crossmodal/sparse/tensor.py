"""The sparse tensor: features on the coordinate set of a backend."""

from __future__ import annotations

from typing import Any

from torch import Tensor


class SparseTensor:
    """Features ``[N, C]`` on ``N`` integer coordinates ``(batch, x, y, z)`` at a tensor stride.

    The coordinates live in ``backend`` (one per batch; it owns the coordinate sets and the cached kernel
    maps, like MinkowskiEngine's coordinate manager) under ``key``. Row ``i`` of ``feats`` belongs to row ``i``
    of :attr:`coords`. Build one with :func:`crossmodal.sparse.sparse_tensor`.
    """

    __slots__ = ("backend", "feats", "key")

    def __init__(self, feats: Tensor, key: Any, backend: Any):
        if feats.dim() != 2:
            raise ValueError(f"features must be [N, C], got shape {tuple(feats.shape)}")
        self.feats = feats
        self.key = key
        self.backend = backend

    @property
    def coords(self) -> Tensor:
        """``[N, 4]`` int32 coordinates, in feature row order."""
        return self.backend.coordinates(self.key)

    @property
    def stride(self) -> int:
        """Tensor stride (the spacing of the coordinates)."""
        return self.backend.stride(self.key)

    @property
    def num_channels(self) -> int:
        return self.feats.shape[1]

    def batch_rows(self) -> tuple[Tensor, int]:
        """Per-point row of a global pooling output (batch indices present, ascending) and the row count."""
        return self.backend.batch_rows(self.key)

    def replace(self, feats: Tensor) -> SparseTensor:
        """The same coordinates with new features."""
        if feats.shape[0] != self.feats.shape[0]:
            raise ValueError(f"feature rows {feats.shape[0]} != number of coordinates {self.feats.shape[0]}")
        return SparseTensor(feats, self.key, self.backend)

    def same_coords(self, other: SparseTensor) -> bool:
        """Whether ``other`` lives on the very same coordinate set (same backend instance and key)."""
        return self.backend is other.backend and self.backend.same_key(self.key, other.key)

    def __add__(self, other: SparseTensor) -> SparseTensor:
        """Element-wise sum of two tensors on the same coordinates."""
        if not isinstance(other, SparseTensor):
            return NotImplemented
        if not self.same_coords(other):
            raise ValueError("can only add sparse tensors on the same coordinate set (same batch, same stride)")
        return self.replace(self.feats + other.feats)

    def __repr__(self) -> str:
        return (f"SparseTensor(points={self.feats.shape[0]}, channels={self.num_channels}, stride={self.stride}, "
                f"backend={self.backend.name}, device={self.feats.device})")


def broadcast_mul(x: SparseTensor, per_batch: Tensor) -> SparseTensor:
    """Multiply each point's features by the row of ``per_batch`` ``[B, C]`` of its batch item (rows as
    returned by global pooling: batch indices present, ascending)."""
    rows, num_rows = x.batch_rows()
    if per_batch.shape[0] != num_rows:
        raise ValueError(f"per-batch tensor has {per_batch.shape[0]} rows, the sparse tensor has {num_rows} items")
    return x.replace(x.feats * per_batch.index_select(0, rows))

