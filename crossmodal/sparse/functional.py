"""Backend-independent tensor math of the sparse layers (plain PyTorch; autograd does the backward)."""

from __future__ import annotations

from itertools import pairwise

import torch
from torch import Tensor

from .coords import KernelMap


def gather_gemm_scatter(feats: Tensor, kernel: Tensor, kmap: KernelMap, num_out: int) -> Tensor:
    """Sparse convolution: ``out[o] = sum_k feats[i] @ kernel[k]`` over the pairs ``(i, o)`` of kernel index ``k``.

    ``kernel`` is ``[kernel_volume, in_channels, out_channels]`` (MinkowskiEngine's layout). The identity
    kernel index of ``kmap`` (centre of a stride-1 odd kernel) is one dense matrix product. All input rows are
    gathered with one ``index_select`` and split per offset, so the backward scatters the input gradient once
    (per-offset gathers would make autograd build and sum a dense ``[N, C]`` gradient per offset); the products
    are scattered per offset, keeping the ``[pairs, C_out]`` temporaries small.
    """
    if kmap.identity is not None:
        out = feats @ kernel[kmap.identity]
    else:
        out = feats.new_zeros(num_out, kernel.shape[2])
    if kmap.in_rows.numel() == 0:
        return out
    bounds = kmap.bounds
    sizes = [hi - lo for lo, hi in pairwise(bounds)]
    for k, gathered in enumerate(feats.index_select(0, kmap.in_rows).split(sizes)):
        if sizes[k]:
            out.index_add_(0, kmap.out_rows[bounds[k]:bounds[k + 1]], gathered @ kernel[k])
    return out


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
    """GeM pooling: ``mean(clamp(x, eps) ** p) ** (1 / p)`` per group (clamping implies a ReLU, as upstream).

    ``x ** p`` is computed as ``exp(p * log x)`` (``x >= eps > 0``): one log and one exp, and a backward without
    the transcendental ``pow`` of a tensor exponent (≈35 % faster on a [64k, 128] input, same values to 1 ulp).
    """
    return segment_mean(torch.exp(feats.clamp(min=eps).log() * p), rows, num_rows).pow(1.0 / p)
