"""Paired camera + LiDAR place-recognition samples over the preprocessing manifest.

``PairedPlaceDataset(root, split)`` selects manifest rows (see :mod:`preprocessing.manifest`) and returns dict
items; the positives / non-negatives the manifest stores as ``sample_id`` lists are mapped to the dataset's own
indices (:class:`PlaceTuples`), which the batch sampler and the collate function use.

Bad data (checked at construction, dropped with one logged warning per reason and counted in ``skipped``):
- ``image_unpaired`` / ``image_missing``: the manifest has no image for the row / the file is absent (only when
  images are required);
- ``image_corrupt``: a PNG whose signature or closing ``IEND`` chunk is missing (a truncated or foreign file; two
  small reads per file, the image is not decoded). An image that passes this check and still fails to decode
  raises :class:`CorruptImageError` naming the file when it is loaded;
- ``cloud_missing`` / ``cloud_size``: the cloud file is absent or not 4096×3 float64 (only when clouds are
  required; a ``stat``, the file is not opened);
- ``cloud_nonfinite``: NaN / inf coordinates; found at construction only with ``validate_clouds=True`` (reads every
  cloud: ≈2 GB for full Oxford, so off by default). Otherwise :meth:`load_cloud` raises :class:`CorruptCloudError`
  naming the file when it meets one.

``require`` (default: the loaded ``modalities``) sets which modalities must be present, so an image-only dataset
can still drop rows whose cloud is bad (a ``stat`` only) and keep the same rows as its teacher's dataset.
An image-only dataset never opens a LiDAR file.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from preprocessing.manifest import read_manifest

from .augment import call_transform, image_eval_transform

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test", "eval", "unused")
MODALITIES = ("image", "cloud")
CLOUD_POINTS = 4096
CLOUD_BYTES = CLOUD_POINTS * 3 * 8
TRAIN_SET, EVAL_SET = "20m_10overlap", "20m"


class CorruptCloudError(ValueError):
    """A LiDAR submap file that cannot be used (wrong size, non-finite coordinates)."""


class CorruptImageError(ValueError):
    """A camera image file that cannot be decoded."""


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"  # the empty IEND chunk every complete PNG ends with


def image_looks_complete(path: str | Path) -> bool:
    """``False`` for a PNG without its signature or its closing ``IEND`` chunk (truncated, or not a PNG); other
    formats are taken as they are (decoding them is the only full check)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(len(PNG_SIGNATURE))
            if str(path).lower().endswith(".png") or head == PNG_SIGNATURE:
                if head != PNG_SIGNATURE:
                    return False
                fh.seek(0, os.SEEK_END)
                if fh.tell() < len(PNG_SIGNATURE) + len(PNG_END):
                    return False
                fh.seek(-len(PNG_END), os.SEEK_END)
                return fh.read() == PNG_END
            return bool(head)
    except OSError:
        return False


class PlaceTuples:
    """Positives and non-negatives of each dataset item as dataset indices, stored as CSR arrays (picklable,
    compact, cheap to ship to DataLoader workers)."""

    def __init__(self, positives: Sequence[np.ndarray], non_negatives: Sequence[np.ndarray]):
        if len(positives) != len(non_negatives):
            raise ValueError("positives and non_negatives must have one entry per item")
        self.pos_ptr, self.pos_idx = _csr(positives)
        self.nn_ptr, self.nn_idx = _csr(non_negatives)

    def __len__(self) -> int:
        return len(self.pos_ptr) - 1

    def positives(self, i: int) -> np.ndarray:
        return self.pos_idx[self.pos_ptr[i]:self.pos_ptr[i + 1]]

    def non_negatives(self, i: int) -> np.ndarray:
        return self.nn_idx[self.nn_ptr[i]:self.nn_ptr[i + 1]]

    def masks(self, indices: Sequence[int] | np.ndarray | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``positives_mask`` and ``negatives_mask`` ``[B, B]`` bool for a batch of dataset indices.

        ``positives_mask[a, b]``: item b is a positive of item a. ``negatives_mask[a, b]``: b is neither a
        non-negative nor a positive of a. The diagonal is false in both; an index repeated in the batch is
        neither positive nor negative of its copy.
        """
        idx = np.asarray(indices, dtype=np.int64)
        b = len(idx)
        pos = np.zeros((b, b), bool)
        nonneg = np.zeros((b, b), bool)
        for a, i in enumerate(idx):
            pos[a] = np.isin(idx, self.positives(i))
            nonneg[a] = np.isin(idx, self.non_negatives(i))
        same = idx[:, None] == idx[None, :]
        pos &= ~same
        neg = ~(nonneg | pos | same)
        return torch.from_numpy(pos), torch.from_numpy(neg)


def _csr(lists: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    sizes = np.fromiter((len(x) for x in lists), dtype=np.int64, count=len(lists))
    ptr = np.zeros(len(lists) + 1, np.int64)
    np.cumsum(sizes, out=ptr[1:])
    idx = np.concatenate([np.asarray(x, np.int64) for x in lists]) if len(lists) else np.zeros(0, np.int64)
    return ptr, idx


def item_generators(seed: int, epoch: int, index: int) -> tuple[torch.Generator, torch.Generator]:
    """Two independent generators (image, cloud) for one item in one epoch, whatever worker loads it."""
    s_img, s_cloud = np.random.SeedSequence([seed, epoch, index]).generate_state(2, dtype=np.uint64)
    return torch.Generator().manual_seed(int(s_img)), torch.Generator().manual_seed(int(s_cloud))


class PairedPlaceDataset(Dataset):
    """Samples of one split of the manifest in ``root`` (the preprocessing output folder).

    Args:
        root: folder holding ``manifest.parquet`` (or the manifest file itself).
        split: ``train`` / ``val`` / ``test`` (training family ``20m_10overlap``) or ``eval`` (the ``20m`` set).
        modalities: what items carry: ``("image", "cloud")``, ``("image",)`` or ``("cloud",)``.
        image_transform: PIL image → tensor; default ImageNet-normalised ``ToTensor`` (:func:`image_eval_transform`).
            Transforms from :mod:`crossmodal.data.augment` get a per-item generator.
        cloud_transform: ``[4096, 3]`` float32 tensor → tensor; default none.
        submap_set: override the submap family (default ``20m`` for ``eval``, ``20m_10overlap`` otherwise).
        require: modalities a row must have to be kept (default ``modalities``).
        validate_clouds: read every cloud at construction and drop non-finite ones (else raise at load time).
        seed: base seed of the per-item augmentation generators (with :meth:`set_epoch`).

    Items: ``image`` [3, H, W] float, ``cloud`` [4096, 3] float32, ``position`` float64 (northing, easting),
    ``sample_id`` (manifest id), ``index`` (row in this dataset), ``run``.
    """

    def __init__(self, root: str | Path, split: str, modalities: Sequence[str] = ("image", "cloud"),
                 image_transform: Callable | None = None, cloud_transform: Callable | None = None,
                 submap_set: str | None = None, require: Sequence[str] | None = None,
                 validate_clouds: bool = False, seed: int = 0, place_fraction: float = 1.0,
                 place_cell_m: float = 100.0):
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        modalities = tuple(modalities)
        bad = [m for m in modalities if m not in MODALITIES]
        if bad or not modalities:
            raise ValueError(f"modalities must be a non-empty subset of {MODALITIES}, got {modalities}")
        require = tuple(modalities if require is None else require)
        if any(m not in MODALITIES for m in require):
            raise ValueError(f"require must be a subset of {MODALITIES}, got {require}")
        self.root = Path(root)
        self.split = split
        self.modalities = modalities
        self.require = require
        self.submap_set = submap_set or (EVAL_SET if split == "eval" else TRAIN_SET)
        self.image_transform = image_transform if image_transform is not None else image_eval_transform()
        self.cloud_transform = cloud_transform
        self.seed = int(seed)
        self.epoch = 0

        table, meta = read_manifest(self.root)
        self.benchmark_root = Path(meta["benchmark_root"])
        self.image_root = Path(meta["image_root"]) if meta.get("image_root") else None
        self.meta = meta
        rows = table[(table["submap_set"] == self.submap_set) & (table["split"] == split)].reset_index(drop=True)
        self.skipped: dict[str, int] = {}
        keep = np.ones(len(rows), bool)
        examples: dict[str, str] = {}

        def drop(mask: np.ndarray, reason: str, paths: Sequence[Any]) -> None:
            mask = mask & keep
            n = int(mask.sum())
            if n:
                self.skipped[reason] = self.skipped.get(reason, 0) + n
                examples.setdefault(reason, str(paths[int(np.flatnonzero(mask)[0])]))
                keep[mask] = False

        if "image" in require:
            images = rows["image"].tolist()
            null = np.array([v is None or (isinstance(v, float) and np.isnan(v)) or v == "" for v in images], bool)
            drop(null, "image_unpaired", [f"{r}/{t} (no paired image)" for r, t in zip(rows["run"],
                                                                                    rows["timestamp"])])
            paths = [None if n else self._image_path(v) for n, v in zip(null, images)]
            absent = np.array([p is not None and not os.path.isfile(p) for p in paths], bool)
            drop(absent, "image_missing", paths)
            complete = np.array([p is None or not k or image_looks_complete(p) for k, p in zip(keep, paths)], bool)
            drop(~complete, "image_corrupt", paths)
        if "cloud" in require:
            paths = [self.benchmark_root / c for c in rows["cloud"]]
            sizes = np.array([_file_size(p) for p in paths], np.int64)
            drop(sizes < 0, "cloud_missing", paths)
            drop((sizes >= 0) & (sizes != CLOUD_BYTES), "cloud_size", paths)
            if validate_clouds:
                finite = np.array([not k or _cloud_is_finite(p) for k, p in zip(keep, paths)], bool)
                drop(~finite, "cloud_nonfinite", paths)
        for reason, n in self.skipped.items():
            log.warning("%s split %r: dropped %d row(s) for %s (e.g. %s)", self.root, split, n, reason,
                        examples[reason])
        self.place_subsampled = 0
        if place_fraction < 1.0:
            subset = place_subset(rows[["northing", "easting"]].to_numpy(np.float64), place_fraction,
                                  place_cell_m, self.seed)
            self.place_subsampled = int((keep & ~subset).sum())
            keep &= subset
            log.info("%s split %r: kept the rows of %.0f %% of the %g m cells (%d rows left out on purpose)",
                     self.root, split, 100 * place_fraction, place_cell_m, self.place_subsampled)

        self.rows = rows[keep].reset_index(drop=True)
        self.sample_ids = self.rows["sample_id"].to_numpy(np.int64)
        self.positions = self.rows[["northing", "easting"]].to_numpy(np.float64)
        self.runs = self.rows["run"].astype(str).tolist()
        self.cloud_paths = [str(self.benchmark_root / c) for c in self.rows["cloud"]]
        self.image_paths = [None if (v is None or (isinstance(v, float) and np.isnan(v)) or v == ""
                                     or self.image_root is None) else self._image_path(v)
                            for v in self.rows["image"]]
        self.index_of = {int(s): i for i, s in enumerate(self.sample_ids)}
        self.tuples = PlaceTuples(self._to_indices(self.rows["positives"]),
                                  self._to_indices(self.rows["non_negatives"]))

    # ------------------------------------------------------------------------------------------------------
    def _image_path(self, rel: str) -> str:
        if self.image_root is None:
            raise ValueError(f"{self.root}: the manifest metadata has no image_root")
        return str(self.image_root / rel)

    def _to_indices(self, column: Sequence[Any]) -> list[np.ndarray]:
        """Per row, the ``sample_id`` list mapped to this dataset's indices (ids not in it dropped), sorted."""
        lists = [np.zeros(0, np.int64) if v is None else np.asarray(v, np.int64).ravel() for v in column]
        if not lists:
            return []
        ptr, flat = _csr(lists)
        order = np.argsort(self.sample_ids, kind="stable")
        sorted_ids = self.sample_ids[order]
        pos = np.searchsorted(sorted_ids, flat)
        pos_c = np.minimum(pos, max(len(sorted_ids) - 1, 0))
        found = (pos < len(sorted_ids)) & (sorted_ids[pos_c] == flat) if len(sorted_ids) else np.zeros(len(flat), bool)
        mapped = np.where(found, order[pos_c] if len(order) else 0, -1)
        return [np.sort(m[m >= 0]) for m in np.split(mapped, ptr[1:-1])]

    def __len__(self) -> int:
        return len(self.sample_ids)

    def positives(self, i: int) -> np.ndarray:
        """Dataset indices of item ``i``'s positives (≤ the positive radius, itself excluded), sorted."""
        return self.tuples.positives(i)

    def non_negatives(self, i: int) -> np.ndarray:
        """Dataset indices of item ``i``'s non-negatives (≤ the non-negative radius, itself included), sorted."""
        return self.tuples.non_negatives(i)

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation draw: items depend on ``(seed, epoch, index)`` only. With DataLoader workers
        call it before iterating (workers copy the dataset when the iteration starts, unless persistent)."""
        self.epoch = int(epoch)

    def load_image(self, i: int):
        from PIL import Image

        path = self.image_paths[i]
        if path is None:
            raise FileNotFoundError(f"sample {self.sample_ids[i]} has no paired image")
        try:
            with Image.open(path) as im:
                return im.convert("RGB")
        except FileNotFoundError:
            raise
        except (OSError, SyntaxError, ValueError) as exc:  # PIL raises all three for damaged files
            raise CorruptImageError(f"{path}: cannot decode the image ({exc}); re-run preprocessing for its run "
                                    f"(python scripts/preprocess_oxford.py ...) or delete the file, which drops "
                                    f"its sample") from exc

    def load_cloud(self, i: int) -> torch.Tensor:
        """The submap as a ``[4096, 3]`` float32 tensor; :class:`CorruptCloudError` naming the file if unusable."""
        path = self.cloud_paths[i]
        pc = np.fromfile(path, dtype=np.float64)
        if pc.size != CLOUD_POINTS * 3:
            raise CorruptCloudError(f"{path}: {pc.size} float64 values, expected {CLOUD_POINTS}x3")
        if not np.isfinite(pc).all():
            raise CorruptCloudError(f"{path}: cloud holds NaN or infinite coordinates; re-run preprocessing for "
                                    f"this run, or build the dataset with validate_clouds=True to drop it")
        return torch.from_numpy(pc.reshape(CLOUD_POINTS, 3).astype(np.float32))

    def __getitem__(self, i: int) -> dict[str, Any]:
        i = int(i)
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(f"index {i} out of range for a dataset of {len(self)}")
        g_img, g_cloud = item_generators(self.seed, self.epoch, i)
        item: dict[str, Any] = {"position": torch.from_numpy(self.positions[i].copy()),
                                "sample_id": int(self.sample_ids[i]), "index": i, "run": self.runs[i]}
        if "image" in self.modalities:
            item["image"] = call_transform(self.image_transform, self.load_image(i), g_img)
        if "cloud" in self.modalities:
            item["cloud"] = call_transform(self.cloud_transform, self.load_cloud(i), g_cloud)
        return item

    def __repr__(self) -> str:
        return (f"PairedPlaceDataset(root={str(self.root)!r}, split={self.split!r}, submap_set={self.submap_set!r}, "
                f"modalities={self.modalities}, items={len(self)}, skipped={self.skipped})")


def check_place_subset(fraction: float, cell_m: float) -> None:
    """``ValueError`` for a ``place_fraction`` outside (0, 1] or a non-positive ``place_cell_m``."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"place_fraction must lie in (0, 1], got {fraction}")
    if cell_m <= 0:
        raise ValueError(f"place_cell_m must be positive, got {cell_m}")


def place_subset(positions: np.ndarray, fraction: float, cell_m: float, seed: int) -> np.ndarray:
    """Rows whose ``cell_m`` square cell (by northing, easting) is in a seeded ``fraction`` of the occupied cells
    (at least one): fewer distinct places, every run of a kept place kept. For studies of benchmark size."""
    check_place_subset(fraction, cell_m)
    cells = np.floor(positions / cell_m).astype(np.int64)
    unique, inverse = np.unique(cells, axis=0, return_inverse=True)
    chosen = np.random.default_rng(seed).permutation(len(unique))[:max(1, round(fraction * len(unique)))]
    return np.isin(inverse.ravel(), chosen)


def _file_size(path: Path) -> int:
    try:
        return os.stat(path).st_size
    except FileNotFoundError:
        return -1


def _cloud_is_finite(path: Path) -> bool:
    return bool(np.isfinite(np.fromfile(path, dtype=np.float64)).all())
