"""Dense global pooling for image feature maps (the sparse GeM for point clouds is :class:`crossmodal.sparse.GeM`)."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class GeM(nn.Module):
    """Generalised-mean pooling over the spatial dims of ``[B, C, H, W]`` → ``[B, C]``:
    ``(mean(clamp(x, eps) ** p)) ** (1 / p)``, ``p`` learnable (init 3) unless ``learn_p`` is false."""

    def __init__(self, p: float = 3.0, eps: float = 1e-6, learn_p: bool = True):
        super().__init__()
        if learn_p:
            self.p = nn.Parameter(torch.ones(1) * p)
        else:
            self.register_buffer("p", torch.ones(1) * p)
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4:
            raise ValueError(f"GeM expects [B, C, H, W], got {tuple(x.shape)}")
        if torch.is_grad_enabled() and self.p.requires_grad:
            p = self.p.to(x.dtype)
        else:  # inference: a float exponent is 4-8x faster than a tensor one (same values)
            p = float(self.p)
        return x.clamp(min=self.eps).pow(p).mean(dim=(-2, -1)).pow(1.0 / p)

    def extra_repr(self) -> str:
        return f"p={float(self.p):.4f}, eps={self.eps}"
