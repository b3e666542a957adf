"""A tiny hand-made manifest with its clouds and images, for tests of the data and training code.

Independent of the synthetic RobotCar generator: ``write_fake_manifest(folder)`` writes, in a second or less,
``manifest.parquet`` (the columns of :mod:`preprocessing.manifest`), ``benchmark_datasets/oxford/<run>/...`` clouds
(4096×3 float64 in [-1, 1]) and ``images/<run>/<ts>.png`` RGB images, with optional damaged rows.

Layout: ``runs`` runs along one street (northing grows ``spacing_m`` per submap, each run offset by 0.5 m);
per run ``train_per_run`` rows of the ``20m_10overlap`` family, split by position into ``train`` (first 60 %),
``val`` (next 20 %) and ``test`` (the rest), and ``eval_per_run`` rows of the ``20m`` family (split ``eval``,
every other one a query). Positives (≤ ``positive_radius_m``, self excluded) and non-negatives
(≤ ``non_negative_radius_m``, self included) are computed within the ``train`` and within the ``test`` rows,
as the pipeline does.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from preprocessing.manifest import MANIFEST_NAME, write_manifest

CLOUD_POINTS = 4096


@dataclasses.dataclass
class FakeManifest:
    root: Path
    table: pd.DataFrame  #: the manifest as written
    benchmark_root: Path
    image_root: Path


def write_fake_manifest(root: str | Path, runs: int = 3, train_per_run: int = 20, eval_per_run: int = 4,
                        spacing_m: float = 8.0, image_size: tuple[int, int] = (24, 32),
                        positive_radius_m: float = 10.0, non_negative_radius_m: float = 50.0, seed: int = 0,
                        null_image: Sequence[int] = (), absent_image: Sequence[int] = (),
                        short_cloud: Sequence[int] = (), absent_cloud: Sequence[int] = (),
                        nan_cloud: Sequence[int] = ()) -> FakeManifest:
    """Write the fake dataset under ``root``; the damage lists hold ``sample_id`` values (see module doc)."""
    from PIL import Image

    root = Path(root)
    rng = np.random.default_rng(seed)
    bench, images = root / "benchmark_datasets", root / "images"
    rows = []
    for r in range(runs):
        run = f"2015-01-{r + 1:02d}-10-00-00"
        for family, count, folder in (("20m_10overlap", train_per_run, "pointcloud_20m_10overlap"),
                                      ("20m", eval_per_run, "pointcloud_20m")):
            for k in range(count):
                ts = 1_420_000_000_000_000 + r * 10_000_000_000 + (0 if family == "20m_10overlap" else 5_000_000_000) \
                     + k * 1_000_000
                if family == "20m_10overlap":
                    frac = k / count
                    split = "train" if frac < 0.6 else "val" if frac < 0.8 else "test"
                    northing = 5_735_000.0 + k * spacing_m + 0.5 * r
                else:
                    split = "eval"
                    northing = 5_735_000.0 + k * 2 * spacing_m + 0.5 * r
                rows.append({"submap_set": family, "run": run, "timestamp": ts, "northing": northing,
                             "easting": 620_000.0 + 0.3 * r, "split": split,
                             "is_query": bool(split == "val" or (split == "eval" and k % 2 == 0)),
                             "cloud": f"oxford/{run}/{folder}/{ts}.bin", "image": f"{run}/{ts + 20_000}.png",
                             "image_timestamps": np.array([ts + 20_000], np.int64), "image_dt_s": 0.02})
    table = pd.DataFrame(rows)
    table.insert(0, "sample_id", np.arange(len(table), dtype=np.int64))
    table["tuple_id"] = -1
    positives = [np.zeros(0, np.int64) for _ in range(len(table))]
    non_negatives = [np.zeros(0, np.int64) for _ in range(len(table))]
    for split in ("train", "test"):
        idx = np.flatnonzero(((table["submap_set"] == "20m_10overlap") & (table["split"] == split)).to_numpy())
        xy = table.loc[idx, ["northing", "easting"]].to_numpy()
        d = np.linalg.norm(xy[:, None] - xy[None], axis=-1)
        for a, row in enumerate(idx):
            positives[row] = table["sample_id"].to_numpy()[idx[(d[a] <= positive_radius_m) & (np.arange(len(idx)) != a)]]
            non_negatives[row] = table["sample_id"].to_numpy()[idx[d[a] <= non_negative_radius_m]]
        table.loc[idx, "tuple_id"] = np.arange(len(idx))
    for split in ("val", "eval"):
        sub = table[table["split"] == split]
        for run in sub["run"].unique():
            ids = sub.index[sub["run"] == run]
            table.loc[ids, "tuple_id"] = np.arange(len(ids))
    table["positives"] = pd.Series(positives, dtype=object)
    table["non_negatives"] = pd.Series(non_negatives, dtype=object)
    table["tuple_id"] = table["tuple_id"].astype(np.int64)

    h, w = image_size
    for sid, cloud, image in zip(table["sample_id"], table["cloud"], table["image"]):
        pc = rng.uniform(-1.0, 1.0, (CLOUD_POINTS, 3))
        if sid in nan_cloud:
            pc[7, 1] = np.nan
        if sid in short_cloud:
            pc = pc[:-1]
        if sid not in absent_cloud:
            path = bench / cloud
            path.parent.mkdir(parents=True, exist_ok=True)
            pc.astype(np.float64).tofile(path)
        if sid not in absent_image and sid not in null_image:
            path = images / image
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
    table["image"] = [None if sid in null_image else v for sid, v in zip(table["sample_id"], table["image"])]
    meta = {"benchmark_root": "benchmark_datasets", "image_root": "images", "positive_radius_m": positive_radius_m,
            "non_negative_radius_m": non_negative_radius_m, "eval_radius_m": 25.0, "version": "fake"}
    root.mkdir(parents=True, exist_ok=True)
    write_manifest(root / MANIFEST_NAME, table, meta)
    return FakeManifest(root, table, bench, images)
