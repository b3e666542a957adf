"""Training-free baselines of both modalities on the very rows and sets a report evaluates its models on.

Every evaluation report carries them (``crossmodal.baselines.handcrafted``: image ``tiny_image`` and ``hog``,
LiDAR ``bev_height``), so a learned model is always read against what needs no training. They are computed
exactly as ``scripts/dataset_difficulty.py`` computes them (raw RGB from the image file, the raw submap).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from .protocol import pnv_evaluate

log = logging.getLogger(__name__)

MODALITIES = ("image", "lidar")


def _descriptors(fn: Callable[[np.ndarray], np.ndarray], load: Callable[[int], np.ndarray], rows: np.ndarray,
                 ) -> np.ndarray:
    return np.stack([fn(load(int(i))) for i in rows]) if len(rows) else np.zeros((0, 1))


def baseline_descriptors(ds: Any, rows: Sequence[int], modalities: Sequence[str] = MODALITIES,
                         ) -> tuple[dict[str, tuple[str, np.ndarray]], dict[str, str]]:
    """``{name: (modality, descriptors of rows)}`` and ``{modality: reason}`` for what was skipped.

    ``ds`` is a :class:`~crossmodal.data.dataset.PairedPlaceDataset` (its ``image_paths`` / ``cloud_paths``);
    a modality whose file is missing for some row is skipped whole (the baseline must cover the same rows as the
    models), and no file of a skipped modality is opened."""
    from crossmodal.baselines.handcrafted import CLOUD_DESCRIPTORS, IMAGE_DESCRIPTORS

    rows = np.asarray(rows, dtype=np.int64)
    out: dict[str, tuple[str, np.ndarray]] = {}
    skipped: dict[str, str] = {}
    for modality in modalities:
        if modality not in MODALITIES:
            raise ValueError(f"baseline modality must be one of {MODALITIES}, got {modality!r}")
        paths = ds.image_paths if modality == "image" else ds.cloud_paths
        missing = sum(1 for i in rows if paths[int(i)] is None or not os.path.isfile(paths[int(i)]))
        if missing:
            skipped[modality] = f"{missing} of {len(rows)} evaluated rows have no {modality} file"
            log.warning("training-free %s baselines skipped: %s", modality, skipped[modality])
            continue
        if modality == "image":
            fns, load = IMAGE_DESCRIPTORS, lambda i: np.asarray(ds.load_image(i))
        else:
            fns, load = CLOUD_DESCRIPTORS, lambda i: ds.load_cloud(i).numpy()
        for name, fn in fns.items():
            out[name] = (modality, _descriptors(fn, load, rows))
    return out, skipped


def evaluate_baselines(ds: Any, sets: Any, metric: str = "euclidean", num_neighbors: int = 25,
                       modalities: Sequence[str] = MODALITIES) -> dict[str, Any]:
    """Recall of each training-free descriptor on ``sets`` (database / query rows per run of ``ds``, as the models
    were evaluated): ``{"descriptors": {name: {modality, r1, r5, r10, r1p, dim}}, "skipped": {modality: reason}}``.
    """
    rows = np.unique(np.concatenate([*map(np.asarray, sets.database_rows), *map(np.asarray, sets.query_rows)]))
    desc, skipped = baseline_descriptors(ds, rows, modalities)
    position = {int(r): k for k, r in enumerate(rows)}

    def pick(d: np.ndarray, rs: np.ndarray) -> np.ndarray:
        return d[[position[int(r)] for r in rs]] if len(rs) else d[:0]

    results: dict[str, Any] = {}
    for name, (modality, d) in desc.items():
        ev = pnv_evaluate([pick(d, r) for r in sets.database_rows], [pick(d, r) for r in sets.query_rows],
                          sets.query_sets, num_neighbors, metric, "flat", 1, False)
        r = ev.recall
        results[name] = {"modality": modality, "r1": r.at(1), "r5": r.at(5), "r10": r.at(10),
                         "r1p": float(r.recall_one_percent), "dim": int(d.shape[1])}
    return {"descriptors": results, "skipped": skipped}


def best_baselines(baselines: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The best descriptor (test R@1) per modality: ``{modality: {name, r1, ...}}``."""
    best: dict[str, dict[str, Any]] = {}
    for name, b in (baselines.get("descriptors") or {}).items():
        if b["modality"] not in best or b["r1"] > best[b["modality"]]["r1"]:
            best[b["modality"]] = {"name": name, **b}
    return best
