"""Data loading for training and evaluation on the preprocessing manifest (dataset, augmentations, batch
sampler, collation, loaders)."""

from .augment import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ColorJitter,
    Compose,
    JitterPoints,
    RandomErasing,
    RandomFlip,
    RandomRotationZ,
    RandomTransform,
    RandomTranslation,
    RemoveRandomBlock,
    RemoveRandomPoints,
    ResizeIfNeeded,
    call_transform,
    cloud_train_transform,
    image_eval_transform,
    image_train_transform,
)
from .collate import PlaceCollate
from .datamodule import PlaceDataModule
from .dataset import CorruptCloudError, CorruptImageError, PairedPlaceDataset, PlaceTuples, item_generators
from .sampler import PositivePairBatchSampler

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ColorJitter",
    "Compose",
    "CorruptCloudError",
    "CorruptImageError",
    "JitterPoints",
    "PairedPlaceDataset",
    "PlaceCollate",
    "PlaceDataModule",
    "PlaceTuples",
    "PositivePairBatchSampler",
    "RandomErasing",
    "RandomFlip",
    "RandomRotationZ",
    "RandomTransform",
    "RandomTranslation",
    "RemoveRandomBlock",
    "RemoveRandomPoints",
    "ResizeIfNeeded",
    "call_transform",
    "cloud_train_transform",
    "image_eval_transform",
    "image_train_transform",
    "item_generators",
]
