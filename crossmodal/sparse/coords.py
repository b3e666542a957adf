"""Integer coordinates: hashing, MinkowskiEngine kernel offsets and the coordinate manager of the torch backend.

Coordinates are rows ``(batch, x, y, z)`` on an integer grid. A coordinate set with tensor stride ``s`` holds
coordinates that are multiples of ``s`` (as in MinkowskiEngine). Every set is stored as sorted, unique int64
hashes; the hash is linear in the coordinates, so ``hash(c + d) == hash(c) + offset_hash(d)`` and a whole kernel
offset is applied to a set with one addition, after which ``searchsorted`` finds the neighbours.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

_FIELD_BITS = 16
_FIELD = 1 << _FIELD_BITS
_ORIGIN = 1 << (_FIELD_BITS - 1)
#: Spatial coordinates and kernel offsets must stay below this magnitude, so that ``c + d`` never leaves its
#: 16-bit field of the hash.
COORD_LIMIT = 1 << (_FIELD_BITS - 2)
#: Largest batch index (the batch field is the top 15 bits of a non-negative int64).
MAX_BATCH = (1 << 15) - 1


def kernel_offsets(kernel_size: int) -> Tensor:
    """Offsets of a cubic kernel, ``[kernel_size**3, 3]`` int64, in MinkowskiEngine's order.

    As in MinkowskiEngine's ``kernel_region::coordinate_at`` (src/kernel_region.hpp), kernel index ``k`` is
    decomposed with x varying fastest: ``i_x = k % K``, ``i_y = (k // K) % K``, ``i_z = k // K**2``. The offset
    along an axis is ``i - K // 2`` for odd ``K`` (centred) and ``i`` for even ``K`` (``0 .. K-1``). Offsets are in
    units of the input tensor stride.
    """
    if kernel_size < 1:
        raise ValueError(f"kernel_size must be >= 1, got {kernel_size}")
    r = torch.arange(kernel_size, dtype=torch.int64)
    if kernel_size % 2:
        r = r - kernel_size // 2
    z, y, x = torch.meshgrid(r, r, r, indexing="ij")
    return torch.stack([x, y, z], dim=-1).reshape(-1, 3)


def hash_coords(coords: Tensor) -> Tensor:
    """Hash ``[N, 4]`` integer coordinates ``(batch, x, y, z)`` to int64; the order of hashes is lexicographic."""
    c = coords.long()
    h = c[:, 0] * _FIELD + (c[:, 1] + _ORIGIN)
    h = h * _FIELD + (c[:, 2] + _ORIGIN)
    return h * _FIELD + (c[:, 3] + _ORIGIN)


def unhash_coords(hashes: Tensor) -> Tensor:
    """Inverse of :func:`hash_coords`: ``[N]`` int64 to ``[N, 4]`` int32 coordinates."""
    mask = _FIELD - 1
    z = (hashes & mask) - _ORIGIN
    y = ((hashes >> _FIELD_BITS) & mask) - _ORIGIN
    x = ((hashes >> (2 * _FIELD_BITS)) & mask) - _ORIGIN
    b = hashes >> (3 * _FIELD_BITS)
    return torch.stack([b, x, y, z], dim=1).int()


def offset_hash(offsets: Tensor) -> Tensor:
    """Hash increments of ``[K, 3]`` spatial offsets: ``hash(c + d) = hash(c) + offset_hash(d)``."""
    d = offsets.long()
    return (d[:, 0] * _FIELD + d[:, 1]) * _FIELD + d[:, 2]


def check_coords(coords: Tensor, stride: int = 1) -> None:
    """Raise ``ValueError`` unless ``coords`` is a valid ``[N, 4]`` integer coordinate tensor at ``stride``."""
    if coords.dim() != 2 or coords.shape[1] != 4:
        raise ValueError(f"coordinates must be [N, 4] (batch, x, y, z), got shape {tuple(coords.shape)}")
    if coords.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"coordinates must be int32 or int64, got {coords.dtype}")
    if coords.numel() == 0:
        return
    lo, hi = coords.amin(0).tolist(), coords.amax(0).tolist()
    if lo[0] < 0 or hi[0] > MAX_BATCH:
        raise ValueError(f"batch indices must lie in [0, {MAX_BATCH}], got [{lo[0]}, {hi[0]}]")
    if min(lo[1:]) <= -COORD_LIMIT or max(hi[1:]) >= COORD_LIMIT:
        raise ValueError(f"spatial coordinates must lie in (-{COORD_LIMIT}, {COORD_LIMIT}), got [{min(lo[1:])}, "
                         f"{max(hi[1:])}]; use a coarser quantization size")
    if stride > 1 and bool((coords[:, 1:] % stride != 0).any()):
        raise ValueError(f"coordinates at tensor stride {stride} must be multiples of {stride}")


@dataclass(frozen=True)
class CoordinateKey:
    """Identifies one coordinate set of a :class:`CoordinateManager`."""

    index: int
    stride: int


class KernelMap(NamedTuple):
    """Input/output row pairs of a convolution, grouped by kernel index.

    Pairs of kernel index ``k`` are ``in_rows[bounds[k]:bounds[k+1]]`` → ``out_rows[...]``. ``identity`` is the
    kernel index whose pairs are all rows mapped onto themselves (the centre of an odd stride-1 kernel); its
    pairs are not stored and the convolution applies that weight with a dense matrix product instead.
    """

    in_rows: Tensor
    out_rows: Tensor
    bounds: list[int]
    identity: int | None = None

    def swapped(self) -> KernelMap:
        """The map of the transposed convolution (inputs and outputs exchanged)."""
        return KernelMap(self.out_rows, self.in_rows, self.bounds, self.identity)


class _Timer:
    """Accumulates the wall time of map building into ``owner.map_seconds``."""

    def __init__(self, owner: CoordinateManager):
        self.owner = owner

    def __enter__(self) -> None:
        self.start = time.perf_counter()

    def __exit__(self, *exc) -> None:
        self.owner.map_seconds += time.perf_counter() - self.start


class CoordinateManager:
    """Coordinate sets of one batch and the kernel maps between them (the torch backend's MinkowskiEngine
    ``CoordinateManager``).

    All maps are cached, so the layers of a network that share coordinates and kernels reuse them:
    kernel maps per ``(input set, output set, kernel size, transposed)``, stride-2 children per set, per-point
    batch rows per set. ``map_seconds`` accumulates the time spent building maps (on CUDA it includes the
    synchronisations that map building needs).
    """

    def __init__(self, device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self.map_seconds = 0.0
        self._hashes: list[Tensor] = []
        self._children: dict[CoordinateKey, tuple[CoordinateKey, Tensor, Tensor]] = {}
        self._kernel_maps: dict[tuple, KernelMap] = {}
        self._batch_rows: dict[CoordinateKey, tuple[Tensor, int]] = {}

    # -- coordinate sets -------------------------------------------------------------------------------------
    def insert(self, coords: Tensor, stride: int = 1) -> tuple[CoordinateKey, Tensor | None]:
        """Add unique coordinates; returns the new key and the row permutation that sorts them (``None`` when
        they are already sorted, as :func:`~crossmodal.sparse.quantize.sparse_quantize` returns them)."""
        check_coords(coords, stride)
        with _Timer(self):
            h = hash_coords(coords.to(self.device))
            perm = None
            if h.numel() > 1 and not bool((h[1:] > h[:-1]).all()):
                h, perm = torch.sort(h)
                if bool((h[1:] == h[:-1]).any()):
                    raise ValueError("coordinates must be unique; quantize them with sparse_quantize first")
            return self._add(h, stride), perm

    def _add(self, sorted_hashes: Tensor, stride: int) -> CoordinateKey:
        self._hashes.append(sorted_hashes)
        return CoordinateKey(len(self._hashes) - 1, stride)

    def coordinates(self, key: CoordinateKey) -> Tensor:
        """``[N, 4]`` int32 coordinates of a set, in row order."""
        return unhash_coords(self._hashes[key.index])

    def size(self, key: CoordinateKey) -> int:
        """Number of coordinates of a set."""
        return self._hashes[key.index].numel()

    def downsample(self, key: CoordinateKey) -> CoordinateKey:
        """The stride-2 child of a set: unique ``floor(c / (2s)) * 2s`` (cached)."""
        return self._child(key)[0]

    def _child(self, key: CoordinateKey) -> tuple[CoordinateKey, Tensor, Tensor]:
        if key not in self._children:
            with _Timer(self):
                coords = unhash_coords(self._hashes[key.index]).long()
                step = 2 * key.stride
                parent = torch.div(coords[:, 1:], step, rounding_mode="floor") * step
                child_h, inverse = torch.unique(hash_coords(torch.cat([coords[:, :1], parent], 1)),
                                                sorted=True, return_inverse=True)
                # Kernel index of each input row inside its 2x2x2 parent cell, ME order (x fastest).
                bits = torch.div(coords[:, 1:] - parent, key.stride, rounding_mode="floor")
                k = bits[:, 0] + 2 * bits[:, 1] + 4 * bits[:, 2]
                self._children[key] = (self._add(child_h, step), inverse, k)
        return self._children[key]

    def batch_rows(self, key: CoordinateKey) -> tuple[Tensor, int]:
        """Per-point row into a global pooling output (batch indices present, ascending) and its row count."""
        if key not in self._batch_rows:
            with _Timer(self):
                batch = self._hashes[key.index] >> (3 * _FIELD_BITS)
                present, rows = torch.unique_consecutive(batch, return_inverse=True)
                self._batch_rows[key] = (rows, present.numel())
        return self._batch_rows[key]

    # -- kernel maps -----------------------------------------------------------------------------------------
    def kernel_map(self, in_key: CoordinateKey, out_key: CoordinateKey, kernel_size: int) -> KernelMap:
        """Pairs of the convolution from ``in_key`` to ``out_key``: output ``o`` reads input
        ``o + offset[k] * in_stride`` with weight ``k`` (MinkowskiEngine semantics, also for even kernels)."""
        cache_key = (in_key, out_key, kernel_size, False)
        if cache_key not in self._kernel_maps:
            with _Timer(self):
                self._kernel_maps[cache_key] = self._build_kernel_map(in_key, out_key, kernel_size)
        return self._kernel_maps[cache_key]

    def transposed_kernel_map(self, in_key: CoordinateKey, out_key: CoordinateKey, kernel_size: int) -> KernelMap:
        """Pairs of the transposed convolution from coarse ``in_key`` onto the finer ``out_key``: the
        convolution map from ``out_key`` to ``in_key`` with inputs and outputs exchanged (as in ME)."""
        cache_key = (in_key, out_key, kernel_size, True)
        if cache_key not in self._kernel_maps:
            self._kernel_maps[cache_key] = self.kernel_map(out_key, in_key, kernel_size).swapped()
        return self._kernel_maps[cache_key]

    def _build_kernel_map(self, in_key: CoordinateKey, out_key: CoordinateKey, kernel_size: int) -> KernelMap:
        volume = kernel_size ** 3
        child = self._children.get(in_key)
        if kernel_size == 2 and child is not None and child[0] == out_key:
            # Stride-2 kernel-2 conv onto the child set: each input row has exactly one (output, k) pair.
            _, inverse, k = child
            order = torch.argsort(k, stable=True)
            bounds = torch.bincount(k, minlength=volume).cumsum(0)
            return KernelMap(order, inverse[order], [0] + bounds.tolist())

        step = in_key.stride
        axis = kernel_offsets(kernel_size)[:kernel_size, 0] * step  # per-axis offsets (x of the first row)
        if int(axis.abs().max()) >= COORD_LIMIT:
            raise ValueError(f"kernel offsets up to {int(axis.abs().max())} exceed the coordinate range")
        in_h, out_h = self._hashes[in_key.index], self._hashes[out_key.index]
        # Offsets sharing (dx, dy) form a "column" whose dz span one window of the z-sorted keys: one search per
        # column finds the window, the K keys after it are checked directly. Kernel index k = c + K² iz with
        # column c = ix + K iy (ME order). For an odd stride-1 kernel, pairs(-d) = swap(pairs(d)): only columns
        # c <= K²//2 are searched, the others mirrored (k -> volume-1-k); the centre offset is the identity.
        columns = kernel_size ** 2
        symmetric = in_key == out_key and kernel_size % 2 == 1
        centre = volume // 2 if symmetric else None
        ks, ins, outs = [], [], []
        for c in range(columns // 2 + 1 if symmetric else columns):
            dx, dy = int(axis[c % kernel_size]), int(axis[c // kernel_size])
            iz, in_rows, out_rows = _match_column(in_h, out_h + (dx * _FIELD + dy) * _FIELD, int(axis[0]), step,
                                                  kernel_size)
            k = c + columns * iz
            if symmetric and c == columns // 2:
                keep = k != centre
                k, in_rows, out_rows = k[keep], in_rows[keep], out_rows[keep]
            elif symmetric:
                ks.append(volume - 1 - k)
                ins.append(out_rows)
                outs.append(in_rows)
            ks.append(k)
            ins.append(in_rows)
            outs.append(out_rows)
        k = torch.cat(ks)
        order = torch.argsort(k, stable=True)
        bounds = torch.bincount(k, minlength=volume).cumsum(0)
        return KernelMap(torch.cat(ins)[order], torch.cat(outs)[order], [0] + bounds.tolist(), centre)


def _match_column(keys: Tensor, base: Tensor, z_low: int, step: int, kernel_size: int) -> tuple[Tensor, ...]:
    """Matches of queries ``base + z`` for ``z = z_low, z_low + step, ... (kernel_size values)`` in sorted unique
    ``keys``: returns ``(iz, key row, query row)``. The matches of one query are consecutive keys starting at
    ``searchsorted(keys, base + z_low)`` (z is the lowest hash field), so at most ``kernel_size`` keys are checked."""
    n = keys.numel()
    if n == 0 or base.numel() == 0:
        empty = torch.empty(0, dtype=torch.long, device=keys.device)
        return empty, empty, empty
    start = torch.searchsorted(keys, base + z_low)
    pos = start[None, :] + torch.arange(kernel_size, device=keys.device)[:, None]
    inside = pos < n
    pos.clamp_(max=n - 1)
    dz = keys[pos] - base[None, :] - z_low  # >= 0; a multiple of step when in the same (b, x, y) column
    j, row = torch.nonzero(inside & (dz <= (kernel_size - 1) * step), as_tuple=True)
    return torch.div(dz[j, row], step, rounding_mode="floor"), pos[j, row], row
