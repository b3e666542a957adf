"""Loaders for training, validation and evaluation from one config (``configs/data/default.yaml``).

``PlaceDataModule(root, ...)`` is cheap to build (Hydra-instantiable without data present): the manifest is read
when a dataset or loader is first asked for. Training loader: augmented dataset + :class:`PositivePairBatchSampler`
+ :class:`PlaceCollate` with masks. Validation / test / evaluation loaders: no augmentation, plain sequential
order (no sampler), masks only where the split has tuples (``test``; ``val`` rows carry none in the manifest).

Per epoch call :meth:`PlaceDataModule.set_epoch` (sampler order and augmentation draws). Keep
``persistent_workers`` off when augmenting: persistent workers keep the dataset copy of the first epoch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from torch.utils.data import DataLoader

from crossmodal.config import to_plain

from .augment import cloud_train_transform, image_eval_transform, image_train_transform
from .collate import PlaceCollate
from .dataset import PairedPlaceDataset, check_place_subset
from .sampler import PositivePairBatchSampler


class PlaceDataModule:
    """Datasets and DataLoaders of one preprocessed dataset.

    Args:
        root: preprocessing output folder (holding ``manifest.parquet``).
        modalities: what the items carry (``["image", "cloud"]`` teacher, ``["image"]`` student).
        require: modalities a row must have (default ``modalities``; ``["image", "cloud"]`` keeps a student's rows
            identical to its teacher's).
        batch_size: training batch size (even: pairs of positives); ``eval_batch_size`` for the other loaders.
        num_workers, pin_memory, persistent_workers: DataLoader settings.
        quantization_size: cloud voxel size (collate).
        image_size: ``[H, W]`` to resize to, or ``None`` to keep the files' size (320×240 from preprocessing).
        augment: augment the training split (image and cloud training transforms).
        image_augment, cloud_augment: keyword overrides of :func:`image_train_transform` /
            :func:`cloud_train_transform` (e.g. ``{"block_p": 0.0}``).
        seed: sampler order and augmentation draws.
        drop_last: drop the last partial training batch.
        validate_clouds: read every cloud at construction and drop non-finite ones.
        place_fraction, place_cell_m: train on the rows of a seeded fraction of the ``place_cell_m`` cells only
            (fewer distinct places; validation and test untouched): for benchmark-size studies.
    """

    def __init__(self, root: str | Path, modalities: Sequence[str] = ("image", "cloud"),
                 require: Sequence[str] | None = None, batch_size: int = 128, eval_batch_size: int = 64,
                 num_workers: int = 2, quantization_size: float = 0.01, image_size: Sequence[int] | None = None,
                 augment: bool = True, image_augment: Mapping[str, Any] | None = None,
                 cloud_augment: Mapping[str, Any] | None = None, seed: int = 0, drop_last: bool = False,
                 pin_memory: bool = False, persistent_workers: bool = False, validate_clouds: bool = False,
                 place_fraction: float = 1.0, place_cell_m: float = 100.0):
        self.root = Path(root)
        self.modalities = tuple(to_plain(modalities))
        self.require = None if require is None else tuple(to_plain(require))
        self.batch_size = int(batch_size)
        self.eval_batch_size = int(eval_batch_size)
        self.num_workers = int(num_workers)
        self.quantization_size = float(quantization_size)
        image_size = to_plain(image_size)
        self.image_size = None if image_size is None else (int(image_size[0]), int(image_size[1]))
        self.augment = bool(augment)
        self.image_augment = dict(to_plain(image_augment) or {})
        self.cloud_augment = dict(to_plain(cloud_augment) or {})
        self.seed = int(seed)
        self.drop_last = bool(drop_last)
        self.pin_memory = bool(pin_memory)
        self.persistent_workers = bool(persistent_workers)
        self.validate_clouds = bool(validate_clouds)
        self.place_fraction, self.place_cell_m = float(place_fraction), float(place_cell_m)
        check_place_subset(self.place_fraction, self.place_cell_m)  # rejected before any data is read
        from .sampler import MIN_BATCH_SIZE

        if self.batch_size < MIN_BATCH_SIZE or self.batch_size % 2:
            raise ValueError(f"data.batch_size must be even and at least {MIN_BATCH_SIZE} (pairs of positives from "
                             f"two places at least), got {self.batch_size}")
        if self.eval_batch_size < 1 or self.num_workers < 0:
            raise ValueError(f"data.eval_batch_size must be >= 1 and data.num_workers >= 0, got "
                             f"{self.eval_batch_size} and {self.num_workers}")
        self._datasets: dict[tuple[str, bool], PairedPlaceDataset] = {}
        self._train_loader: DataLoader | None = None

    # ------------------------------------------------------------------------------------------------------
    def dataset(self, split: str, augment: bool | None = None) -> PairedPlaceDataset:
        """The dataset of ``split`` (cached); augmented by default only for ``train``."""
        augment = (self.augment and split == "train") if augment is None else bool(augment)
        key = (split, augment)
        if key not in self._datasets:
            if augment:
                image_tf = image_train_transform(self.image_size, **self.image_augment)
                cloud_tf = cloud_train_transform(**self.cloud_augment)
            else:
                image_tf, cloud_tf = image_eval_transform(self.image_size), None
            subsample = split == "train" and self.place_fraction < 1.0
            self._datasets[key] = PairedPlaceDataset(self.root, split, self.modalities, image_tf, cloud_tf,
                                                     require=self.require, validate_clouds=self.validate_clouds,
                                                     seed=self.seed,
                                                     place_fraction=self.place_fraction if subsample else 1.0,
                                                     place_cell_m=self.place_cell_m)
        return self._datasets[key]

    def _loader_kwargs(self) -> dict[str, Any]:
        return {"num_workers": self.num_workers, "pin_memory": self.pin_memory,
                "persistent_workers": self.persistent_workers and self.num_workers > 0}

    def train_loader(self, num_replicas: int | None = None, rank: int | None = None,
                     partition: str = "batches") -> DataLoader:
        """Training loader: batches of mutual-positive pairs with masks; ``loader.batch_sampler`` is the
        :class:`PositivePairBatchSampler` (batch expansion: ``loader.batch_sampler.expand_batch(...)``).
        ``num_replicas`` / ``rank`` / ``partition``: the DDP partition (``"shards"``: this rank's share of every
        global batch of ``batch_size``; the masks then cover the shard only)."""
        ds = self.dataset("train")
        sampler = PositivePairBatchSampler(ds.tuples, self.batch_size, seed=self.seed, drop_last=self.drop_last,
                                           num_replicas=num_replicas, rank=rank, partition=partition)
        self._train_loader = DataLoader(ds, batch_sampler=sampler,
                                        collate_fn=PlaceCollate(self.quantization_size, ds.tuples),
                                        **self._loader_kwargs())
        return self._train_loader

    def eval_loader(self, split: str = "eval", masks: bool | None = None) -> DataLoader:
        """Sequential, unaugmented loader over ``split`` (dataset order = manifest order); masks by default when
        the split has tuples (``train`` / ``test``)."""
        ds = self.dataset(split, augment=False)
        if masks is None:
            masks = split in ("train", "test")
        return DataLoader(ds, batch_size=self.eval_batch_size, shuffle=False, drop_last=False,
                          collate_fn=PlaceCollate(self.quantization_size, ds.tuples if masks else None),
                          **self._loader_kwargs())

    def val_loader(self) -> DataLoader:
        return self.eval_loader("val")

    def test_loader(self) -> DataLoader:
        return self.eval_loader("test")

    def set_epoch(self, epoch: int) -> None:
        """Advance the training sampler and the augmentation draws to ``epoch``."""
        for (split, augmented), ds in self._datasets.items():
            if augmented:
                ds.set_epoch(epoch)
        if self._train_loader is not None:
            self._train_loader.batch_sampler.set_epoch(epoch)

    def __repr__(self) -> str:
        return (f"PlaceDataModule(root={str(self.root)!r}, modalities={self.modalities}, batch_size={self.batch_size}, "
                f"num_workers={self.num_workers}, quantization_size={self.quantization_size}, "
                f"image_size={self.image_size})")
