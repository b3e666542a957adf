"""Image and point-cloud augmentations with explicit random generators.

Every random transform here is a small callable ``t(x, generator=None)`` taking a :class:`torch.Generator`; with
the same generator state it gives the same output, whatever process it runs in. :class:`PairedPlaceDataset`
derives one generator per item from ``(seed, epoch, index)``, so augmentations are reproducible under a seed with
any number of DataLoader workers. Called without a generator, a transform uses its own ``generator`` (seeded at
construction when ``seed`` is given) or, failing that, torch's global generator.

Images (distillation.md; the ColorJitter / RandomErasing parameters of MinkLoc++):
- :func:`image_train_transform`: [Resize] → ColorJitter(0.2, 0.2, 0.2, hue 0.1) → ToTensor → ImageNet normalise →
  RandomErasing(p 0.5, scale 0.1–0.4, ratio 0.3–3.3, value 0).
- :func:`image_eval_transform`: [Resize] → ToTensor → ImageNet normalise.

Point clouds (MinkLoc3D ``TrainTransform(aug_mode=1)`` and ``TrainSetTransform``), on ``[N, 3]`` float tensors in
the submap's normalised frame ([-1, 1]):
- :class:`RandomRotationZ` (uniform ±5° about z), :class:`RandomFlip` (x with p 0.25, y with p 0.25, never z),
  :class:`JitterPoints` (σ 0.001, clipped to ±0.002), :class:`RemoveRandomPoints` (a uniform share in [0, 0.1]),
  :class:`RandomTranslation` (σ 0.01, one offset per cloud), :class:`RemoveRandomBlock` (p 0.4, a z-parallel
  cuboid covering 2–33 % of the xy bounding box area).
- Differences from upstream, on purpose: rotation and flip are drawn per cloud (upstream draws one for the whole
  batch in its collate function); removed points are *resampled* (replaced by copies of randomly chosen kept
  points) instead of being moved to the origin. Both keep the ``[N, 3]`` shape; after voxelisation a copy falls in
  an already occupied voxel, so resampling equals true removal, whereas upstream's zeros add a spurious occupied
  voxel at the origin. ``fill="zero"`` restores upstream's behaviour.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _uniform(generator: torch.Generator | None, low: float = 0.0, high: float = 1.0) -> float:
    return low + (high - low) * float(torch.rand((), generator=generator, dtype=torch.float64))


class RandomTransform:
    """Base class: a transform taking an explicit generator (``uses_generator`` marks it for :class:`Compose`)."""

    uses_generator = True

    def __init__(self, seed: int | None = None):
        self.generator = torch.Generator().manual_seed(seed) if seed is not None else None

    def __call__(self, x: Any, generator: torch.Generator | None = None) -> Any:
        return self.apply(x, generator if generator is not None else self.generator)

    def apply(self, x: Any, generator: torch.Generator | None) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if k != "generator")
        return f"{type(self).__name__}({args})"


def call_transform(transform: Callable | None, x: Any, generator: torch.Generator | None) -> Any:
    """Apply ``transform`` to ``x``, handing it ``generator`` when it takes one (torchvision's do not)."""
    if transform is None:
        return x
    if getattr(transform, "uses_generator", False):
        return transform(x, generator=generator)
    return transform(x)


class Compose(RandomTransform):
    """Apply transforms in order; the generator is passed to those that take one, so one generator drives all."""

    def __init__(self, transforms: Sequence[Callable], seed: int | None = None):
        super().__init__(seed)
        self.transforms = list(transforms)

    def apply(self, x: Any, generator: torch.Generator | None) -> Any:
        for t in self.transforms:
            x = call_transform(t, x, generator)
        return x

    def __repr__(self) -> str:
        inner = ",\n".join(f"    {t!r}" for t in self.transforms)
        return f"Compose([\n{inner}\n])"


# ------------------------------------------------------------------------------------------------------------
# Point clouds


def _check_cloud(x: Tensor) -> None:
    if not isinstance(x, Tensor) or x.dim() != 2 or x.shape[1] != 3:
        raise ValueError(f"cloud augmentations take a [N, 3] tensor, got {type(x).__name__} "
                         f"{tuple(getattr(x, 'shape', ()))}")


def _refill(x: Tensor, removed: Tensor, fill: str, generator: torch.Generator | None) -> Tensor:
    """``x`` with the points where ``removed`` is true replaced (``fill`` = ``resample`` or ``zero``)."""
    n_removed = int(removed.sum())
    if n_removed == 0:
        return x
    kept = torch.nonzero(~removed).squeeze(1)
    if kept.numel() == 0:  # nothing would remain: leave the cloud as it is
        return x
    out = x.clone()
    if fill == "zero":
        out[removed] = 0
    else:
        pick = torch.randint(kept.numel(), (n_removed,), generator=generator)
        out[removed] = x[kept[pick]]
    return out


class RandomRotationZ(RandomTransform):
    """Rotate about the z axis by an angle uniform in ``[-max_degrees, max_degrees]``."""

    def __init__(self, max_degrees: float = 5.0, seed: int | None = None):
        super().__init__(seed)
        self.max_degrees = float(max_degrees)

    def apply(self, x: Tensor, generator: torch.Generator | None) -> Tensor:
        _check_cloud(x)
        theta = math.radians(_uniform(generator, -self.max_degrees, self.max_degrees))
        c, s = math.cos(theta), math.sin(theta)
        rot = torch.tensor([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]], dtype=x.dtype)
        return x @ rot.T


class RandomFlip(RandomTransform):
    """Negate at most one axis: x with probability ``p[0]``, y with ``p[1]``, z with ``p[2]`` (sum ≤ 1)."""

    def __init__(self, p: Sequence[float] = (0.25, 0.25, 0.0), seed: int | None = None):
        super().__init__(seed)
        p = tuple(float(v) for v in p)
        if len(p) != 3 or min(p) < 0 or sum(p) > 1 + 1e-9:
            raise ValueError(f"RandomFlip needs three non-negative probabilities summing to at most 1, got {p}")
        self.p = p

    def apply(self, x: Tensor, generator: torch.Generator | None) -> Tensor:
        _check_cloud(x)
        r, cum = _uniform(generator), 0.0
        for axis, p in enumerate(self.p):
            cum += p
            if r < cum:
                out = x.clone()
                out[:, axis] = -out[:, axis]
                return out
        return x


class JitterPoints(RandomTransform):
    """Add Gaussian noise ``N(0, sigma²)`` to every coordinate, clipped to ``[-clip, clip]`` (``None``: no clip)."""

    def __init__(self, sigma: float = 0.001, clip: float | None = 0.002, seed: int | None = None):
        super().__init__(seed)
        self.sigma, self.clip = float(sigma), clip

    def apply(self, x: Tensor, generator: torch.Generator | None) -> Tensor:
        _check_cloud(x)
        noise = self.sigma * torch.randn(x.shape, generator=generator, dtype=x.dtype)
        if self.clip is not None:
            noise = noise.clamp(-self.clip, self.clip)
        return x + noise


class RemoveRandomPoints(RandomTransform):
    """Remove a share of the points drawn uniformly in ``[min_ratio, max_ratio]`` (shape kept, see ``fill``)."""

    def __init__(self, max_ratio: float = 0.1, min_ratio: float = 0.0, fill: str = "resample",
                 seed: int | None = None):
        super().__init__(seed)
        if not 0 <= min_ratio <= max_ratio < 1:
            raise ValueError(f"need 0 <= min_ratio <= max_ratio < 1, got {min_ratio}, {max_ratio}")
        if fill not in ("resample", "zero"):
            raise ValueError(f"fill must be 'resample' or 'zero', got {fill!r}")
        self.min_ratio, self.max_ratio, self.fill = float(min_ratio), float(max_ratio), fill

    def apply(self, x: Tensor, generator: torch.Generator | None) -> Tensor:
        _check_cloud(x)
        n = x.shape[0]
        k = int(n * _uniform(generator, self.min_ratio, self.max_ratio))
        removed = torch.zeros(n, dtype=torch.bool)
        removed[torch.randperm(n, generator=generator)[:k]] = True
        return _refill(x, removed, self.fill, generator)


class RandomTranslation(RandomTransform):
    """Shift the whole cloud by one offset ``N(0, sigma²)`` per axis."""

    def __init__(self, sigma: float = 0.01, seed: int | None = None):
        super().__init__(seed)
        self.sigma = float(sigma)

    def apply(self, x: Tensor, generator: torch.Generator | None) -> Tensor:
        _check_cloud(x)
        return x + self.sigma * torch.randn((1, 3), generator=generator, dtype=x.dtype)


class RemoveRandomBlock(RandomTransform):
    """With probability ``p``, remove the points inside a z-parallel cuboid (upstream ``RemoveRandomBlock``).

    The cuboid's xy area is a share in ``scale`` of the cloud's xy bounding-box area, its aspect ratio is drawn in
    ``ratio`` and its position uniformly inside the box. Shape kept (see ``fill``).
    """

    def __init__(self, p: float = 0.4, scale: Sequence[float] = (0.02, 0.33), ratio: Sequence[float] = (0.3, 3.3),
                 fill: str = "resample", seed: int | None = None):
        super().__init__(seed)
        if fill not in ("resample", "zero"):
            raise ValueError(f"fill must be 'resample' or 'zero', got {fill!r}")
        self.p, self.scale, self.ratio, self.fill = float(p), tuple(scale), tuple(ratio), fill

    def apply(self, x: Tensor, generator: torch.Generator | None) -> Tensor:
        _check_cloud(x)
        if _uniform(generator) >= self.p:
            return x
        lo, hi = x.min(dim=0).values, x.max(dim=0).values
        span = (hi - lo).double()
        area = float(span[0] * span[1])
        erase = _uniform(generator, *self.scale) * area
        aspect = _uniform(generator, *self.ratio)
        h, w = math.sqrt(erase * aspect), math.sqrt(erase / aspect)
        x0 = float(lo[0]) + _uniform(generator) * (float(span[0]) - w)
        y0 = float(lo[1]) + _uniform(generator) * (float(span[1]) - h)
        removed = (x[:, 0] > x0) & (x[:, 0] < x0 + w) & (x[:, 1] > y0) & (x[:, 1] < y0 + h)
        return _refill(x, removed, self.fill, generator)


def cloud_train_transform(rotation_degrees: float = 5.0, flip_p: Sequence[float] = (0.25, 0.25, 0.0),
                          jitter_sigma: float = 0.001, jitter_clip: float | None = 0.002,
                          remove_max_ratio: float = 0.1, translation_sigma: float = 0.01,
                          block_p: float = 0.4, fill: str = "resample", seed: int | None = None) -> Compose:
    """The training cloud augmentation of distillation.md / MinkLoc3D aug_mode 1 (rotation and flip first)."""
    return Compose([
        RandomRotationZ(rotation_degrees),
        RandomFlip(flip_p),
        JitterPoints(jitter_sigma, jitter_clip),
        RemoveRandomPoints(remove_max_ratio, fill=fill),
        RandomTranslation(translation_sigma),
        RemoveRandomBlock(block_p, fill=fill),
    ], seed=seed)


# ------------------------------------------------------------------------------------------------------------
# Images


class ColorJitter(RandomTransform):
    """torchvision's ColorJitter (same factor ranges, random order of the four adjustments) on a PIL image or an
    image tensor, drawing from an explicit generator."""

    def __init__(self, brightness: float = 0.2, contrast: float = 0.2, saturation: float = 0.2, hue: float = 0.1,
                 seed: int | None = None):
        super().__init__(seed)
        if not 0 <= hue <= 0.5:
            raise ValueError(f"hue must lie in [0, 0.5], got {hue}")
        self.brightness, self.contrast, self.saturation, self.hue = brightness, contrast, saturation, hue

    def apply(self, img: Any, generator: torch.Generator | None) -> Any:
        import torchvision.transforms.functional as F

        order = torch.randperm(4, generator=generator).tolist()
        factors = [_uniform(generator, max(0.0, 1 - v), 1 + v) if v > 0 else None
                   for v in (self.brightness, self.contrast, self.saturation)]
        factors.append(_uniform(generator, -self.hue, self.hue) if self.hue > 0 else None)
        fns = (F.adjust_brightness, F.adjust_contrast, F.adjust_saturation, F.adjust_hue)
        for i in order:
            if factors[i] is not None:
                img = fns[i](img, factors[i])
        return img


class RandomErasing(RandomTransform):
    """torchvision's RandomErasing (``value`` 0, up to 10 tries to fit the rectangle) on a ``[C, H, W]`` tensor,
    drawing from an explicit generator."""

    def __init__(self, p: float = 0.5, scale: Sequence[float] = (0.1, 0.4), ratio: Sequence[float] = (0.3, 3.3),
                 value: float = 0.0, seed: int | None = None):
        super().__init__(seed)
        self.p, self.scale, self.ratio, self.value = float(p), tuple(scale), tuple(ratio), float(value)

    def apply(self, img: Tensor, generator: torch.Generator | None) -> Tensor:
        if _uniform(generator) >= self.p:
            return img
        _, h, w = img.shape[-3:]
        area = h * w
        log_ratio = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        for _ in range(10):
            erase_area = area * _uniform(generator, *self.scale)
            aspect = math.exp(_uniform(generator, *log_ratio))
            eh = round(math.sqrt(erase_area * aspect))
            ew = round(math.sqrt(erase_area / aspect))
            if not (eh < h and ew < w):
                continue
            i = int(torch.randint(0, h - eh + 1, (), generator=generator))
            j = int(torch.randint(0, w - ew + 1, (), generator=generator))
            out = img.clone()
            out[..., i:i + eh, j:j + ew] = self.value
            return out
        return img


class ResizeIfNeeded:
    """PIL resize to ``(height, width)`` (bilinear), skipped when the image already has that size."""

    def __init__(self, size: Sequence[int]):
        self.size = (int(size[0]), int(size[1]))

    def __call__(self, img: Any) -> Any:
        from PIL import Image

        if (img.height, img.width) == self.size:
            return img
        return img.resize((self.size[1], self.size[0]), Image.BILINEAR)

    def __repr__(self) -> str:
        return f"ResizeIfNeeded(size={self.size})"


def _to_normalised_tensor() -> list[Callable]:
    from torchvision import transforms as T

    return [T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)]


def image_eval_transform(image_size: Sequence[int] | None = None) -> Compose:
    """PIL image → ``[3, H, W]`` float tensor, ImageNet-normalised (resized first when ``image_size`` = (H, W))."""
    head = [ResizeIfNeeded(image_size)] if image_size is not None else []
    return Compose(head + _to_normalised_tensor())


def image_train_transform(image_size: Sequence[int] | None = None, brightness: float = 0.2, contrast: float = 0.2,
                          saturation: float = 0.2, hue: float = 0.1, erase_p: float = 0.5,
                          erase_scale: Sequence[float] = (0.1, 0.4), seed: int | None = None) -> Compose:
    """Training transform: [resize] → ColorJitter → ToTensor → normalise → RandomErasing (after normalisation,
    so erased pixels are 0 = the ImageNet mean colour, as torchvision's default placement in MinkLoc++)."""
    head = [ResizeIfNeeded(image_size)] if image_size is not None else []
    return Compose(head + [ColorJitter(brightness, contrast, saturation, hue)] + _to_normalised_tensor()
                   + [RandomErasing(erase_p, erase_scale)], seed=seed)
