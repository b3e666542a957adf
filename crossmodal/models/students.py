"""Image-only students (the deployable models), returning ``{"descriptor": [B, 384]}`` from images alone.

- :class:`ImageStudent` (DistilVPR's MinkLoc++2D student): ResNet18 → layer3 → 1×1 conv 256→384 → GeM;
  2,881,473 parameters (≈2.9 M), the teacher's dimension so no adaptor is needed.
- :class:`LightImageStudent`: MobileNetV3-small features (stride 32, 576 ch) → 1×1 conv 576→384 → GeM;
  1,148,577 parameters. Our own lighter option (not from a paper).

Both take ``[B, 3, H, W]`` ImageNet-normalised images or a batch dict with ``images``; ``pretrained`` is a local
torchvision ImageNet state_dict of the full backbone model (never downloaded).
"""

from __future__ import annotations

from typing import Any

from .image import MobileNetV3GeM, ResNetGeM


class ImageStudent(ResNetGeM):
    def __init__(self, out_dim: int = 384, backbone: str = "resnet18", layers_up_to: str = "layer3",
                 pretrained: str | None = None, gem_p: float = 3.0, learn_p: bool = True, head: Any = None):
        super().__init__(backbone, out_dim, layers_up_to, pretrained, gem_p, learn_p, head)


class LightImageStudent(MobileNetV3GeM):
    def __init__(self, out_dim: int = 384, variant: str = "mobilenet_v3_small", pretrained: str | None = None,
                 gem_p: float = 3.0, learn_p: bool = True, head: Any = None):
        super().__init__(variant, out_dim, pretrained, gem_p, learn_p, head)
