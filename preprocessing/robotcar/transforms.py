"""SE(3) helpers in the RobotCar convention: ``x y z roll pitch yaw`` with R = Rz(yaw) Ry(pitch) Rx(roll)."""

from __future__ import annotations

import numpy as np
from scipy.spatial.transform import Rotation


def euler_to_rotation(roll, pitch, yaw) -> np.ndarray:
    """Rotation matrices ``Rz(yaw) @ Ry(pitch) @ Rx(roll)``; broadcasts over array inputs -> (..., 3, 3)."""
    angles = np.stack(np.broadcast_arrays(np.asarray(yaw, float), np.asarray(pitch, float),
                                          np.asarray(roll, float)), axis=-1)
    flat = angles.reshape(-1, 3)
    mats = Rotation.from_euler("ZYX", flat).as_matrix()
    return mats.reshape(angles.shape[:-1] + (3, 3))


def rotation_to_euler(rotation: np.ndarray) -> np.ndarray:
    """Inverse of :func:`euler_to_rotation`: (..., 3, 3) -> (..., 3) as (roll, pitch, yaw)."""
    rotation = np.asarray(rotation, float)
    ypr = Rotation.from_matrix(rotation.reshape(-1, 3, 3)).as_euler("ZYX")
    return ypr[:, ::-1].reshape(rotation.shape[:-2] + (3,))


def se3_from_xyzrpy(xyzrpy) -> np.ndarray:
    """4x4 (or (..., 4, 4)) homogeneous transform from ``[x, y, z, roll, pitch, yaw]`` (..., 6)."""
    v = np.asarray(xyzrpy, float)
    if v.shape[-1] != 6:
        raise ValueError(f"expected 6 values (x y z roll pitch yaw), got shape {v.shape}")
    out = np.zeros(v.shape[:-1] + (4, 4))
    out[..., :3, :3] = euler_to_rotation(v[..., 3], v[..., 4], v[..., 5])
    out[..., :3, 3] = v[..., :3]
    out[..., 3, 3] = 1.0
    return out


def xyzrpy_from_se3(transform: np.ndarray) -> np.ndarray:
    """Inverse of :func:`se3_from_xyzrpy`."""
    transform = np.asarray(transform, float)
    return np.concatenate([transform[..., :3, 3], rotation_to_euler(transform[..., :3, :3])], axis=-1)


def invert_se3(transform: np.ndarray) -> np.ndarray:
    """Inverse of rigid transform(s) (..., 4, 4) without a general matrix inverse."""
    transform = np.asarray(transform, float)
    out = np.zeros_like(transform)
    rot_t = np.swapaxes(transform[..., :3, :3], -1, -2)
    out[..., :3, :3] = rot_t
    out[..., :3, 3] = -np.einsum("...ij,...j->...i", rot_t, transform[..., :3, 3])
    out[..., 3, 3] = 1.0
    return out


def transform_points(transform: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Apply a 4x4 transform to (N, 3) points."""
    points = np.asarray(points, float)
    return points @ transform[:3, :3].T + transform[:3, 3]
