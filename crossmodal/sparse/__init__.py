"""Sparse 3-D convolution with two backends behind one API (see docs/sparse.md).

- ``torch``: built-in gather–GEMM–scatter over hashed coordinate maps, CPU and CUDA, no compiled code.
- ``minkowski``: MinkowskiEngine 0.5.4, imported lazily when selected (``auto`` picks it when importable).

Weights use MinkowskiEngine's layout ``[kernel_volume, in_channels, out_channels]`` and kernel-offset order on
both backends, so modules and ME checkpoints are interchangeable.
"""

from .backends import (
    BACKENDS,
    minkowski_available,
    new_backend,
    resolve_backend,
    sparse_tensor,
)
from .coords import CoordinateKey, CoordinateManager, KernelMap, kernel_offsets
from .modules import (
    GeM,
    GlobalAvgPool,
    GlobalMaxPool,
    GridGeM,
    SparseBatchNorm,
    SparseConv3d,
    SparseConvTranspose3d,
    SparseReLU,
)
from .quantize import SparseCollate, sparse_quantize
from .tensor import SparseTensor, broadcast_mul

__all__ = [
    "BACKENDS",
    "CoordinateKey",
    "CoordinateManager",
    "GeM",
    "GlobalAvgPool",
    "GlobalMaxPool",
    "GridGeM",
    "KernelMap",
    "SparseBatchNorm",
    "SparseCollate",
    "SparseConv3d",
    "SparseConvTranspose3d",
    "SparseReLU",
    "SparseTensor",
    "broadcast_mul",
    "kernel_offsets",
    "minkowski_available",
    "new_backend",
    "resolve_backend",
    "sparse_quantize",
    "sparse_tensor",
]
