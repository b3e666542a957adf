"""Input images for a deployed student: checks and preprocessing, identical to the evaluation transform.

A student checkpoint records its input (``input``: ``image_size`` [H, W], ImageNet ``mean`` / ``std``, ``mode``
``RGB``). :func:`preprocess` turns images into the ``[B, 3, H, W]`` float32 array the network takes: 8-bit RGB
→ ``/ 255`` → ``(x - mean) / std`` (torchvision's ``ToTensor`` + ``Normalize``, what
:func:`crossmodal.data.image_eval_transform` does), in numpy so the ONNX path needs no torch.

Bad input raises :class:`ImageInputError` naming the image and what is wrong: a wrong size (unless
``resize=True``: bilinear, as the evaluation transform), a mode other than RGB (greyscale, RGBA, 16-bit...), an
array that is not ``H x W x 3`` uint8, a file that is not a decodable image.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


class ImageInputError(ValueError):
    """An input image the model cannot take; the message names the image and the problem."""


@dataclasses.dataclass(frozen=True)
class InputSpec:
    """What the network takes: ``image_size`` (H, W), normalisation ``mean`` / ``std``, colour ``mode``."""

    image_size: tuple[int, int]
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    mode: str = "RGB"

    def __post_init__(self):
        h, w = (int(x) for x in self.image_size)
        if h < 1 or w < 1:
            raise ValueError(f"image_size must be positive (H, W), got {self.image_size}")
        object.__setattr__(self, "image_size", (h, w))
        object.__setattr__(self, "mean", tuple(float(x) for x in self.mean))
        object.__setattr__(self, "std", tuple(float(x) for x in self.std))
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ValueError(f"mean and std need 3 values (std > 0), got {self.mean}, {self.std}")
        if self.mode != "RGB":
            raise ValueError(f"only RGB inputs are supported, got mode {self.mode!r}")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> InputSpec:
        return cls(tuple(d["image_size"]), tuple(d.get("mean", IMAGENET_MEAN)), tuple(d.get("std", IMAGENET_STD)),
                   d.get("mode", "RGB"))

    @classmethod
    def from_checkpoint(cls, ckpt: Mapping[str, Any], image_size: Sequence[int] | None = None,
                        source: str = "checkpoint") -> InputSpec:
        """The checkpoint's ``input`` (``image_size`` overridable); ``config.data.image_size`` for checkpoints
        without one."""
        inp = dict(ckpt.get("input") or {})
        size = image_size or inp.get("image_size") or ((ckpt.get("config") or {}).get("data") or {}).get("image_size")
        if not size:
            raise ValueError(f"{source}: no input image size recorded (input.image_size / config.data.image_size); "
                             f"pass image_size=(H, W) of the images the model was trained on")
        return cls(tuple(size), tuple(inp.get("mean", IMAGENET_MEAN)), tuple(inp.get("std", IMAGENET_STD)),
                   inp.get("mode", "RGB"))

    def to_dict(self) -> dict[str, Any]:
        return {"image_size": list(self.image_size), "mean": list(self.mean), "std": list(self.std),
                "mode": self.mode}

    @property
    def size_text(self) -> str:
        h, w = self.image_size
        return f"{w}x{h} (W x H)"


def read_image(path: str | Path):
    """Open and decode an image file (PIL), naming the file when it is missing or cannot be decoded."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: image file not found")
    try:
        with Image.open(path) as im:
            im.load()
            return im.copy()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ImageInputError(f"{path}: cannot decode the image ({type(exc).__name__}: {exc}); the file is corrupt, "
                              f"truncated or not an image") from None


def _describe(item: Any, i: int) -> str:
    return str(item) if isinstance(item, (str, Path)) else f"image {i}"


def _pil_to_array(im, spec: InputSpec, resize: bool, name: str) -> np.ndarray:
    from PIL import Image

    if im.mode != spec.mode:
        raise ImageInputError(f"{name}: image mode {im.mode!r}, the model takes {spec.mode!r} (8-bit colour); "
                              f"convert it first (PIL: image.convert('RGB'))")
    h, w = spec.image_size
    if (im.height, im.width) != (h, w):
        if not resize:
            raise ImageInputError(f"{name}: image is {im.width}x{im.height} (W x H), the model takes "
                                  f"{spec.size_text}; resize it, or pass resize=True to resize bilinearly")
        im = im.resize((w, h), Image.BILINEAR)
    return np.asarray(im, dtype=np.uint8)


def _array_to_array(a: np.ndarray, spec: InputSpec, resize: bool, name: str) -> np.ndarray:
    if a.dtype != np.uint8:
        raise ImageInputError(f"{name}: array of dtype {a.dtype}, the model takes 8-bit RGB images as uint8 "
                              f"H x W x 3 arrays (or files / PIL images)")
    if a.ndim != 3 or a.shape[2] != 3:
        kind = "a greyscale" if a.ndim == 2 else f"a {a.shape[2]}-channel" if a.ndim == 3 else "an"
        raise ImageInputError(f"{name}: {kind} array of shape {a.shape}, the model takes RGB images "
                              f"(H x W x 3 uint8)")
    if a.shape[:2] != spec.image_size:
        if not resize:
            raise ImageInputError(f"{name}: image is {a.shape[1]}x{a.shape[0]} (W x H), the model takes "
                                  f"{spec.size_text}; resize it, or pass resize=True to resize bilinearly")
        from PIL import Image

        return _pil_to_array(Image.fromarray(a, "RGB"), spec, True, name)
    return a


def to_uint8(item: Any, spec: InputSpec, resize: bool = False, index: int = 0) -> np.ndarray:
    """One image (file path, PIL image, ``H x W x 3`` uint8 array) as a checked ``H x W x 3`` uint8 array."""
    name = _describe(item, index)
    if isinstance(item, (str, Path)):
        return _pil_to_array(read_image(item), spec, resize, name)
    if isinstance(item, np.ndarray):
        return _array_to_array(item, spec, resize, name)
    if hasattr(item, "mode") and hasattr(item, "size") and hasattr(item, "convert"):  # a PIL image
        return _pil_to_array(item, spec, resize, name)
    raise ImageInputError(f"{name}: unsupported input type {type(item).__name__}; give file paths, PIL images or "
                          f"H x W x 3 uint8 arrays")


def as_image_list(images: Any) -> list[Any]:
    """A single image or a sequence of images as a list (a ``B x H x W x 3`` uint8 array is a batch)."""
    if isinstance(images, (str, Path)) or (hasattr(images, "mode") and hasattr(images, "convert")):
        return [images]
    if isinstance(images, np.ndarray):
        return list(images) if images.ndim == 4 else [images]
    if isinstance(images, Sequence):
        return list(images)
    raise ImageInputError(f"unsupported input type {type(images).__name__}; give an image or a list of images")


def normalize(batch: np.ndarray, spec: InputSpec) -> np.ndarray:
    """``[B, H, W, 3]`` uint8 → ``[B, 3, H, W]`` float32: ``(x / 255 - mean) / std``."""
    x = np.ascontiguousarray(batch.transpose(0, 3, 1, 2)).astype(np.float32)
    x /= np.float32(255.0)
    x -= np.asarray(spec.mean, np.float32)[None, :, None, None]
    x /= np.asarray(spec.std, np.float32)[None, :, None, None]
    return x


def preprocess(images: Any, spec: InputSpec, resize: bool = False, start: int = 0) -> np.ndarray:
    """Images (see :func:`to_uint8`) → the network's ``[B, 3, H, W]`` float32 input (``start``: the position of
    the first image in a longer list, for error messages)."""
    items = as_image_list(images)
    if not items:
        raise ImageInputError("no images given")
    arrays = [to_uint8(item, spec, resize, start + i) for i, item in enumerate(items)]
    return normalize(np.stack(arrays), spec)


def list_images(folder: str | Path) -> list[Path]:
    """Image files of a folder (by suffix), sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: not a folder")
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
