"""Pose interpolation: quaternion slerp for rotation, linear for position.

The SDK's ``interpolate_poses`` computes fractions with integer division (it returns the lower pose for integer
timestamps) and mutates its argument; this module does neither. Requests in a gap of the pose stream longer than
``max_gap_us`` (or outside its time range) are reported as invalid rather than extrapolated.
"""

from __future__ import annotations

import numpy as np
from scipy.spatial.transform import Rotation, Slerp

from preprocessing.robotcar.transforms import euler_to_rotation


def interpolate_poses(pose_timestamps: np.ndarray, xyzrpy: np.ndarray, requested: np.ndarray,
                      max_gap_us: int = 1_000_000) -> tuple[np.ndarray, np.ndarray]:
    """Interpolate SE(3) poses at ``requested`` timestamps.

    Returns ``(poses, valid)``: (M, 4, 4) transforms (identity where invalid) and a boolean mask; a request is
    valid when it lies inside the pose time range and its bracketing samples are at most ``max_gap_us`` apart.
    """
    pose_timestamps = np.asarray(pose_timestamps, np.int64)
    requested = np.asarray(requested, np.int64)
    xyzrpy = np.asarray(xyzrpy, float)
    if len(pose_timestamps) < 2:
        raise ValueError("pose interpolation needs at least two poses")
    upper = np.searchsorted(pose_timestamps, requested, side="left")
    inside = (requested >= pose_timestamps[0]) & (requested <= pose_timestamps[-1])
    upper = np.clip(upper, 1, len(pose_timestamps) - 1)
    lower = upper - 1
    gap = pose_timestamps[upper] - pose_timestamps[lower]
    exact = requested == pose_timestamps[np.clip(np.searchsorted(pose_timestamps, requested), 0,
                                                    len(pose_timestamps) - 1)]
    valid = inside & ((gap <= max_gap_us) | exact)
    poses = np.tile(np.eye(4), (len(requested), 1, 1))
    if not valid.any():
        return poses, valid
    rots = Rotation.from_matrix(euler_to_rotation(xyzrpy[:, 3], xyzrpy[:, 4], xyzrpy[:, 5]))
    slerp = Slerp(pose_timestamps.astype(np.float64), rots)
    req = requested[valid]
    lo, hi = lower[valid], upper[valid]
    frac = (req - pose_timestamps[lo]).astype(np.float64) / (pose_timestamps[hi] - pose_timestamps[lo])
    frac = np.clip(frac, 0.0, 1.0)[:, None]
    poses[valid, :3, 3] = (1.0 - frac) * xyzrpy[lo, :3] + frac * xyzrpy[hi, :3]
    poses[valid, :3, :3] = slerp(req.astype(np.float64)).as_matrix()
    return poses, valid
