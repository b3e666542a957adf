"""The route (street centrelines with rounded corners) and each run's vehicle trajectory and INS poses.

Coordinates: world = UTM (northing, easting, down); the scene is built in local = world - ``origin`` so that
float32 ray casting keeps sub-millimetre precision. Ground at local z = 0, up is -z. The vehicle frame is the
stereo camera frame (x forward, y right, z down), ``CAMERA_HEIGHT_M`` above the ground.

Corners are rounded with arcs of ``corner_radius_m`` whose curvature is box-filtered over ``TRANSITION_M``
(linear curvature ramps = clothoid transitions), so the yaw rate is continuous and 50 Hz INS samples interpolate
the motion to well under a millimetre on straights and a few millimetres in corners.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from preprocessing.robotcar.constants import (
    EXTRINSICS,
    TEST_SQUARE_HALF_WIDTH,
    TEST_SQUARES,
)
from preprocessing.robotcar.transforms import euler_to_rotation, se3_from_xyzrpy

CAMERA_HEIGHT_M = 2.1
LANE_WIDTH_M = 3.5  # one driving lane; the car keeps left (UK)
TRANSITION_M = 8.0
_DS = 0.05  # arc-length grid (m)
_DT = 0.005  # time grid (s)

# Random-stream identifiers: every random draw of run i comes from np.random.default_rng([seed, i, STREAM]).
STREAM_CONDITIONS, STREAM_TRAJECTORY, STREAM_INS, STREAM_CARS, STREAM_CAMERA, STREAM_LIDAR = 1, 2, 3, 4, 5, 6


def run_rng(seed: int, run_index: int, stream: int, *extra: int) -> np.random.Generator:
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, int(run_index), int(stream), *map(int, extra)])


@dataclasses.dataclass
class Route:
    """Street centreline along the waypoints, corners rounded; arrays on a regular arc-length grid (local)."""

    waypoints: np.ndarray  # (M, 2) UTM northing, easting
    origin: np.ndarray  # (3,) world coordinates of the local origin (northing, easting, down)
    s: np.ndarray  # (K,) arc length
    xy: np.ndarray  # (K, 2) local northing, easting
    heading: np.ndarray  # (K,) yaw (rad, from north toward east)
    curvature: np.ndarray  # (K,) 1/m, positive = turning right (clockwise seen from above)

    @property
    def length(self) -> float:
        return float(self.s[-1])

    def at(self, s) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(xy (N, 2), heading (N,), curvature (N,)) at arc lengths ``s`` (clamped to the route)."""
        s = np.clip(np.asarray(s, float), 0.0, self.length)
        xy = np.column_stack([np.interp(s, self.s, self.xy[:, 0]), np.interp(s, self.s, self.xy[:, 1])])
        return xy, np.interp(s, self.s, self.heading), np.interp(s, self.s, self.curvature)

    @property
    def segments_local(self) -> np.ndarray:
        """(M-1, 2, 2) street segments (start, end) in local northing/easting."""
        w = self.waypoints - self.origin[:2]
        return np.stack([w[:-1], w[1:]], axis=1)


def build_route(waypoints, corner_radius: float, ground_altitude: float) -> Route:
    wp = np.asarray(waypoints, float)
    keep = np.concatenate([[True], np.linalg.norm(np.diff(wp, axis=0), axis=1) > 1e-6])
    wp = wp[keep]
    if len(wp) < 2:
        raise ValueError("the synthetic route needs at least two distinct waypoints")
    origin = np.array([np.round(wp[0, 0]), np.round(wp[0, 1]), -float(ground_altitude)])
    local = wp - origin[:2]
    seg = np.diff(local, axis=0)
    seg_len = np.linalg.norm(seg, axis=1)
    seg_dir = np.arctan2(seg[:, 1], seg[:, 0])
    turns = np.angle(np.exp(1j * (seg_dir[1:] - seg_dir[:-1])))  # signed, + = right turn (NED yaw)
    if np.any(np.abs(turns) > np.radians(170)):
        raise ValueError("the synthetic route has a U-turn (> 170 deg) at a waypoint; add an intermediate waypoint")
    radius = np.full(len(turns), float(corner_radius))
    tangent = radius * np.tan(np.abs(turns) / 2)
    # shrink radii where two corners do not fit on one segment
    for k in range(len(seg_len)):
        before = tangent[k - 1] if k >= 1 else 0.0
        after = tangent[k] if k < len(turns) else 0.0
        need = before + after + 2 * TRANSITION_M
        if need > seg_len[k] and need > 0:
            f = max(seg_len[k] - 2 * TRANSITION_M, 0.2 * seg_len[k]) / (before + after)
            if k >= 1:
                tangent[k - 1] = min(tangent[k - 1], before * f)
            if k < len(turns):
                tangent[k] = min(tangent[k], after * f)
    with np.errstate(divide="ignore", invalid="ignore"):
        radius = np.where(np.abs(turns) > 1e-9, tangent / np.tan(np.abs(turns) / 2), radius)
    # piecewise curvature along the path: straight, arc, straight, arc, ...
    pieces = []  # (length, curvature)
    for k in range(len(seg_len)):
        start_cut = tangent[k - 1] if k >= 1 else 0.0
        end_cut = tangent[k] if k < len(turns) else 0.0
        pieces.append((seg_len[k] - start_cut - end_cut, 0.0))
        if k < len(turns) and abs(turns[k]) > 1e-9:
            pieces.append((radius[k] * abs(turns[k]), np.sign(turns[k]) / radius[k]))
    total = sum(p[0] for p in pieces)
    n = int(np.ceil(total / _DS)) + 1
    s = np.linspace(0.0, total, n)
    ds = s[1] - s[0]
    edges = np.cumsum([0.0] + [p[0] for p in pieces])
    kappa = np.zeros(n)
    # exact box filter of the piecewise-constant curvature: average over [s - L/2, s + L/2]
    half = TRANSITION_M / 2
    for (length, k_val), a in zip(pieces, edges[:-1]):
        if k_val == 0.0:
            continue
        lo, hi = np.clip(s - half, a, a + length), np.clip(s + half, a, a + length)
        kappa += k_val * (hi - lo) / TRANSITION_M
    heading = seg_dir[0] + np.concatenate([[0.0], np.cumsum((kappa[1:] + kappa[:-1]) / 2 * ds)])
    # integrate position with the midpoint heading (second order)
    hm = (heading[1:] + heading[:-1]) / 2
    xy = local[0] + np.concatenate([[[0.0, 0.0]], np.cumsum(np.column_stack([np.cos(hm), np.sin(hm)]) * ds,
                                                            axis=0)])
    return Route(wp, origin, s, xy, heading, kappa)


def inside_test_squares(northing, easting) -> np.ndarray:
    """Boolean mask: strictly inside any PointNetVLAD test square (the benchmark's rule)."""
    n = np.asarray(northing, float)[..., None]
    e = np.asarray(easting, float)[..., None]
    c = np.asarray(TEST_SQUARES)
    return ((np.abs(n - c[:, 0]) < TEST_SQUARE_HALF_WIDTH) & (np.abs(e - c[:, 1]) < TEST_SQUARE_HALF_WIDTH)).any(-1)


def route_test_square_coverage(waypoints, corner_radius: float = 12.0) -> tuple[int, float]:
    """(number of distinct test squares the route enters, fraction of its length inside test squares)."""
    r = build_route(waypoints, corner_radius, 0.0)
    world = r.xy + r.origin[:2]
    c = np.asarray(TEST_SQUARES)
    per_square = (np.abs(world[:, None, 0] - c[:, 0]) < TEST_SQUARE_HALF_WIDTH) & \
                 (np.abs(world[:, None, 1] - c[:, 1]) < TEST_SQUARE_HALF_WIDTH)
    return int(per_square.any(0).sum()), float(per_square.any(1).mean())


def _smooth_series(rng: np.random.Generator, n_terms: int, period_range, amplitude: float):
    """Random sum of sines f(x) with |f| <= amplitude (amplitudes sum to ``amplitude``)."""
    periods = rng.uniform(*period_range, n_terms)
    phases = rng.uniform(0, 2 * np.pi, n_terms)
    w = rng.uniform(0.5, 1.0, n_terms)
    amps = amplitude * w / w.sum()
    k = 2 * np.pi / periods

    def f(x):
        x = np.asarray(x, float)[..., None]
        return (amps * np.sin(k * x + phases)).sum(-1)

    def df(x):
        x = np.asarray(x, float)[..., None]
        return (amps * k * np.cos(k * x + phases)).sum(-1)

    return f, df


class RunTrajectory:
    """True vehicle motion of one run and the noisy INS poses written to ``gps/ins.csv``.

    Times are seconds since the run start (``t_us = start_us + round(t * 1e6)``).
    """

    def __init__(self, route: Route, config, run_index: int):
        self.route = route
        self.config = config
        rng = run_rng(config.seed, run_index, STREAM_TRAJECTORY)
        self.cruise = rng.uniform(config.speed_min_mps, config.speed_max_mps)
        speed_var, _ = _smooth_series(rng, 3, (80.0, 300.0), 0.08)
        self.lateral, self.lateral_ds = _smooth_series(rng, 3, (110.0, 320.0), config.lateral_offset_m)
        self.yaw_jitter, _ = _smooth_series(rng, 3, (1.5, 6.0), np.radians(0.3))
        self.pitch_jitter, _ = _smooth_series(rng, 4, (0.4, 3.0), np.radians(0.25))
        self.roll_jitter, _ = _smooth_series(rng, 4, (0.5, 3.0), np.radians(0.2))
        self.bounce, _ = _smooth_series(rng, 3, (0.3, 1.5), 0.012)
        # speed profile on the arc-length grid: cruise (slowly varying), corner limit, acceleration limits
        s = route.s
        ds = s[1] - s[0]
        lane = -LANE_WIDTH_M / 2
        v = self.cruise * (1.0 + speed_var(s))
        k_eff = np.abs(route.curvature / (1.0 - route.curvature * lane))
        v = np.minimum(v, np.sqrt(config.lateral_accel_mps2 / np.maximum(k_eff, 1e-9)))
        a_acc, a_dec = 1.0, 1.5
        for i in range(1, len(v)):  # forward: acceleration limit
            v[i] = min(v[i], np.sqrt(v[i - 1] ** 2 + 2 * a_acc * ds))
        for i in range(len(v) - 2, -1, -1):  # backward: braking limit
            v[i] = min(v[i], np.sqrt(v[i + 1] ** 2 + 2 * a_dec * ds))
        self.speed_s = v
        t_s = np.concatenate([[0.0], np.cumsum(2 * ds / (v[1:] + v[:-1]))])
        self.duration = float(t_s[-1])
        self._t_grid = np.arange(0.0, self.duration + _DT, _DT)
        self._s_grid = np.interp(self._t_grid, t_s, s)
        self._v_grid = np.interp(self._s_grid, s, v)
        self._a_grid = np.gradient(self._v_grid, _DT)
        # INS noise: smooth random-walk position drift and small smooth angular errors
        irng = run_rng(config.seed, run_index, STREAM_INS)
        knots_t = np.arange(-2.0, self.duration + 4.0, 1.0)
        steps = irng.normal(0.0, 1.0, (len(knots_t), 3))
        walk = np.cumsum(steps, axis=0)
        walk -= walk[0]
        scale = config.ins_drift_m / max(np.sqrt(len(knots_t)), 1.0)
        self._drift_knots = (knots_t, walk * scale * np.array([1.0, 1.0, 0.4]))
        ang_knots_t = np.arange(-4.0, self.duration + 8.0, 2.0)
        self._ang_knots = (ang_knots_t, irng.normal(0.0, np.radians(config.ins_angle_noise_deg),
                                                    (len(ang_knots_t), 3)) * np.array([0.6, 0.6, 1.0]))

    # -- true motion ------------------------------------------------------------------------------------------
    def arc_length(self, t) -> np.ndarray:
        return np.interp(np.asarray(t, float), self._t_grid, self._s_grid)

    def vehicle_xyzrpy_local(self, t) -> np.ndarray:
        """(N, 6) true vehicle pose (local x, y, z, roll, pitch, yaw) at times ``t`` (s)."""
        t = np.atleast_1d(np.asarray(t, float))
        s = self.arc_length(t)
        xy, heading, kappa = self.route.at(s)
        lane = -LANE_WIDTH_M / 2 + self.lateral(s)
        right = np.column_stack([-np.sin(heading), np.cos(heading)])
        pos = xy + lane[:, None] * right
        yaw = heading + np.arctan2(self.lateral_ds(s), 1.0 - kappa * lane) + self.yaw_jitter(t)
        v = np.interp(t, self._t_grid, self._v_grid)
        a_long = np.interp(t, self._t_grid, self._a_grid)
        a_lat = v ** 2 * kappa
        pitch = 0.008 * a_long + self.pitch_jitter(t)
        roll = -0.01 * a_lat + self.roll_jitter(t)
        z = -CAMERA_HEIGHT_M + self.bounce(t)
        return np.column_stack([pos, z, roll, pitch, yaw])

    def vehicle_poses_local(self, t) -> np.ndarray:
        """(N, 4, 4) true T_local_vehicle."""
        return se3_from_xyzrpy(self.vehicle_xyzrpy_local(t))

    def sensor_poses_local(self, t, sensor: str) -> np.ndarray:
        """(N, 4, 4) true T_local_sensor = T_local_vehicle @ SE3(extrinsics[sensor])."""
        return self.vehicle_poses_local(t) @ se3_from_xyzrpy(EXTRINSICS[sensor])

    def true_ins_poses_world(self, t) -> np.ndarray:
        """(N, 4, 4) noise-free T_world_ins (UTM northing, easting, down)."""
        poses = self.sensor_poses_local(t, "ins")
        poses[:, :3, 3] += self.route.origin
        return poses

    # -- INS as written ---------------------------------------------------------------------------------------
    def ins_noise(self, t) -> tuple[np.ndarray, np.ndarray]:
        """(position offset (N, 3) in m, (roll, pitch, yaw) offsets (N, 3) in rad) of the written INS poses."""
        from scipy.interpolate import CubicSpline

        t = np.atleast_1d(np.asarray(t, float))
        pos = CubicSpline(*self._drift_knots, axis=0)(t)
        ang = CubicSpline(*self._ang_knots, axis=0)(t)
        return pos, ang

    def written_ins_xyzrpy_world(self, t) -> np.ndarray:
        """(N, 6) INS poses as written: true T_world_ins with drift on the position and noise on the angles."""
        from preprocessing.robotcar.transforms import xyzrpy_from_se3

        true = self.true_ins_poses_world(t)
        dpos, dang = self.ins_noise(t)
        out = np.empty((len(true), 6))
        out[:, :3] = true[:, :3, 3] + dpos
        noisy_r = true[:, :3, :3] @ euler_to_rotation(dang[:, 0], dang[:, 1], dang[:, 2])
        out[:, 3:] = xyzrpy_from_se3(np.concatenate(
            [np.concatenate([noisy_r, np.zeros((len(true), 3, 1))], 2),
             np.tile([[[0.0, 0.0, 0.0, 1.0]]], (len(true), 1, 1))], 1))[:, 3:]
        return out
