"""PointNetVLAD submaps from raw ``lms_front`` scans and INS poses (``generate_submaps.m``, re-implemented).

For each run: interpolate INS poses at the scan times (slerp), keep scans that moved >= 0.025 m or turned >= 30
degrees since the last kept one, cut 20 m segments every ``stride`` metres, express every point in the frame of
the segment's first pose, remove the ground plane (open3d RANSAC, 0.5 m), voxel-average down to at most 4096
points (voxel 1.001 m, growing by 0.025 m), top up with random points to exactly 4096, normalise into [-1, 1]
with the z flip and write float64 ``.bin`` files plus a ``timestamp,northing,easting`` CSV (centroid of the
submap's points in UTM).

Every random choice is seeded from (seed, run, timestamp), so the same input gives the same files whatever the
number of workers.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from pathlib import Path

import numpy as np

from preprocessing.errors import SkipLog
from preprocessing.io import atomic_write_bytes, atomic_write_text
from preprocessing.robotcar import constants as C
from preprocessing.robotcar.interpolation import interpolate_poses
from preprocessing.robotcar.lidar import scan_points_laser_frame, try_read_lms_scan
from preprocessing.robotcar.transforms import invert_se3

log = logging.getLogger(__name__)


@dataclasses.dataclass
class SubmapConfig:
    """Parameters of the submap recipe; the defaults are PointNetVLAD's."""

    length_m: float = C.SUBMAP_LENGTH_M
    train_stride_m: float = C.TRAIN_STRIDE_M
    eval_stride_m: float = C.EVAL_STRIDE_M
    min_translation_m: float = 0.025
    min_rotation_deg: float = 30.0
    ground_threshold_m: float = 0.5
    ground_iterations: int = 200
    ground_max_tilt_deg: float = 30.0
    #: RANSAC fits the ground on this many random points (0: all); inliers are then taken among all points.
    ground_fit_points: int = 5000
    num_points: int = C.SUBMAP_POINTS
    voxel_start_m: float = 1.001
    voxel_step_m: float = 0.025
    max_ins_gap_s: float = 1.0
    min_range_m: float = 0.1
    seed: int = 0

    def key(self) -> str:
        """Hash of every parameter: part of the resume stamp."""
        return hashlib.sha256(repr(sorted(dataclasses.asdict(self).items())).encode()).hexdigest()[:16]


# ------------------------------------------------------------------------------------------------------------
# Segmentation of a trajectory into submaps

def keep_moving_scans(poses: np.ndarray, min_translation: float, min_rotation_deg: float) -> np.ndarray:
    """Indices of the scans kept by the movement filter (the first scan is always kept)."""
    if len(poses) == 0:
        return np.zeros(0, np.int64)
    keep = [0]
    cos_thr = np.cos(np.deg2rad(min_rotation_deg))
    last = poses[0]
    for i in range(1, len(poses)):
        moved = np.linalg.norm(poses[i, :3, 3] - last[:3, 3]) >= min_translation
        # rotation angle of last^T R_i from its trace
        cos_angle = (np.trace(last[:3, :3].T @ poses[i, :3, :3]) - 1.0) / 2.0
        if moved or cos_angle <= cos_thr:
            keep.append(i)
            last = poses[i]
    return np.asarray(keep, np.int64)


def segment_submaps(positions: np.ndarray, length_m: float, stride_m: float) -> list[tuple[int, int]]:
    """Split a trajectory (kept scans' positions, (N, 3)) into ``[start, end)`` index ranges.

    A submap starts at ``start`` and takes scans until it has travelled ``length_m`` along the path; the next one
    starts at the first scan more than ``stride_m`` along from ``start``. An incomplete final segment is dropped.
    """
    if len(positions) < 2:
        return []
    steps = np.linalg.norm(np.diff(positions, axis=0), axis=1)
    travel = np.concatenate([[0.0], np.cumsum(steps)])
    out = []
    start = 0
    while True:
        end = int(np.searchsorted(travel, travel[start] + length_m, side="left"))
        if end >= len(travel):
            break
        out.append((start, end + 1))
        nxt = int(np.searchsorted(travel, travel[start] + stride_m, side="right"))
        if nxt >= len(travel) or nxt <= start:
            break
        start = nxt
    return out


# ------------------------------------------------------------------------------------------------------------
# Point-cloud processing

def remove_ground(points: np.ndarray, threshold: float, iterations: int, max_tilt_deg: float,
                  seed: int, fit_points: int = 0) -> np.ndarray:
    """Drop the inliers of the dominant near-horizontal plane (open3d RANSAC); returns the kept points.

    The plane is fitted on a seeded random subset of ``fit_points`` points (0: all), then every point within
    ``threshold`` of it is an inlier. A plane tilted more than ``max_tilt_deg`` from horizontal (a facade) is not
    the ground: its points are set aside for the search (not removed) and the search repeats, at most 3 times.
    """
    import open3d as o3d

    rng = np.random.default_rng(seed)
    candidates = np.arange(len(points))
    cos_tilt = np.cos(np.deg2rad(max_tilt_deg))
    for attempt in range(3):
        if len(candidates) < 3:
            break
        fit = candidates
        if 0 < fit_points < len(candidates):
            fit = np.sort(rng.choice(candidates, fit_points, replace=False))
        cloud = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(points[fit]))
        o3d.utility.random.seed(int(seed + attempt) % (2**31))
        # probability=1 disables open3d's early termination, whose outcome depends on OpenMP thread timing: with
        # it, the (pre-drawn, seeded) samples are all tried and the result is reproducible.
        model, _ = cloud.segment_plane(threshold, 3, iterations, probability=1.0)
        model = np.asarray(model, float)
        norm = max(np.linalg.norm(model[:3]), 1e-12)
        distance = np.abs(points[candidates] @ model[:3] + model[3]) / norm
        inliers = candidates[distance <= threshold]
        if abs(model[2]) / norm >= cos_tilt:
            mask = np.ones(len(points), bool)
            mask[inliers] = False
            return points[mask]
        candidates = np.setdiff1d(candidates, inliers, assume_unique=True)
    return points


def voxel_average(points: np.ndarray, voxel: float) -> np.ndarray:
    """Average the points falling in each voxel of a grid anchored at the cloud's minimum corner."""
    idx = np.floor((points - points.min(axis=0)) / voxel).astype(np.int64)
    dims = idx.max(axis=0) + 1
    key = (idx[:, 0] * dims[1] + idx[:, 1]) * dims[2] + idx[:, 2]
    _, inverse, counts = np.unique(key, return_inverse=True, return_counts=True)
    sums = np.zeros((len(counts), 3))
    np.add.at(sums, inverse, points)
    return sums / counts[:, None]


def downsample_to(points: np.ndarray, n: int, voxel_start: float, voxel_step: float,
                  rng: np.random.Generator) -> np.ndarray:
    """Voxel-average with growing voxels until at most ``n`` points, then top up with random originals."""
    voxel = voxel_start
    down = voxel_average(points, voxel)
    while len(down) > n:
        voxel += voxel_step
        down = voxel_average(points, voxel)
    if len(down) < n:
        extra = points[rng.choice(len(points), n - len(down), replace=n - len(down) > len(points))]
        down = np.vstack([down, extra])
    return down


def normalise(points: np.ndarray, originals: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``p' = -s (p - c)`` with c the mean and s = 0.5 / mean distance to c; points falling outside [-1, 1]^3
    are replaced by random in-range transformed ``originals``. Returns (normalised points, c)."""
    c = points.mean(axis=0)
    d = np.linalg.norm(points - c, axis=1).mean()
    s = 0.5 / max(d, 1e-9)
    out = -s * (points - c)
    bad = np.abs(out).max(axis=1) > 1.0
    if bad.any():
        pool = -s * (originals - c)
        pool = pool[np.abs(pool).max(axis=1) <= 1.0]
        if len(pool) == 0:
            pool = out[~bad]
        out[bad] = pool[rng.choice(len(pool), int(bad.sum()), replace=True)]
    return out, c


def submap_seed(seed: int, run: str, timestamp: int) -> int:
    digest = hashlib.sha256(f"{seed}/{run}/{timestamp}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


def make_submap(points_local: np.ndarray, cfg: SubmapConfig, seed: int) -> tuple[np.ndarray, np.ndarray] | None:
    """Ground removal, downsampling and normalisation of one submap (points in the start frame).

    Returns ``(cloud (4096, 3) float64, centroid in the start frame)`` or None when fewer than ``num_points``
    points remain after ground removal.
    """
    rng = np.random.default_rng(seed)
    kept = remove_ground(points_local, cfg.ground_threshold_m, cfg.ground_iterations, cfg.ground_max_tilt_deg,
                         seed, cfg.ground_fit_points)
    if len(kept) < cfg.num_points:
        return None
    down = downsample_to(kept, cfg.num_points, cfg.voxel_start_m, cfg.voxel_step_m, rng)
    cloud, centroid = normalise(down, kept, rng)
    return cloud.astype(np.float64), centroid


# ------------------------------------------------------------------------------------------------------------
# One run

@dataclasses.dataclass
class RunScans:
    """A run's usable laser scans with their INS poses (``T_world_ins`` per scan)."""

    run: str
    folder: Path
    timestamps: np.ndarray
    poses: np.ndarray


def build_run_submaps(scans: RunScans, G_ins_laser: np.ndarray, out_dir: Path, cfg: SubmapConfig,
                      skips: SkipLog, progress=None) -> dict[str, list[tuple[int, float, float]]]:
    """Write both submap sets of one run under ``out_dir`` (``oxford/<run>``); return their locations.

    Returns ``{"train": [(ts, northing, easting), ...], "eval": [...]}``; CSVs are written by the caller's
    :func:`write_locations_csv` so that a run is only marked done once both sets are complete.
    """
    keep = keep_moving_scans(scans.poses, cfg.min_translation_m, cfg.min_rotation_deg)
    ts = scans.timestamps[keep]
    poses = scans.poses[keep]
    cache: dict[int, np.ndarray | None] = {}
    unreadable: set[int] = set()  # remembered across both sets so each bad scan is reported once

    def world_points(i: int) -> np.ndarray | None:
        if i in unreadable:
            return None
        if i not in cache:
            scan = try_read_lms_scan(scans.folder / "lms_front" / f"{ts[i]}.bin", skips)
            if scan is None:
                unreadable.add(i)
                cache[i] = None
            else:
                pts = scan_points_laser_frame(scan, cfg.min_range_m)
                cache[i] = (pts @ (poses[i] @ G_ins_laser).T)[:, :3]
        return cache[i]

    results: dict[str, list[tuple[int, float, float]]] = {}
    for set_name, stride, folder in (("train", cfg.train_stride_m, C.TRAIN_CLOUD_DIR),
                                     ("eval", cfg.eval_stride_m, C.EVAL_CLOUD_DIR)):
        segments = segment_submaps(poses[:, :3, 3], cfg.length_m, stride)
        rows = []
        for start, end in segments:
            for old in [k for k in cache if k < start]:
                del cache[old]
            parts = [p for p in (world_points(i) for i in range(start, end)) if p is not None]
            stamp = int(ts[start])
            path = out_dir / folder / f"{stamp}.bin"
            if not parts:
                skips.add("empty_submap", path, "no readable scans in the segment")
                continue
            world = np.vstack(parts)
            inv_start = invert_se3(poses[start])
            local = world @ inv_start[:3, :3].T + inv_start[:3, 3]
            made = make_submap(local, cfg, submap_seed(cfg.seed, scans.run, stamp))
            if made is None:
                skips.add("too_few_points", path, f"fewer than {cfg.num_points} points after ground removal")
                continue
            cloud, centroid = made
            atomic_write_bytes(path, cloud.astype("<f8").tobytes())
            c_world = poses[start][:3, :3] @ centroid + poses[start][:3, 3]
            rows.append((stamp, float(c_world[0]), float(c_world[1])))
            if progress is not None:
                progress()
        cache.clear()
        results[set_name] = rows
    return results


def load_run_scans(run_folder: Path, ins_timestamps: np.ndarray, ins_xyzrpy: np.ndarray,
                   scan_timestamps: np.ndarray, cfg: SubmapConfig, skips: SkipLog) -> RunScans:
    """Interpolate INS poses at the scan times; scans in INS gaps or outside the INS range are skipped."""
    poses, valid = interpolate_poses(ins_timestamps, ins_xyzrpy, scan_timestamps,
                                     max_gap_us=int(cfg.max_ins_gap_s * 1e6))
    for t in scan_timestamps[~valid].tolist():
        skips.add("no_ins_pose", run_folder / "lms_front" / f"{t}.bin",
                  f"outside the INS time range or in a gap > {cfg.max_ins_gap_s} s")
    return RunScans(run_folder.name, run_folder, scan_timestamps[valid], poses[valid])


def write_locations_csv(path: Path, rows) -> None:
    lines = ["timestamp,northing,easting"] + [f"{int(t)},{n:.6f},{e:.6f}" for t, n, e in rows]
    atomic_write_text(path, "\n".join(lines) + "\n")


def read_locations_csv(path: Path):
    """Read a ``timestamp,northing,easting`` CSV as a DataFrame (timestamp int64); strict about every row."""
    import pandas as pd

    from preprocessing.errors import InputError

    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        raise InputError(f"{path}: locations CSV not found; rebuild the submaps or fix `benchmark_root`") from None
    if not lines or [c.strip() for c in lines[0].split(",")] != ["timestamp", "northing", "easting"]:
        raise InputError(f"{path}: header {lines[0][:80] if lines else ''!r}; expected 'timestamp,northing,easting'")
    ts, north, east = [], [], []
    for lineno, line in enumerate(lines[1:], 2):
        if not line.strip():
            continue
        fields = line.split(",")
        try:
            if len(fields) != 3 or not fields[0].strip().isdigit():
                raise ValueError
            n, e = float(fields[1]), float(fields[2])
            if not (np.isfinite(n) and np.isfinite(e)):
                raise ValueError
        except ValueError:
            raise InputError(f"{path}:{lineno}: malformed row {line[:80]!r}; expected an integer timestamp and finite "
                             f"northing, easting: rebuild the submaps") from None
        ts.append(int(fields[0]))
        north.append(n)
        east.append(e)
    return pd.DataFrame({"timestamp": np.asarray(ts, np.int64), "northing": np.asarray(north, np.float64),
                         "easting": np.asarray(east, np.float64)})
