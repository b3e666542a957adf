"""Voxelisation and batch collation; plain tensor code, safe to run in DataLoader worker processes."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import default_collate

from .coords import check_coords, hash_coords, unhash_coords
from .functional import segment_mean


def sparse_quantize(clouds: Sequence[Tensor | np.ndarray], quantization_size: float,
                    features: Sequence[Tensor | np.ndarray] | None = None) -> tuple[Tensor, Tensor]:
    """Voxelise a batch of point clouds: one row per occupied (batch item, voxel).

    ``clouds[b]`` is ``[N_b, 3]``; voxel ``floor(p / quantization_size)`` (computed in the cloud's dtype, as
    ``MinkowskiEngine.utils.sparse_quantize`` does). Returns coordinates ``[M, 4]`` int32 ``(batch, x, y, z)``
    sorted lexicographically (the torch backend's row order) and features ``[M, C]`` float32: all ones
    (``C = 1``) by default, else the mean of the given per-point ``features[b]`` ``[N_b, C]`` in each voxel.
    """
    if quantization_size <= 0:
        raise ValueError(f"quantization_size must be positive, got {quantization_size}")
    points = [torch.as_tensor(c) for c in clouds]
    for b, p in enumerate(points):
        if p.dim() != 2 or p.shape[1] != 3:
            raise ValueError(f"cloud {b} must be [N, 3], got shape {tuple(p.shape)}")
    if not points:
        raise ValueError("sparse_quantize needs at least one cloud")
    device = points[0].device
    sizes = torch.tensor([p.shape[0] for p in points], device=device)
    batch = torch.repeat_interleave(torch.arange(len(points), device=device), sizes)
    voxels = torch.cat([torch.floor(p / quantization_size).long() for p in points])
    coords = torch.cat([batch[:, None], voxels], dim=1)
    check_coords(coords)
    unique, inverse = torch.unique(hash_coords(coords), sorted=True, return_inverse=True)
    if features is None:
        feats = torch.ones(unique.numel(), 1, device=device)
    else:
        point_feats = torch.cat([torch.as_tensor(f, dtype=torch.float32, device=device).reshape(len(p), -1)
                                 for f, p in zip(features, points, strict=True)])
        feats = segment_mean(point_feats, inverse, unique.numel())
    return unhash_coords(unique), feats


class SparseCollate:
    """``collate_fn`` for a DataLoader whose samples are dicts holding a point cloud under ``cloud_key``.

    The clouds are quantised in the worker (:func:`sparse_quantize`) into ``coords`` and ``feats``; every
    other key is collated with :func:`torch.utils.data.default_collate`. Picklable, so it runs in workers.
    """

    def __init__(self, quantization_size: float = 0.01, cloud_key: str = "cloud"):
        self.quantization_size = quantization_size
        self.cloud_key = cloud_key

    def __call__(self, samples: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        clouds = [s[self.cloud_key] for s in samples]
        coords, feats = sparse_quantize(clouds, self.quantization_size)
        rest = [{k: v for k, v in s.items() if k != self.cloud_key} for s in samples]
        batch = default_collate(rest) if rest[0] else {}
        batch.update(coords=coords, feats=feats)
        return batch
