"""Image branches: a truncated torchvision CNN → 1×1 conv → GeM, returning ``{"descriptor": [B, out_dim]}``.

Models are built with ``weights=None`` (nothing is ever downloaded). ``pretrained`` is the path of a local
torchvision ImageNet state_dict (e.g. ``resnet18-f37072fd.pth``) for the *full* torchvision model; the layers
after the cut (``layer4``, ``fc`` / ``classifier``) are ignored, every key of the kept layers must be there
(``num_batches_tracked`` excepted, old torchvision files lack it) and any key the torchvision model does not have
is an error.

Inputs: an ImageNet-normalised ``[B, 3, H, W]`` tensor, or a batch dict holding it under ``"images"``.
"""

from __future__ import annotations

import pickle
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .pooling import GeM

RESNETS = ("resnet18", "resnet34", "resnet50")
RESNET_STAGES = ("layer1", "layer2", "layer3", "layer4")
MOBILENETS = ("mobilenet_v3_small", "mobilenet_v3_large")


def load_state_dict_file(path: str | Path) -> dict[str, Tensor]:
    """A state_dict saved with ``torch.save`` (tensors only); clear errors for a missing or unusable file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pretrained weights file not found: {path} (weights are never downloaded; give "
                                f"the path of a local torchvision state_dict, or null for random initialisation)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, OSError, ValueError, EOFError, AttributeError) as exc:
        raise ValueError(f"{path}: cannot read a state_dict from this file ({exc})") from None
    if isinstance(state, Mapping) and "state_dict" in state and isinstance(state["state_dict"], Mapping):
        raise ValueError(f"{path}: holds a training checkpoint (a 'state_dict' entry), not a torchvision "
                         f"state_dict; save checkpoint['state_dict'] of the torchvision model instead")
    if not isinstance(state, Mapping) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(f"{path}: not a state_dict (a mapping of names to tensors)")
    return dict(state)


def load_truncated(full: nn.Module, kept: nn.Module, state: Mapping[str, Tensor], source: str,
                   key_map: Mapping[str, str] | None = None) -> None:
    """Load ``state`` (a state_dict of the torchvision model ``full``) into ``kept`` (a part of it whose keys are
    ``key_map[full_key]``, identity by default); raise ``ValueError`` listing every problem, loading nothing."""
    full_state = full.state_dict()
    kept_state = kept.state_dict()
    key_map = key_map or {}
    unexpected = sorted(k for k in state if k not in full_state)
    mismatched = sorted(f"{k}: file {tuple(v.shape)} vs model {tuple(full_state[k].shape)}"
                        for k, v in state.items() if k in full_state and v.shape != full_state[k].shape)
    to_load = {}
    for k, v in state.items():
        target = key_map.get(k, k)
        if target in kept_state and k in full_state and v.shape == full_state[k].shape:
            to_load[target] = v
    missing = sorted(k for k in kept_state if k not in to_load and not k.endswith("num_batches_tracked"))
    if unexpected or missing or mismatched:
        lines = [f"{source}: not a state_dict of torchvision's {type(full).__name__} for this backbone:"]
        for title, items in (("unexpected keys", unexpected), ("missing keys", missing),
                             ("shape mismatches", mismatched)):
            if items:
                shown = ", ".join(items[:20]) + (f", ... ({len(items) - 20} more)" if len(items) > 20 else "")
                lines.append(f"  {title} ({len(items)}): {shown}")
        raise ValueError("\n".join(lines))
    kept.load_state_dict(to_load, strict=False)


def _images(x: Tensor | Mapping[str, Any]) -> Tensor:
    if isinstance(x, Mapping):
        if "images" not in x:
            raise KeyError("image branch: the batch has no 'images' entry")
        x = x["images"]
    if x.dim() != 4 or x.shape[1] != 3:
        raise ValueError(f"image branch expects [B, 3, H, W] images, got {tuple(x.shape)}")
    return x


class _ConvGeMHead(nn.Module):
    """Backbone feature map → 1×1 conv → GeM; shared forward of the image branches."""

    backbone: nn.Module
    descriptor_dim: int

    def _init_head(self, channels: int, out_dim: int, gem_p: float, learn_p: bool) -> None:
        self.feature_channels = channels
        self.descriptor_dim = int(out_dim)
        self.conv = nn.Conv2d(channels, out_dim, kernel_size=1)
        self.pool = GeM(gem_p, learn_p=learn_p)

    def feature_map(self, x: Tensor | Mapping[str, Any]) -> Tensor:
        """``[B, out_dim, h, w]`` before pooling."""
        return self.conv(self.backbone(_images(x)))

    def forward(self, x: Tensor | Mapping[str, Any]) -> dict[str, Tensor]:
        return {"descriptor": self.pool(self.feature_map(x))}


class ResNetGeM(_ConvGeMHead):
    """torchvision ResNet run conv1 → ``layers_up_to`` (layer3: stride 16), 1×1 conv to ``out_dim``, GeM.

    Args:
        backbone: ``resnet18`` / ``resnet34`` / ``resnet50``.
        out_dim: descriptor size.
        layers_up_to: last ResNet stage kept (``layer1`` … ``layer4``).
        pretrained: local torchvision ImageNet state_dict of the full model, or ``None``.
        gem_p, learn_p: GeM exponent (init) and whether it is learned.
    """

    def __init__(self, backbone: str = "resnet18", out_dim: int = 256, layers_up_to: str = "layer3",
                 pretrained: str | None = None, gem_p: float = 3.0, learn_p: bool = True):
        super().__init__()
        import torchvision

        if backbone not in RESNETS:
            raise ValueError(f"backbone must be one of {RESNETS}, got {backbone!r}")
        if layers_up_to not in RESNET_STAGES:
            raise ValueError(f"layers_up_to must be one of {RESNET_STAGES}, got {layers_up_to!r}")
        net = getattr(torchvision.models, backbone)(weights=None)
        stages = RESNET_STAGES[:RESNET_STAGES.index(layers_up_to) + 1]
        parts = [("conv1", net.conv1), ("bn1", net.bn1), ("relu", net.relu), ("maxpool", net.maxpool)]
        parts += [(s, getattr(net, s)) for s in stages]
        self.backbone = nn.Sequential(OrderedDict(parts))
        if pretrained:
            load_truncated(net, self.backbone, load_state_dict_file(pretrained), str(pretrained))
        last = getattr(net, stages[-1])[-1]
        channels = (last.bn3 if hasattr(last, "bn3") else last.bn2).num_features
        self.backbone_name, self.layers_up_to = backbone, layers_up_to
        self._init_head(channels, out_dim, gem_p, learn_p)


class MobileNetV3GeM(_ConvGeMHead):
    """torchvision MobileNetV3 ``features`` (stride 32; 576 channels for ``small``, 960 for ``large``),
    1×1 conv to ``out_dim``, GeM. ``pretrained``: local torchvision state_dict of the full model."""

    def __init__(self, variant: str = "mobilenet_v3_small", out_dim: int = 384, pretrained: str | None = None,
                 gem_p: float = 3.0, learn_p: bool = True):
        super().__init__()
        import torchvision

        if variant not in MOBILENETS:
            raise ValueError(f"variant must be one of {MOBILENETS}, got {variant!r}")
        net = getattr(torchvision.models, variant)(weights=None)
        self.backbone = net.features
        if pretrained:
            state = load_state_dict_file(pretrained)
            key_map = {k: k[len("features."):] for k in state if k.startswith("features.")}
            load_truncated(net, self.backbone, state, str(pretrained), key_map)
        channels = net.features[-1].out_channels
        self.variant = variant
        self._init_head(channels, out_dim, gem_p, learn_p)
