"""Pair LiDAR submaps with ``stereo/centre`` frames (MinkLoc++'s ``generate_rgb_for_lidar.py`` rule).

For every submap timestamp, the ``k`` nearest camera frames by time, nearest first, ties to the later frame.

Default rule: candidates are the frames of the submap's own run; a frame at exactly the submap timestamp is
allowed; only frames within ``threshold_s`` are kept, and a submap with none is *unpaired* (listed in the report).
``compat=True`` reproduces MinkLoc++ exactly: all runs' frames pooled, a frame with exactly the same timestamp
skipped, the threshold only counted (every submap gets k frames, however far).
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass
class PairingConfig:
    k: int = 20
    threshold_s: float = 1.0
    compat: bool = False
    mode: str = "fast"  #: ``fast`` (OpenCV) or ``sdk`` (pixel parity with MinkLoc++ images)
    downsample: int = 4
    undistort: bool = False

    def image_key(self) -> dict:
        """Settings that change the written images (part of the image folder's stamp)."""
        return {"mode": self.mode, "downsample": self.downsample, "undistort": self.undistort}


def k_closest(sorted_ts: np.ndarray, x: int, k: int, skip_equal: bool) -> list[int]:
    """Indices of the ``k`` entries of ``sorted_ts`` closest to ``x``, nearest first, ties to the later entry.

    With ``skip_equal`` an entry equal to ``x`` is skipped (MinkLoc++'s ``find_k_closest`` skips one such entry).
    """
    n = len(sorted_ts)
    if n == 0 or k <= 0:
        return []
    r = int(np.searchsorted(sorted_ts, x, side="right"))  # first entry > x
    left = r - 1  # last entry <= x
    if skip_equal and left >= 0 and sorted_ts[left] == x:
        left -= 1
    out = []
    while len(out) < k and (left >= 0 or r < n):
        if left >= 0 and (r >= n or x - sorted_ts[left] < sorted_ts[r] - x):
            out.append(left)
            left -= 1
        else:
            out.append(r)
            r += 1
    return out


@dataclasses.dataclass
class PairResult:
    run: str
    lidar_ts: int
    image_ts: list[int]  #: nearest first; empty when unpaired
    image_runs: list[str]
    nearest_dt_s: float  #: |lidar - nearest frame| in seconds (inf when the run has no frames)


def pair_submaps(submaps: list[tuple[str, int]], frames: dict[str, np.ndarray], cfg: PairingConfig) -> list[PairResult]:
    """Pair ``(run, lidar_ts)`` submaps with frames (``frames[run]``: the run's available frame timestamps)."""
    results = []
    if cfg.compat:
        runs = sorted(frames)
        pooled = np.concatenate([np.asarray(frames[r], np.int64) for r in runs]) if runs else np.zeros(0, np.int64)
        owner = np.concatenate([np.full(len(frames[r]), i) for i, r in enumerate(runs)]) if runs else np.zeros(0)
        order = np.argsort(pooled, kind="stable")
        pooled, owner = pooled[order], owner[order]
        for run, ts in submaps:
            idx = k_closest(pooled, ts, cfg.k, skip_equal=True)
            img = [int(pooled[i]) for i in idx]
            dt = abs(img[0] - ts) / 1e6 if img else float("inf")
            results.append(PairResult(run, ts, img, [runs[int(owner[i])] for i in idx], dt))
        return results
    sorted_frames = {r: np.sort(np.asarray(v, np.int64)) for r, v in frames.items()}
    thr = int(round(cfg.threshold_s * 1e6))
    for run, ts in submaps:
        cand = sorted_frames.get(run, np.zeros(0, np.int64))
        idx = k_closest(cand, ts, cfg.k, skip_equal=False)
        img = [int(cand[i]) for i in idx]
        dt = abs(img[0] - ts) / 1e6 if img else float("inf")
        img = [t for t in img if abs(t - ts) <= thr]
        results.append(PairResult(run, ts, img, [run] * len(img), dt))
    return results
