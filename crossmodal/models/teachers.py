"""Teachers: modules composed from already-built branches (Hydra nested ``_target_``, as OpenPlaceRecognition).

- :class:`FusionTeacher` (MinkLoc++ "concat"): LiDAR branch (MinkLoc3D, 128-d) and image branch (ResNet18 →
  layer3 → 1×1 conv 256→256 → GeM, 256-d); descriptor = concat(cloud, image) → 384-d, cloud first as upstream.
- :class:`LidarTeacher`: LiDAR branch alone.
- :class:`ImageTeacher`: one image branch; ``configs/teacher/image_large.yaml`` uses ResNet50 → layer3 (1024 ch)
  → 1×1 conv → GeM → 384-d. That is our own simplification of TSCM's image teacher (ResNet-50 to layer3 + ViT +
  cross-attention + NetVLAD, 2048-d): same CNN trunk, no transformer or NetVLAD, and the student's dimension so
  no adaptor is needed.

Every teacher's ``forward(batch)`` takes the collated batch dict (``images`` / ``coords`` / ``feats``) and returns
a dict with ``descriptor`` and the per-branch descriptors (``cloud`` / ``image``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F


def descriptor_dim(module: nn.Module) -> int | None:
    """A branch's output size when it declares it (``descriptor_dim``, MinkLoc3D's ``feature_size``)."""
    for name in ("descriptor_dim", "feature_size", "out_dim"):
        value = getattr(module, name, None)
        if isinstance(value, int):
            return value
    return None


class FusionTeacher(nn.Module):
    """Late fusion by concatenation: ``{"descriptor": [B, Dc + Di], "cloud": [B, Dc], "image": [B, Di]}``.

    Args:
        cloud: LiDAR branch, ``cloud(batch)["descriptor"]`` from ``batch["coords"]``, ``batch["feats"]``.
        image: image branch, ``image(batch)["descriptor"]`` from ``batch["images"]``.
        fusion: ``concat`` (MinkLoc++: the raw descriptors side by side) or ``concat_l2`` (each half L2-normalised
            first, so neither branch drowns the other in the fused distances; the ``cloud`` / ``image`` outputs
            stay raw).
    """

    FUSIONS = ("concat", "concat_l2")

    def __init__(self, cloud: nn.Module, image: nn.Module, fusion: str = "concat"):
        super().__init__()
        if fusion not in self.FUSIONS:
            raise ValueError(f"fusion must be one of {self.FUSIONS}, got {fusion!r}")
        self.cloud, self.image, self.fusion = cloud, image, fusion
        dc, di = descriptor_dim(cloud), descriptor_dim(image)
        self.descriptor_dim = dc + di if dc is not None and di is not None else None

    def forward(self, batch: Mapping[str, Any]) -> dict[str, Tensor]:
        c = self.cloud(batch)["descriptor"]
        i = self.image(batch)["descriptor"]
        if c.shape[0] != i.shape[0]:
            raise ValueError(f"cloud branch gave {c.shape[0]} descriptors, image branch {i.shape[0]}")
        if self.fusion == "concat_l2":
            fused = torch.cat([F.normalize(c, dim=1), F.normalize(i, dim=1)], dim=1)
        else:
            fused = torch.cat([c, i], dim=1)
        return {"descriptor": fused, "cloud": c, "image": i}


class LidarTeacher(nn.Module):
    """LiDAR-only teacher: ``{"descriptor": [B, D], "cloud": [B, D]}``."""

    def __init__(self, cloud: nn.Module):
        super().__init__()
        self.cloud = cloud
        self.descriptor_dim = descriptor_dim(cloud)

    def forward(self, batch: Mapping[str, Any]) -> dict[str, Tensor]:
        c = self.cloud(batch)["descriptor"]
        return {"descriptor": c, "cloud": c}


class ImageTeacher(nn.Module):
    """Image-only teacher: ``{"descriptor": [B, D], "image": [B, D]}``."""

    def __init__(self, image: nn.Module):
        super().__init__()
        self.image = image
        self.descriptor_dim = descriptor_dim(image)

    def forward(self, batch: Mapping[str, Any] | Tensor) -> dict[str, Tensor]:
        i = self.image(batch)["descriptor"]
        return {"descriptor": i, "image": i}
