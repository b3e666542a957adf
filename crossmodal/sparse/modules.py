"""Sparse layers. Parameter names and shapes follow MinkowskiEngine (``kernel`` ``[kernel_volume, in, out]``,
batch norm under ``bn``), so the same weights run on both backends and ME checkpoints map onto them.

Mixed precision: the sparse convolutions always run in float32, also inside ``torch.autocast`` (MinkowskiEngine
has no half / bfloat16 kernels on the CPU, and the built-in backend's scatter-add accumulates in the feature
dtype); the dense layers around them follow autocast as usual."""

from __future__ import annotations

import contextlib
import math

import torch
from torch import Tensor, nn

from .functional import generalized_mean, segment_max, segment_mean
from .tensor import SparseTensor


class _SparseConvBase(nn.Module):
    """Shared parameters of the cubic sparse convolutions (dilation 1)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int, bias: bool,
                 transposed: bool):
        super().__init__()
        if kernel_size < 1 or stride < 1:
            raise ValueError(f"kernel_size and stride must be >= 1, got {kernel_size} and {stride}")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride = kernel_size, stride
        self.kernel = nn.Parameter(torch.empty(kernel_size ** 3, in_channels, out_channels))
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        self._transposed = transposed
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """MinkowskiEngine's default: uniform(±1/sqrt(fan)), fan = channels on the input side × kernel volume."""
        fan = (self.out_channels if self._transposed else self.in_channels) * self.kernel.shape[0]
        bound = 1.0 / math.sqrt(fan)
        nn.init.uniform_(self.kernel, -bound, bound)
        if self.bias is not None:
            nn.init.uniform_(self.bias, -bound, bound)

    def _add_bias(self, x: SparseTensor) -> SparseTensor:
        return x if self.bias is None else x.replace(x.feats + self.bias)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"bias={self.bias is not None}")


@contextlib.contextmanager
def _float32(x: SparseTensor):
    """Autocast off, half / bfloat16 features in float32, for one sparse convolution."""
    with torch.autocast(x.feats.device.type, enabled=False):
        yield x.replace(x.feats.float()) if x.feats.dtype in (torch.float16, torch.bfloat16) else x


class SparseConv3d(_SparseConvBase):
    """Sparse 3-D convolution. Stride 1 keeps the coordinates; stride ``2**n`` outputs the unique
    ``floor(c / (s_in * stride)) * (s_in * stride)`` (MinkowskiEngine's strided coordinates). Output ``o`` reads
    input ``o + offset[k] * s_in`` with ``kernel[k]``, offsets in ME's order (see ``coords.kernel_offsets``)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, bias: bool = False):
        super().__init__(in_channels, out_channels, kernel_size, stride, bias, transposed=False)

    def forward(self, x: SparseTensor) -> SparseTensor:
        if x.num_channels != self.in_channels:
            raise ValueError(f"expected {self.in_channels} input channels, got {x.num_channels}")
        with _float32(x) as x32:
            return self._add_bias(x32.backend.conv(x32, self.kernel, self.kernel_size, self.stride))


class SparseConvTranspose3d(_SparseConvBase):
    """Transposed sparse convolution onto the coordinates of a finer tensor (MinkowskiEngine's
    ``MinkowskiConvolutionTranspose`` with ``generative=False``): ``forward(x, target)`` returns features on
    ``target``'s coordinates; ``target.stride * stride`` must equal ``x.stride``.

    ``forward(x, target, pre=conv)`` computes ``self(conv(x), target)`` for a bias-free 1×1 stride-1 ``conv`` as
    one transposed convolution with kernel ``conv.kernel[0] @ kernel[k]`` (both are linear, so the result is the
    same, with fewer multiply-adds when ``conv`` widens the channels).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 2, bias: bool = False):
        super().__init__(in_channels, out_channels, kernel_size, stride, bias, transposed=True)

    def forward(self, x: SparseTensor, target: SparseTensor, pre: SparseConv3d | None = None) -> SparseTensor:
        with _float32(x) as x32:
            kernel = self.kernel
            if pre is not None:
                if (pre.kernel_size, pre.stride, pre.bias) != (1, 1, None) or pre.out_channels != self.in_channels:
                    raise ValueError("pre must be a bias-free 1x1 stride-1 SparseConv3d feeding this layer's channels")
                kernel = pre.kernel[0] @ kernel
            if x32.num_channels != kernel.shape[1]:
                raise ValueError(f"expected {kernel.shape[1]} input channels, got {x32.num_channels}")
            if x32.backend is not target.backend:
                raise ValueError("the target tensor must come from the same batch (backend instance) as the input")
            if target.stride * self.stride != x32.stride:
                raise ValueError(f"target stride {target.stride} x {self.stride} != input stride {x32.stride}")
            return self._add_bias(x32.backend.conv_transpose(x32, kernel, self.kernel_size, target))


class SparseBatchNorm(nn.Module):
    """Batch norm over the points' features (``bn`` is a ``BatchNorm1d``, as in ME's ``MinkowskiBatchNorm``)."""

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1):
        super().__init__()
        self.bn = nn.BatchNorm1d(num_features, eps=eps, momentum=momentum)

    def forward(self, x: SparseTensor) -> SparseTensor:
        return x.replace(self.bn(x.feats))


class SparseReLU(nn.Module):
    """ReLU of the features."""

    def forward(self, x: SparseTensor) -> SparseTensor:
        return x.replace(torch.relu(x.feats))


class GlobalAvgPool(nn.Module):
    """Mean over each batch item's points → ``[B, C]``, rows sorted by batch index."""

    def forward(self, x: SparseTensor) -> Tensor:
        return segment_mean(x.feats, *x.batch_rows())


class GlobalMaxPool(nn.Module):
    """Channel-wise maximum over each batch item's points → ``[B, C]``, rows sorted by batch index."""

    def forward(self, x: SparseTensor) -> Tensor:
        return segment_max(x.feats, *x.batch_rows())


class GeM(nn.Module):
    """Generalised-mean pooling with learnable ``p`` → ``[B, C]``, rows sorted by batch index."""

    def __init__(self, p: float = 3.0, eps: float = 1e-6):
        super().__init__()
        self.p = nn.Parameter(torch.ones(1) * p)
        self.eps = eps

    def forward(self, x: SparseTensor) -> Tensor:
        return generalized_mean(x.feats, *x.batch_rows(), self.p, self.eps)

    def extra_repr(self) -> str:
        return f"p={self.p.item():.4f}, eps={self.eps}"


class GridGeM(nn.Module):
    """GeM pooling per cell of a ``cells × cells`` bird's-eye grid over each batch item → ``[B, cells² · C]``.

    Global pooling (:class:`GeM`) keeps *what* local structures a submap holds and forgets *where*; this keeps a
    coarse layout, as a bird's-eye height grid does. The grid spans each item's own x–y extent (its coordinates'
    bounding box; submaps are normalised per item, so this is the submap frame without needing the voxel size).
    Output row ``b`` is laid out cell-major: ``[cell (0, 0) channels, cell (0, 1) channels, ...]``, cell ``(i, j)``
    covering the ``i``-th x and ``j``-th y slice. An empty cell pools to ``eps ** 1`` (no gradient). ``p`` is
    shared by every cell and learnable, as in :class:`GeM`.
    """

    def __init__(self, cells: int = 4, p: float = 3.0, eps: float = 1e-6):
        super().__init__()
        if cells < 1:
            raise ValueError(f"cells must be >= 1, got {cells}")
        self.cells = int(cells)
        self.p = nn.Parameter(torch.ones(1) * p)
        self.eps = eps

    def cell_index(self, x: SparseTensor) -> tuple[Tensor, int]:
        """Per point: ``row * cells² + i * cells + j`` and the number of batch rows."""
        rows, num_rows = x.batch_rows()
        xy = x.coords[:, 1:3].to(torch.float64)
        index = rows[:, None].expand(-1, 2)
        lo = xy.new_full((num_rows, 2), float("inf")).scatter_reduce(0, index, xy, "amin", include_self=True)
        hi = xy.new_full((num_rows, 2), float("-inf")).scatter_reduce(0, index, xy, "amax", include_self=True)
        span = (hi - lo)[rows] + float(x.stride)  # a voxel's width past the last coordinate: max lands in the grid
        ij = torch.floor((xy - lo[rows]) / span * self.cells).long().clamp_(0, self.cells - 1)
        return rows * self.cells ** 2 + ij[:, 0] * self.cells + ij[:, 1], num_rows

    def forward(self, x: SparseTensor) -> Tensor:
        cell, num_rows = self.cell_index(x)
        feats = x.feats
        powered = torch.exp(feats.clamp(min=self.eps).log() * self.p)
        num_cells = num_rows * self.cells ** 2
        total = powered.new_zeros(num_cells, feats.shape[1]).index_add_(0, cell, powered)
        count = torch.bincount(cell, minlength=num_cells).to(feats.dtype)
        mean = torch.where(count[:, None] > 0, total / count.clamp(min=1)[:, None],
                           total.new_full((), self.eps) ** self.p)
        return mean.pow(1.0 / self.p).reshape(num_rows, -1)

    def extra_repr(self) -> str:
        return f"cells={self.cells}, p={self.p.item():.4f}, eps={self.eps}"
