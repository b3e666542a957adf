"""Batch collation for :class:`~crossmodal.data.dataset.PairedPlaceDataset`, run in the DataLoader workers.

:class:`PlaceCollate` turns a list of items into one dict batch: ``images`` [B, 3, H, W], the clouds voxelised with
:func:`crossmodal.sparse.sparse_quantize` into ``coords`` [M, 4] int32 (batch, x, y, z) and ``feats`` [M, 1]
(ones), ready for :class:`crossmodal.models.MinkLoc3D`; ``positions`` [B, 2] float64, ``sample_ids`` and
``indices`` [B] int64, ``runs`` (list), and, given the dataset's tuples, ``positives_mask`` / ``negatives_mask``
[B, B] bool (see :meth:`PlaceTuples.masks`). The training step neither quantises nor builds masks.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from crossmodal.sparse import sparse_quantize

from .dataset import PlaceTuples


class PlaceCollate:
    """Picklable ``collate_fn``.

    Args:
        quantization_size: voxel size for the clouds (submap units; 0.01 of the [-1, 1] frame ≈ 0.25 m).
        tuples: the dataset's :class:`PlaceTuples` (``dataset.tuples``) for the masks; ``None``: no masks.
        keep_clouds: also return the raw clouds as ``clouds`` [B, N, 3] (off: the branch uses coords / feats).
    """

    def __init__(self, quantization_size: float = 0.01, tuples: PlaceTuples | None = None, keep_clouds: bool = False):
        if quantization_size <= 0:
            raise ValueError(f"quantization_size must be positive, got {quantization_size}")
        self.quantization_size = float(quantization_size)
        self.tuples = tuples
        self.keep_clouds = bool(keep_clouds)

    def __call__(self, samples: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        if not samples:
            raise ValueError("cannot collate an empty batch")
        indices = torch.tensor([int(s["index"]) for s in samples], dtype=torch.int64)
        batch: dict[str, Any] = {
            "indices": indices,
            "sample_ids": torch.tensor([int(s["sample_id"]) for s in samples], dtype=torch.int64),
            "positions": torch.stack([torch.as_tensor(s["position"], dtype=torch.float64) for s in samples]),
            "runs": [s["run"] for s in samples],
        }
        if "image" in samples[0]:
            batch["images"] = torch.stack([s["image"] for s in samples])
        if "cloud" in samples[0]:
            clouds = [s["cloud"] for s in samples]
            batch["coords"], batch["feats"] = sparse_quantize(clouds, self.quantization_size)
            if self.keep_clouds:
                batch["clouds"] = torch.stack([torch.as_tensor(c) for c in clouds])
        if self.tuples is not None:
            batch["positives_mask"], batch["negatives_mask"] = self.tuples.masks(indices.numpy())
        return batch

    def __repr__(self) -> str:
        return (f"PlaceCollate(quantization_size={self.quantization_size}, masks={self.tuples is not None}, "
                f"keep_clouds={self.keep_clouds})")
