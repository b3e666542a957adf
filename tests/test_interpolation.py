"""Pose interpolation: slerp + linear position, without the SDK's integer-division and mutation bugs."""

from __future__ import annotations

import math

import numpy as np
import pytest

from preprocessing.robotcar.interpolation import interpolate_poses
from preprocessing.robotcar.transforms import se3_from_xyzrpy, xyzrpy_from_se3

T0 = 1_418_000_000_000_000


def _qmul(a, b):
    aw, ax, ay, az = a
    bw, bx, by, bz = b
    return (aw * bw - ax * bx - ay * by - az * bz,
            aw * bx + ax * bw + ay * bz - az * by,
            aw * by - ax * bz + ay * bw + az * bx,
            aw * bz + ax * by - ay * bx + az * bw)


def _quat_from_rpy(roll, pitch, yaw):
    """(w, x, y, z) of Rz(yaw) Ry(pitch) Rx(roll)."""
    qz = (math.cos(yaw / 2), 0.0, 0.0, math.sin(yaw / 2))
    qy = (math.cos(pitch / 2), 0.0, math.sin(pitch / 2), 0.0)
    qx = (math.cos(roll / 2), math.sin(roll / 2), 0.0, 0.0)
    return _qmul(_qmul(qz, qy), qx)


def _slerp(q0, q1, f):
    dot = sum(a * b for a, b in zip(q0, q1))
    if dot < 0:  # shortest path
        q1 = tuple(-b for b in q1)
        dot = -dot
    dot = min(dot, 1.0)
    theta = math.acos(dot)
    if theta < 1e-12:
        return q0
    s0 = math.sin((1 - f) * theta) / math.sin(theta)
    s1 = math.sin(f * theta) / math.sin(theta)
    return tuple(s0 * a + s1 * b for a, b in zip(q0, q1))


def _matrix_from_quat(q):
    w, x, y, z = q
    n = math.sqrt(w * w + x * x + y * y + z * z)
    w, x, y, z = w / n, x / n, y / n, z / n
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
        [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
        [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
    ])


def naive_interpolate(ts, xyzrpy, requested):
    """Plain-Python reference: bracketing samples, slerp of the rotation, linear position."""
    out = []
    for t in requested:
        i = max(j for j in range(len(ts)) if ts[j] <= t)
        if ts[i] == t:
            j, f = i, 0.0
        else:
            j = i + 1
            f = (t - ts[i]) / (ts[j] - ts[i])
        q = _slerp(_quat_from_rpy(*xyzrpy[i][3:]), _quat_from_rpy(*xyzrpy[j][3:]), f)
        T = np.eye(4)
        T[:3, :3] = _matrix_from_quat(q)
        T[:3, 3] = [(1 - f) * xyzrpy[i][k] + f * xyzrpy[j][k] for k in range(3)]
        out.append(T)
    return np.array(out)


def test_hand_quaternion_helpers_match_se3():
    """Guard the reference itself: the hand-written quaternion gives the same matrix as se3_from_xyzrpy."""
    rng = np.random.default_rng(0)
    for _ in range(20):
        rpy = rng.uniform(-3, 3, 3)
        np.testing.assert_allclose(_matrix_from_quat(_quat_from_rpy(*rpy)),
                                   se3_from_xyzrpy([0, 0, 0, *rpy])[:3, :3], atol=1e-12)


def test_matches_naive_reference_on_random_poses():
    rng = np.random.default_rng(1)
    n = 40
    ts = T0 + np.cumsum(rng.integers(5_000, 40_000, n)).astype(np.int64)
    xyzrpy = np.column_stack([5735000 + rng.normal(size=n) * 50, 620000 + rng.normal(size=n) * 50,
                              rng.normal(size=n), rng.uniform(-0.3, 0.3, n), rng.uniform(-0.3, 0.3, n),
                              rng.uniform(-math.pi, math.pi, n)])
    requested = np.sort(rng.integers(ts[0], ts[-1] + 1, 300)).astype(np.int64)
    requested[:3] = ts[:3]  # some exact samples
    poses, valid = interpolate_poses(ts, xyzrpy, requested, max_gap_us=1_000_000)
    assert poses.shape == (300, 4, 4)
    assert valid.all()
    ref = naive_interpolate(ts.tolist(), xyzrpy.tolist(), requested.tolist())
    np.testing.assert_allclose(poses[:, :3, :3], ref[:, :3, :3], atol=1e-7)
    np.testing.assert_allclose(poses[:, :3, 3], ref[:, :3, 3], atol=1e-6, rtol=0)
    np.testing.assert_array_equal(poses[:, 3], np.tile([0, 0, 0, 1.0], (300, 1)))


def test_integer_timestamps_interpolate_not_floor():
    """The SDK's ``//`` returns the lower pose here; the correct answer is the midpoint."""
    ts = np.array([0, 10], np.int64)
    xyzrpy = np.array([[0.0, 0.0, 0.0, 0.0, 0.0, 0.0], [10.0, 20.0, -4.0, 0.0, 0.0, math.pi / 2]])
    poses, valid = interpolate_poses(ts, xyzrpy, np.array([5]))
    assert valid.tolist() == [True]
    np.testing.assert_allclose(poses[0, :3, 3], [5.0, 10.0, -2.0], atol=1e-12)
    np.testing.assert_allclose(xyzrpy_from_se3(poses[0])[3:], [0.0, 0.0, math.pi / 4], atol=1e-12)
    # quarter way
    poses, _ = interpolate_poses(ts, xyzrpy, np.array([2, 8]))
    np.testing.assert_allclose(xyzrpy_from_se3(poses[0])[5], 0.2 * math.pi / 2, atol=1e-12)
    np.testing.assert_allclose(poses[1, :3, 3], [8.0, 16.0, -3.2], atol=1e-12)


def test_slerp_takes_short_way_across_pi():
    ts = np.array([T0, T0 + 100], np.int64)
    xyzrpy = np.array([[0, 0, 0, 0, 0, math.radians(170)], [0, 0, 0, 0, 0, math.radians(-170)]], float)
    poses, _ = interpolate_poses(ts, xyzrpy, np.array([T0 + 50]))
    assert abs(xyzrpy_from_se3(poses[0])[5]) == pytest.approx(math.pi, abs=1e-9)


def test_exact_samples_return_the_sample():
    rng = np.random.default_rng(2)
    ts = T0 + np.arange(10, dtype=np.int64) * 20_000
    xyzrpy = np.column_stack([rng.normal(size=(10, 3)) * 100, rng.uniform(-1, 1, (10, 3))])
    poses, valid = interpolate_poses(ts, xyzrpy, ts)
    assert valid.all()
    np.testing.assert_allclose(poses, se3_from_xyzrpy(xyzrpy), atol=1e-9)


def test_outside_range_and_gaps_are_invalid():
    ts = np.array([1000, 2000, 3000, 10_000, 11_000], np.int64)
    xyzrpy = np.zeros((5, 6))
    xyzrpy[:, 0] = [0, 1, 2, 3, 4]
    req = np.array([999, 1000, 1500, 3000, 3001, 6500, 9999, 10_000, 10_500, 11_000, 11_001, 0], np.int64)
    poses, valid = interpolate_poses(ts, xyzrpy, req, max_gap_us=1000)
    assert valid.tolist() == [False, True, True, True, False, False, False, True, True, True, False, False]
    # invalid requests come back as identity
    np.testing.assert_array_equal(poses[~valid], np.tile(np.eye(4), (int((~valid).sum()), 1, 1)))
    np.testing.assert_allclose(poses[valid, 0, 3], [0.0, 0.5, 2.0, 3.0, 3.5, 4.0])
    # a gap exactly max_gap_us long is still valid (<=), one microsecond more is not
    _, v = interpolate_poses(ts, xyzrpy, np.array([6500]), max_gap_us=7000)
    assert v.tolist() == [True]
    _, v = interpolate_poses(ts, xyzrpy, np.array([6500]), max_gap_us=6999)
    assert v.tolist() == [False]


def test_all_invalid_and_too_few_poses():
    ts = np.array([100, 200], np.int64)
    poses, valid = interpolate_poses(ts, np.zeros((2, 6)), np.array([0, 300]))
    assert not valid.any() and poses.shape == (2, 4, 4)
    with pytest.raises(ValueError):
        interpolate_poses(ts[:1], np.zeros((1, 6)), np.array([100]))


def test_callers_arrays_not_mutated():
    rng = np.random.default_rng(3)
    ts = T0 + np.arange(6, dtype=np.int64) * 10_000
    xyzrpy = rng.normal(size=(6, 6))
    req_list = [int(T0 + 5_000), int(T0 + 25_000)]
    ts_copy, xyz_copy, req_copy = ts.copy(), xyzrpy.copy(), list(req_list)
    req_arr = np.array(req_list, np.int64)
    interpolate_poses(ts, xyzrpy, req_list)
    interpolate_poses(ts, xyzrpy, req_arr)
    assert req_list == req_copy
    np.testing.assert_array_equal(req_arr, req_copy)
    np.testing.assert_array_equal(ts, ts_copy)
    np.testing.assert_array_equal(xyzrpy, xyz_copy)
