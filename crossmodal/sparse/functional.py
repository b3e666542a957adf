"""Backend-independent tensor math of the sparse layers (plain PyTorch; autograd does the backward)."""

from __future__ import annotations

import torch
from torch import Tensor

from .coords import KernelMap


def gather_gemm_scatter(feats: Tensor, kernel: Tensor, kmap: KernelMap, num_out: int) -> Tensor:
    """Sparse convolution: ``out[o] = sum_k feats[i] @ kernel[k]`` over the pairs ``(i, o)`` of kernel index ``k``.

    ``kernel`` is ``[kernel_volume, in_channels, out_channels]`` (MinkowskiEngine's layout). The identity
    kernel index of ``kmap`` (centre of a stride-1 odd kernel) is one dense matrix product. All pairs are
    gathered with one ``index_select`` and scattered with one ``index_add_`` (so the backward also does one
    scatter and one gather, not one dense ``[N, C]`` buffer per kernel offset); only the GEMMs loop over offsets.
    """
    if kmap.identity is not None:
        out = feats @ kernel[kmap.identity]
    else:
        out = feats.new_zeros(num_out, kernel.shape[2])
    if kmap.in_rows.numel() == 0:
        return out
    sizes = [hi - lo for lo, hi in zip(kmap.bounds[:-1], kmap.bounds[1:])]
    gathered = feats.index_select(0, kmap.in_rows).split(sizes)
    products = torch.cat([g @ kernel[k] for k, g in enumerate(gathered) if sizes[k]])
    return out.index_add_(0, kmap.out_rows, products)


def segment_mean(feats: Tensor, rows: Tensor, num_rows: int) -> Tensor:
    """Mean of ``feats`` rows grouped by ``rows`` (``[N]`` indices into ``num_rows`` outputs)."""
    total = feats.new_zeros(num_rows, feats.shape[1]).index_add_(0, rows, feats)
    count = torch.bincount(rows, minlength=num_rows).clamp_(min=1).to(feats.dtype)
    return total / count[:, None]


def segment_max(feats: Tensor, rows: Tensor, num_rows: int) -> Tensor:
    """Channel-wise maximum of ``feats`` rows grouped by ``rows``."""
    out = feats.new_full((num_rows, feats.shape[1]), float("-inf"))
    return out.scatter_reduce(0, rows[:, None].expand_as(feats), feats, reduce="amax", include_self=True)


def generalized_mean(feats: Tensor, rows: Tensor, num_rows: int, p: Tensor, eps: float) -> Tensor:
    """GeM pooling: ``mean(clamp(x, eps) ** p) ** (1 / p)`` per group (clamping implies a ReLU, as upstream)."""
    return segment_mean(feats.clamp(min=eps).pow(p), rows, num_rows).pow(1.0 / p)
