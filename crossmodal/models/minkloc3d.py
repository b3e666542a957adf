"""MinkLoc3D LiDAR branch (the cloud branch of MinkLoc++ / the DistilVPR teacher) on :mod:`crossmodal.sparse`.

Layer structure and parameter names follow the public MinkowskiEngine code (jac99/MinkLoc3D ``models/minkfpn.py``,
``models/minkloc.py``; jac99/MinkLocMultimodal ``layers/eca_block.py``, ``layers/pooling.py``;
``MinkowskiEngine.modules.resnet_block.BasicBlock``), so an ME state_dict of that branch maps onto this model with
:func:`load_minkowski_state_dict`.

Default configuration (MinkLoc++ cloud branch): conv0 5³ 1→32 + BN + ReLU; three stages, each a 2³ stride-2 conv
(+BN+ReLU) and one ECA basic block (planes 32, 64, 64); one top-down step: 1×1 conv 64→128 on stage 3, 2³
stride-2 transposed conv onto stage 2's coordinates, plus a 1×1 lateral conv 64→128 of stage 2; GeM (p = 3,
learnable) → 128-d.

MinkLoc3Dv2 (jac99/MinkLoc3Dv2 ``models/minkfpn.py``, ``models/minkloc.py``, ``models/minkloc3dv2.txt``) keeps this
``MinkFPN`` and changes only its arguments: four stages (planes 64, 128, 64, 32), two top-down steps onto stages 3
and 2 (local features at stride 4), 256-d GeM descriptor, 2,663,567 parameters
(``configs/cloud_branch/minkloc3dv2.yaml``; its ``weights/minkloc3dv2_*.pth`` load with
:func:`load_minkowski_state_dict` and ``prefix=""``). Any number of stages and ``0 <= num_top_down <= stages`` is
built as upstream does.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from crossmodal.sparse import (
    GeM,
    GlobalAvgPool,
    GlobalMaxPool,
    GridGeM,
    SparseBatchNorm,
    SparseConv3d,
    SparseConvTranspose3d,
    SparseReLU,
    SparseTensor,
    broadcast_mul,
    sparse_tensor,
)


class ECALayer(nn.Module):
    """Efficient channel attention: global average → 1-D conv across channels → sigmoid → scale the points."""

    def __init__(self, channels: int, gamma: int = 2, b: int = 1):
        super().__init__()
        t = int(abs((math.log2(channels) + b) / gamma))
        k = t if t % 2 else t + 1
        self.avg_pool = GlobalAvgPool()
        self.conv = nn.Conv1d(1, 1, kernel_size=k, padding=(k - 1) // 2, bias=False)

    def forward(self, x: SparseTensor) -> SparseTensor:
        y = self.conv(self.avg_pool(x).unsqueeze(1)).squeeze(1)
        return broadcast_mul(x, torch.sigmoid(y))


class BasicBlock(nn.Module):
    """ResNet basic block (two 3³ convs + BN, residual, ReLU), optionally with ECA before the residual sum."""

    def __init__(self, inplanes: int, planes: int, downsample: nn.Module | None = None, eca: bool = False):
        super().__init__()
        self.conv1 = SparseConv3d(inplanes, planes, kernel_size=3)
        self.norm1 = SparseBatchNorm(planes)
        self.conv2 = SparseConv3d(planes, planes, kernel_size=3)
        self.norm2 = SparseBatchNorm(planes)
        self.relu = SparseReLU()
        self.downsample = downsample
        self.eca = ECALayer(planes) if eca else None

    def forward(self, x: SparseTensor) -> SparseTensor:
        out = self.relu(self.norm1(self.conv1(x)))
        out = self.norm2(self.conv2(out))
        if self.eca is not None:
            out = self.eca(out)
        residual = x if self.downsample is None else self.downsample(x)
        return self.relu(out + residual)


BLOCKS = ("ECABasicBlock", "BasicBlock")


class MinkFPN(nn.Module):
    """Bottom-up stages with stride-2 convs and a feature-pyramid top-down path (upstream ``MinkFPN``)."""

    def __init__(self, in_channels: int, out_channels: int, num_top_down: int = 1, conv0_kernel_size: int = 5,
                 block: str = "ECABasicBlock", layers: Sequence[int] = (1, 1, 1), planes: Sequence[int] = (32, 64, 64)):
        super().__init__()
        if len(layers) != len(planes) or not layers:
            raise ValueError(f"layers {layers} and planes {planes} must be non-empty and of equal length")
        if not 0 <= num_top_down <= len(layers):
            raise ValueError(f"num_top_down must lie in [0, {len(layers)}], got {num_top_down}")
        if block not in BLOCKS:
            raise ValueError(f"block must be one of {BLOCKS}, got {block!r}")
        self.num_bottom_up, self.num_top_down = len(layers), num_top_down
        eca = block == "ECABasicBlock"

        inplanes = planes[0]
        self.conv0 = SparseConv3d(in_channels, inplanes, kernel_size=conv0_kernel_size)
        self.bn0 = SparseBatchNorm(inplanes)
        self.convs, self.bn, self.blocks = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
        for plane, layer in zip(planes, layers):
            self.convs.append(SparseConv3d(inplanes, inplanes, kernel_size=2, stride=2))
            self.bn.append(SparseBatchNorm(inplanes))
            downsample = None
            if inplanes != plane:
                downsample = nn.Sequential(SparseConv3d(inplanes, plane, kernel_size=1), SparseBatchNorm(plane))
            stage = [BasicBlock(inplanes, plane, downsample, eca)]
            stage += [BasicBlock(plane, plane, eca=eca) for _ in range(1, layer)]
            self.blocks.append(nn.Sequential(*stage))
            inplanes = plane

        self.tconvs, self.conv1x1 = nn.ModuleList(), nn.ModuleList()
        for i in range(num_top_down):
            self.conv1x1.append(SparseConv3d(planes[-1 - i], out_channels, kernel_size=1))
            self.tconvs.append(SparseConvTranspose3d(out_channels, out_channels, kernel_size=2, stride=2))
        # One more lateral connection than top-down steps: from a stage, or from conv0 when all stages are used.
        lateral_in = planes[-1 - num_top_down] if num_top_down < self.num_bottom_up else planes[0]
        self.conv1x1.append(SparseConv3d(lateral_in, out_channels, kernel_size=1))
        self.relu = SparseReLU()
        self._init_weights()

    def _init_weights(self) -> None:
        """Upstream ``ResNetBase.weight_initialization``: ME's kaiming_normal_(fan_out, relu) on the (non-
        transposed) conv kernels, BN weight 1 and bias 0. ME stores a 1×1 stride-1 kernel as ``[in, out]`` and
        its fan rule then takes ``in`` as fan_out; that is kept so initial scales match upstream."""
        gain = nn.init.calculate_gain("relu")
        for m in self.modules():
            if isinstance(m, SparseConv3d):
                volume, cin, cout = m.kernel.shape
                fan_out = cin if (m.kernel_size, m.stride) == (1, 1) else cout * volume
                nn.init.normal_(m.kernel, 0.0, gain / math.sqrt(fan_out))
            elif isinstance(m, SparseBatchNorm):
                nn.init.ones_(m.bn.weight)
                nn.init.zeros_(m.bn.bias)

    def forward(self, x: SparseTensor) -> SparseTensor:
        feature_maps = []
        x = self.relu(self.bn0(self.conv0(x)))
        if self.num_top_down == self.num_bottom_up:
            feature_maps.append(x)
        for ndx, (conv, bn, block) in enumerate(zip(self.convs, self.bn, self.blocks)):
            x = block(self.relu(bn(conv(x))))
            if self.num_bottom_up - 1 - self.num_top_down <= ndx < len(self.convs) - 1:
                feature_maps.append(x)
        if not self.tconvs:
            return self.conv1x1[0](x)
        for ndx, tconv in enumerate(self.tconvs):
            lateral = feature_maps[-ndx - 1]
            # Upstream applies conv1x1[0] and then the first tconv; nothing lies between the two linear maps, so
            # they run as one transposed conv (same result, about a third of that step's multiply-adds).
            up = tconv(x, lateral, pre=self.conv1x1[0]) if ndx == 0 else tconv(x, lateral)
            x = up + self.conv1x1[ndx + 1](lateral)
        return x


POOLINGS = {"GeM": GeM, "MAC": GlobalMaxPool, "SPoC": GlobalAvgPool, "GridGeM": GridGeM}


class MinkLoc3D(nn.Module):
    """MinkLoc3D LiDAR branch: :class:`MinkFPN` + global pooling → ``[B, feature_size]`` descriptor.

    ``forward(batch)`` takes ``batch["coords"]`` ``[N, 4]`` int and ``batch["feats"]`` ``[N, in_channels]``
    (from :class:`crossmodal.sparse.SparseCollate`) and returns ``{"descriptor": [B, feature_size],
    "local_features": SparseTensor}`` (descriptor rows sorted by batch index). ``backend`` is ``auto``, ``torch``
    or ``minkowski`` (see :mod:`crossmodal.sparse`). Under ``torch.compile`` the branch runs eagerly (a graph
    break around it).
    """

    def __init__(self, in_channels: int = 1, feature_size: int = 128, planes: Sequence[int] = (32, 64, 64),
                 layers: Sequence[int] = (1, 1, 1), num_top_down: int = 1, conv0_kernel_size: int = 5,
                 block: str = "ECABasicBlock", pooling: str = "GeM", backend: str = "auto",
                 grid_cells: int = 4, grid_channels: int = 32):
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {sorted(POOLINGS)}, got {pooling!r}")
        self.backend = backend
        self.feature_size = feature_size
        grid = pooling == "GridGeM"
        # GridGeM (our option, not MinkLoc3D's): the FPN ends in grid_channels per point, pooled per cell of a
        # grid_cells² bird's-eye grid, and a linear map takes the cells² · grid_channels layout to feature_size
        self.backbone = MinkFPN(in_channels, grid_channels if grid else feature_size, num_top_down,
                                conv0_kernel_size, block, tuple(layers), tuple(planes))
        self.pooling = GridGeM(grid_cells) if grid else POOLINGS[pooling]()
        self.project = nn.Linear(grid_cells ** 2 * grid_channels, feature_size) if grid else None

    # torch.compile runs this branch eagerly: MinkowskiEngine's Python wrappers are not traceable (dynamo
    # fails on them), and the built-in backend's voxel count changes every batch (a recompile each time).
    @torch.compiler.disable
    def forward(self, batch: Mapping[str, Tensor]) -> dict[str, Any]:
        x = self.backbone(sparse_tensor(batch["coords"], batch["feats"], backend=self.backend))
        pooled = self.pooling(x)
        return {"descriptor": pooled if self.project is None else self.project(pooled), "local_features": x}


#: Upstream names that differ from ours (MinkLoc++'s ``PoolingWrapper`` adds a level under ``pooling``).
_RENAMES = ((re.compile(r"^pooling\.pooling\."), "pooling."),)


def _convert(value: Tensor, name: str, shape: torch.Size) -> Tensor | None:
    """An ME tensor in our shape, or ``None`` when it cannot be: ME stores 1×1 stride-1 kernels as ``[in, out]``
    (ours ``[1, in, out]``) and conv biases as ``[1, out]`` (ours ``[out]``)."""
    if value.shape == shape:
        return value
    if name.endswith(".kernel") and value.dim() == 2 and shape == (1, *value.shape):
        return value.unsqueeze(0)
    if name.endswith(".bias") and value.dim() == 2 and value.shape[0] == 1 and shape == value.shape[1:]:
        return value.reshape(shape)
    return None


def load_minkowski_state_dict(model: MinkLoc3D, state_dict: Mapping[str, Tensor], prefix: str = "") -> None:
    """Load a MinkowskiEngine MinkLoc3D / MinkLoc3Dv2 / MinkLoc++ cloud-branch state_dict into ``model``, all or
    nothing.

    Only keys starting with ``prefix`` are read, with the prefix removed (``"cloud_fe."`` for a MinkLoc++
    ``MinkLocRGB`` checkpoint, ``""`` for a bare ``MinkLoc`` such as MinkLoc3Dv2's published weights; add
    ``"module."`` for DataParallel checkpoints). ``model`` must be built with the checkpoint's architecture
    arguments (MinkLoc3Dv2: ``configs/cloud_branch/minkloc3dv2.yaml``).
    Names are mapped (``pooling.pooling.p`` → ``pooling.p``) and ME shapes converted (see ``_convert``).
    Raises ``ValueError`` listing every unexpected key, missing key and shape mismatch; nothing is loaded then.
    """
    own = model.state_dict()
    converted: dict[str, Tensor] = {}
    unexpected, mismatched, seen = [], [], set()
    for name, value in state_dict.items():
        if not name.startswith(prefix):
            continue
        key = name[len(prefix):]
        for pattern, replacement in _RENAMES:
            key = pattern.sub(replacement, key)
        if key not in own:
            unexpected.append(name)
            continue
        seen.add(key)
        new = _convert(value, key, own[key].shape)
        if new is None:
            mismatched.append(f"{name}: checkpoint {tuple(value.shape)} vs model {tuple(own[key].shape)}")
            continue
        converted[key] = new
    missing = sorted(set(own) - seen)
    if unexpected or missing or mismatched:
        lines = [f"cannot load the MinkowskiEngine state_dict (prefix {prefix!r}) into {type(model).__name__}:"]
        for title, items in (("unexpected keys", unexpected), ("missing keys", missing),
                             ("shape mismatches", mismatched)):
            if items:
                lines.append(f"  {title} ({len(items)}): " + ", ".join(items))
        raise ValueError("\n".join(lines))
    model.load_state_dict(converted, strict=True)
