#!/usr/bin/env python
"""How hard is a preprocessed dataset for each modality? Training-free descriptors on the evaluation sets.

    python scripts/dataset_difficulty.py data/synthetic-default

Prints Recall@1 / Recall@1% (PointNetVLAD protocol, mean over ordered run pairs) of image descriptors
(tiny image, HOG) and a LiDAR descriptor (bird's-eye height grid). On the real Oxford RobotCar, LiDAR
descriptors beat image ones across runs; the synthetic RobotCar is built to behave the same way.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np


def main() -> None:
    import cv2

    from crossmodal.baselines.handcrafted import CLOUD_DESCRIPTORS, IMAGE_DESCRIPTORS
    from crossmodal.evaluation.protocol import pnv_recall
    from preprocessing.manifest import read_manifest
    from preprocessing.pipeline import PICKLES
    from preprocessing.upstream import load_pickle

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dataset", type=Path, help="preprocessing output folder (holding manifest.parquet)")
    ap.add_argument("--metric", default="euclidean", choices=["euclidean", "cosine"])
    args = ap.parse_args()

    table, meta = read_manifest(args.dataset)
    bench, images = Path(meta["benchmark_root"]), Path(meta["image_root"])
    queries = load_pickle(bench / PICKLES["eval_query"])
    ev = table[table["submap_set"] == "20m"]
    runs = sorted(ev["run"].unique())
    rows = {r: ev[ev["run"] == r].sort_values("tuple_id") for r in runs}

    def descriptors(fn, load):
        db = [np.stack([fn(load(r)) for _, r in rows[run].iterrows()]) for run in runs]
        qs = [d[rows[run]["is_query"].to_numpy()] for d, run in zip(db, runs)]
        return db, qs

    def load_image(r):
        return cv2.cvtColor(cv2.imread(str(images / r["image"])), cv2.COLOR_BGR2RGB)

    def load_cloud(r):
        return np.fromfile(bench / r["cloud"], dtype=np.float64).reshape(-1, 3)

    print(f"{len(runs)} runs, {len(ev)} database entries, {int(ev['is_query'].sum())} queries; metric {args.metric}")
    print("| modality | descriptor | Recall@1 | Recall@1% |\n|---|---|---:|---:|")
    for modality, table_fns, load in (("image", IMAGE_DESCRIPTORS, load_image),
                                      ("lidar", CLOUD_DESCRIPTORS, load_cloud)):
        for name, fn in table_fns.items():
            db, qs = descriptors(fn, load)
            res = pnv_recall(db, qs, queries, metric=args.metric)
            print(f"| {modality} | {name} | {res.recall_at_1:.1f} | {res.recall_one_percent:.1f} |")


if __name__ == "__main__":
    main()
