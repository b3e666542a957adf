"""Backends: where coordinates live and how convolutions run.

A backend instance belongs to one batch (it is created by :func:`sparse_tensor`) and owns that batch's
coordinate sets and kernel-map caches. Both backends take weights in MinkowskiEngine's layout
``[kernel_volume, in_channels, out_channels]`` and the same kernel-offset order, so one module's parameters
run on either.

- ``torch``: built in, plain PyTorch gather–GEMM–scatter over hashed coordinate maps; CPU and CUDA.
- ``minkowski``: MinkowskiEngine 0.5.4 (imported lazily, on first use). Convolutions and coordinate maps run in
  ME; batch norm, activations, sums and global pooling are the same PyTorch code as the torch backend.
"""

from __future__ import annotations

import importlib
import importlib.util
import warnings
from typing import Any

import torch
from torch import Tensor

from .coords import CoordinateKey, CoordinateManager, check_coords
from .functional import gather_gemm_scatter
from .tensor import SparseTensor

BACKENDS = ("auto", "torch", "minkowski")


def import_minkowski() -> Any:
    """Import MinkowskiEngine, or raise ``ImportError`` with install instructions."""
    try:
        with warnings.catch_warnings():
            # A CPU-only build warns on every import; that is the expected build on machines without a GPU.
            warnings.filterwarnings("ignore", message=".*compiled with CPU_ONLY.*")
            return importlib.import_module("MinkowskiEngine")
    except ImportError as err:
        raise ImportError("backend 'minkowski' needs MinkowskiEngine 0.5.4; build it with "
                          "scripts/install_minkowskiengine.sh (see docs/sparse.md)") from err


def minkowski_available(device: torch.device | str = "cpu") -> bool:
    """Whether MinkowskiEngine is installed and can run on ``device``."""
    if importlib.util.find_spec("MinkowskiEngine") is None:
        return False
    try:
        me = import_minkowski()
    except ImportError:
        return False
    return torch.device(device).type == "cpu" or bool(me.is_cuda_available())


def resolve_backend(name: str, device: torch.device | str = "cpu") -> str:
    """``auto`` → ``minkowski`` when MinkowskiEngine is importable and supports ``device``, else ``torch``."""
    if name not in BACKENDS:
        raise ValueError(f"unknown sparse backend {name!r}; choose one of {BACKENDS}")
    if name == "auto":
        return "minkowski" if minkowski_available(device) else "torch"
    return name


def new_backend(name: str, device: torch.device | str) -> TorchBackend | MinkowskiBackend:
    """A fresh backend instance (empty coordinate manager) for one batch."""
    name = resolve_backend(name, device)
    return TorchBackend(device) if name == "torch" else MinkowskiBackend(device)


def sparse_tensor(coords: Tensor, feats: Tensor, backend: str = "auto", stride: int = 1) -> SparseTensor:
    """A sparse tensor from unique coordinates ``[N, 4]`` (batch, x, y, z) and features ``[N, C]``.

    The device is that of ``feats``. Rows may be reordered (each backend keeps its own order); use
    :attr:`SparseTensor.coords` for the coordinates of the returned rows.
    """
    if coords.shape[0] != feats.shape[0]:
        raise ValueError(f"{coords.shape[0]} coordinates but {feats.shape[0]} feature rows")
    return new_backend(backend, feats.device).insert(coords, feats, stride)


class TorchBackend:
    """Built-in backend: :class:`~crossmodal.sparse.coords.CoordinateManager` + gather–GEMM–scatter."""

    name = "torch"

    def __init__(self, device: torch.device | str):
        self.manager = CoordinateManager(device)

    @property
    def map_seconds(self) -> float:
        """Seconds spent building coordinate and kernel maps so far."""
        return self.manager.map_seconds

    def insert(self, coords: Tensor, feats: Tensor, stride: int = 1) -> SparseTensor:
        key, perm = self.manager.insert(coords, stride)
        return SparseTensor(feats if perm is None else feats[perm], key, self)

    def coordinates(self, key: CoordinateKey) -> Tensor:
        return self.manager.coordinates(key)

    def stride(self, key: CoordinateKey) -> int:
        return key.stride

    def same_key(self, a: CoordinateKey, b: CoordinateKey) -> bool:
        return a == b

    def batch_rows(self, key: CoordinateKey) -> tuple[Tensor, int]:
        return self.manager.batch_rows(key)

    def conv(self, x: SparseTensor, kernel: Tensor, kernel_size: int, stride: int) -> SparseTensor:
        if kernel_size == 1 and stride == 1:
            return x.replace(x.feats @ kernel[0])
        out_key = x.key
        for _ in range(_log2(stride)):
            out_key = self.manager.downsample(out_key)
        kmap = self.manager.kernel_map(x.key, out_key, kernel_size)
        return SparseTensor(gather_gemm_scatter(x.feats, kernel, kmap, self.manager.size(out_key)), out_key, self)

    def conv_transpose(self, x: SparseTensor, kernel: Tensor, kernel_size: int, target: SparseTensor) -> SparseTensor:
        kmap = self.manager.transposed_kernel_map(x.key, target.key, kernel_size)
        out = gather_gemm_scatter(x.feats, kernel, kmap, self.manager.size(target.key))
        return SparseTensor(out, target.key, self)


class MinkowskiBackend:
    """MinkowskiEngine backend: one ``ME.CoordinateManager`` per batch; ME's convolution functions."""

    name = "minkowski"
    #: ME builds its maps inside the convolution calls; they cannot be timed apart.
    map_seconds = float("nan")

    def __init__(self, device: torch.device | str):
        self.me = import_minkowski()
        self.device = torch.device(device)
        map_type = self.me.CoordinateMapType.CUDA if self.device.type == "cuda" else self.me.CoordinateMapType.CPU
        # ME's manager sets the process-wide OpenMP thread count (default: all cores); keep torch's setting.
        self.manager = self.me.CoordinateManager(D=3, num_threads=torch.get_num_threads(),
                                                 coordinate_map_type=map_type)
        self._generators: dict[tuple[int, int], Any] = {}
        self._batch_rows: dict[tuple, tuple[Tensor, int]] = {}
        self._mode = importlib.import_module("MinkowskiEngineBackend._C").ConvolutionMode.DEFAULT

    def insert(self, coords: Tensor, feats: Tensor, stride: int = 1) -> SparseTensor:
        check_coords(coords, stride)
        key, (unique_index, _) = self.manager.insert_and_map(coords.to(self.device, torch.int32), stride, "")
        if unique_index.numel() != coords.shape[0]:
            raise ValueError("coordinates must be unique; quantize them with sparse_quantize first")
        return SparseTensor(feats[unique_index.to(feats.device).long()], key, self)

    def coordinates(self, key: Any) -> Tensor:
        return self.manager.get_coordinates(key)

    def stride(self, key: Any) -> int:
        return int(key.get_tensor_stride()[0])

    def same_key(self, a: Any, b: Any) -> bool:
        return a.get_key() == b.get_key()

    def batch_rows(self, key: Any) -> tuple[Tensor, int]:
        cache_key = (tuple(key.get_tensor_stride()), key.get_key()[1])
        if cache_key not in self._batch_rows:
            batch = self.coordinates(key)[:, 0].to(self.device)
            present, rows = torch.unique(batch, sorted=True, return_inverse=True)
            self._batch_rows[cache_key] = (rows, present.numel())
        return self._batch_rows[cache_key]

    def _generator(self, kernel_size: int, stride: int) -> Any:
        if (kernel_size, stride) not in self._generators:
            self._generators[kernel_size, stride] = self.me.KernelGenerator(
                kernel_size=kernel_size, stride=stride, dilation=1, dimension=3)
        return self._generators[kernel_size, stride]

    def conv(self, x: SparseTensor, kernel: Tensor, kernel_size: int, stride: int) -> SparseTensor:
        if kernel_size == 1 and stride == 1:  # ME's use_mm path
            return x.replace(x.feats @ kernel[0])
        out_key = self.me.CoordinateMapKey(4)
        feats = self.me.MinkowskiConvolutionFunction.apply(
            x.feats, kernel, self._generator(kernel_size, stride), self._mode, x.key, out_key, self.manager)
        return SparseTensor(feats, out_key, self)

    def conv_transpose(self, x: SparseTensor, kernel: Tensor, kernel_size: int, target: SparseTensor) -> SparseTensor:
        stride = self.stride(x.key) // self.stride(target.key)
        feats = self.me.MinkowskiConvolutionTransposeFunction.apply(
            x.feats, kernel, self._generator(kernel_size, stride), self._mode, x.key, target.key, self.manager)
        return SparseTensor(feats, target.key, self)


def _log2(stride: int) -> int:
    if stride < 1 or stride & (stride - 1):
        raise ValueError(f"stride must be a power of two, got {stride}")
    return stride.bit_length() - 1
