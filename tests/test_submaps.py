"""Submap recipe: segmentation, movement filter, voxel averaging, normalisation, ground removal, CSVs."""

from __future__ import annotations

import hashlib
import math
from collections import defaultdict

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from preprocessing.errors import InputError
from preprocessing.submaps import (
    SubmapConfig,
    downsample_to,
    keep_moving_scans,
    make_submap,
    normalise,
    read_locations_csv,
    remove_ground,
    segment_submaps,
    submap_seed,
    voxel_average,
    write_locations_csv,
)


def _poses_from(positions, yaws=None):
    n = len(positions)
    out = np.tile(np.eye(4), (n, 1, 1))
    out[:, :3, 3] = positions
    if yaws is not None:
        out[:, :3, :3] = Rotation.from_euler("z", np.asarray(yaws, float)[:, None]).as_matrix()
    return out


# ------------------------------------------------------------------------------------------------------------
# segmentation

def _naive_segments(positions, length, stride):
    travel = [0.0]
    for a, b in zip(positions[:-1], positions[1:]):
        travel.append(travel[-1] + math.sqrt(sum((float(q) - float(p)) ** 2 for p, q in zip(a, b))))
    out, start = [], 0
    while True:
        end = next((i for i in range(start, len(travel)) if travel[i] >= travel[start] + length), None)
        if end is None:
            return out
        out.append((start, end + 1))
        nxt = next((i for i in range(start, len(travel)) if travel[i] > travel[start] + stride), None)
        if nxt is None:
            return out
        start = nxt


def test_segment_submaps_exact_quarter_metre_steps():
    """0.25 m steps make the travel exact: starts every 10.25 m (first scan *more* than 10 m along)."""
    x = np.arange(0, 401) * 0.25  # 0 .. 100 m
    pos = np.column_stack([x, np.zeros_like(x), np.zeros_like(x)])
    segs = segment_submaps(pos, 20.0, 10.0)
    starts = [s for s, _ in segs]
    assert starts == [0, 41, 82, 123, 164, 205, 246, 287]  # 328 would end at 102 m > 100 m: dropped
    assert all(e == s + 81 for s, e in segs)  # 80 steps of 0.25 m = exactly 20 m, end exclusive
    assert segs == _naive_segments(pos.tolist(), 20.0, 10.0)
    # disjoint (eval) set: stride 20 m
    segs20 = segment_submaps(pos, 20.0, 20.0)
    assert [s for s, _ in segs20] == [0, 81, 162, 243]
    assert segs20 == _naive_segments(pos.tolist(), 20.0, 20.0)


def test_segment_submaps_straight_path_02m():
    x = np.arange(0, 501) * 0.2  # 0 .. 100 m at 0.2 m steps
    pos = np.column_stack([x, 2 * np.ones_like(x), np.zeros_like(x)])
    travel = np.abs(x - x[0])
    segs = segment_submaps(pos, 20.0, 10.0)
    assert len(segs) >= 7
    for k, (s, e) in enumerate(segs):
        assert travel[e - 1] - travel[s] >= 20.0 - 1e-9  # each segment spans at least the length
        assert travel[e - 2] - travel[s] < 20.0  # and is the shortest that does
        if k:
            prev = segs[k - 1][0]
            assert travel[s] - travel[prev] > 10.0 - 1e-9  # starts every stride metres
            assert travel[s] - travel[prev] <= 10.0 + 0.2 + 1e-9
    assert travel[-1] - travel[segs[-1][0]] >= 20.0 - 1e-9
    assert travel[-1] - (travel[segs[-1][0]] + 10.2) < 20.0 + 1e-9  # no further complete segment fits
    assert segs == _naive_segments(pos.tolist(), 20.0, 10.0)


def test_segment_submaps_random_paths_vs_naive():
    rng = np.random.default_rng(0)
    for _ in range(20):
        steps = rng.uniform(0, 0.6, (rng.integers(2, 300), 3)) * [1, 1, 0.1]
        pos = np.cumsum(steps, axis=0)
        assert segment_submaps(pos, 20.0, 10.0) == _naive_segments(pos.tolist(), 20.0, 10.0)


def test_segment_submaps_short_paths():
    assert segment_submaps(np.zeros((1, 3)), 20.0, 10.0) == []
    pos = np.column_stack([np.arange(0, 80) * 0.25, np.zeros(80), np.zeros(80)])  # 19.75 m
    assert segment_submaps(pos, 20.0, 10.0) == []


# ------------------------------------------------------------------------------------------------------------
# movement filter

def _naive_keep(poses, min_t, min_deg):
    keep, last = [0], poses[0]
    for i in range(1, len(poses)):
        d = math.dist(poses[i][:3, 3], last[:3, 3])
        ang = math.degrees(Rotation.from_matrix(last[:3, :3].T @ poses[i][:3, :3]).magnitude())
        if d >= min_t or ang >= min_deg:
            keep.append(i)
            last = poses[i]
    return keep


def test_keep_moving_scans_hand_case():
    positions = [[0, 0, 0], [0, 0, 0], [0.01, 0, 0], [0.03, 0, 0], [0.03, 0, 0], [0.03, 0, 0], [0.03, 0, 0],
                 [0.03, 0.03, 0]]
    yaws = [0, 0, 0, 0, math.radians(29), math.radians(31), math.radians(50), math.radians(31)]
    poses = _poses_from(positions, yaws)
    kept = keep_moving_scans(poses, 0.025, 30.0)
    # 1: stationary; 2: 0.01 m; 3: 0.03 m from 0 -> kept; 4: 29 deg -> dropped; 5: 31 deg -> kept (rotation only);
    # 6: 19 deg from 5 -> dropped; 7: moved 0.03 m -> kept
    assert kept.tolist() == [0, 3, 5, 7]
    assert kept.dtype == np.int64
    assert keep_moving_scans(np.zeros((0, 4, 4)), 0.025, 30.0).tolist() == []


def test_keep_moving_scans_stationary_car():
    poses = _poses_from(np.zeros((50, 3)))
    assert keep_moving_scans(poses, 0.025, 30.0).tolist() == [0]


def test_keep_moving_scans_random_vs_naive():
    rng = np.random.default_rng(1)
    n = 400
    steps = rng.choice([0.0, 0.005, 0.02, 0.05], size=(n, 1)) * np.array([[1.0, 0.3, 0.0]])
    yaw_steps = rng.choice([0.0, 0.0, 0.1, 0.3], size=n)
    poses = _poses_from(np.cumsum(steps, axis=0), np.cumsum(yaw_steps))
    kept = keep_moving_scans(poses, 0.025, 30.0)
    ref = _naive_keep(poses, 0.025, 30.0)
    assert kept.tolist() == ref
    assert 20 < len(ref) < n


# ------------------------------------------------------------------------------------------------------------
# voxel averaging / downsampling

def _naive_voxel_average(points, voxel):
    mins = [min(p[k] for p in points) for k in range(3)]
    groups = defaultdict(list)
    for p in points:
        key = tuple(int(math.floor((p[k] - mins[k]) / voxel)) for k in range(3))
        groups[key].append(p)
    return np.array([[sum(p[k] for p in g) / len(g) for k in range(3)] for g in groups.values()])


def _sorted_rows(a):
    a = np.asarray(a)
    return a[np.lexsort(a.T[::-1])]


def test_voxel_average_vs_naive():
    rng = np.random.default_rng(2)
    pts = rng.uniform(-7, 13, (3000, 3)) * [1, 1, 0.3]
    for voxel in (1.001, 2.5, 0.3):
        got = voxel_average(pts, voxel)
        ref = _naive_voxel_average(pts.tolist(), voxel)
        assert got.shape == ref.shape
        np.testing.assert_allclose(_sorted_rows(got), _sorted_rows(ref), atol=1e-9)


def test_voxel_average_hand_case():
    pts = np.array([[0.0, 0.0, 0.0], [0.5, 0.5, 0.5], [1.5, 0.0, 0.0], [1.9, 0.2, 0.0], [0.1, 0.0, 3.0]])
    got = _sorted_rows(voxel_average(pts, 1.0))
    np.testing.assert_allclose(got, [[0.1, 0.0, 3.0], [0.25, 0.25, 0.25], [1.7, 0.1, 0.0]])


def _naive_voxel_count(points, voxel):
    mins = points.min(axis=0)
    return len({tuple(int(math.floor((p[k] - mins[k]) / voxel)) for k in range(3)) for p in points.tolist()})


@pytest.mark.parametrize("n_points,extent", [(12000, 40.0), (9000, 20.0), (3000, 4.0), (100, 50.0)])
def test_downsample_to_exactly_n(n_points, extent):
    rng = np.random.default_rng(n_points)
    pts = rng.uniform(0, extent, (n_points, 3)) * [1, 1, 0.2]
    n = 4096
    out = downsample_to(pts, n, 1.001, 0.025, np.random.default_rng(0))
    assert out.shape == (n, 3)
    # reference voxel size: the first in the sequence start, start+step, ... giving at most n voxels
    voxel = 1.001
    count = _naive_voxel_count(pts, voxel)
    while count > n:
        voxel += 0.025
        count = _naive_voxel_count(pts, voxel)
    np.testing.assert_allclose(_sorted_rows(out[:count]), _sorted_rows(_naive_voxel_average(pts.tolist(), voxel)),
                               atol=1e-9)
    # the rest are random original points, distinct unless more are needed than there are points
    extra = out[count:]
    originals = {tuple(p) for p in pts.tolist()}
    assert all(tuple(p) in originals for p in extra.tolist())
    if n - count <= n_points:
        assert len({tuple(p) for p in extra.tolist()}) == len(extra)


# ------------------------------------------------------------------------------------------------------------
# normalisation

def test_normalise_formula_without_refill():
    rng = np.random.default_rng(3)
    dirs = rng.normal(size=(500, 3))
    pts = 7.0 * dirs / np.linalg.norm(dirs, axis=1, keepdims=True) + [100.0, -50.0, 3.0]  # sphere shell
    out, c = normalise(pts, pts, rng)
    mean = [sum(p[k] for p in pts.tolist()) / len(pts) for k in range(3)]
    np.testing.assert_allclose(c, mean, atol=1e-9)
    d = sum(math.dist(p, mean) for p in pts.tolist()) / len(pts)
    np.testing.assert_allclose(out, -(0.5 / d) * (pts - mean), atol=1e-12)
    assert abs(out.mean(axis=0)).max() < 1e-12
    assert np.linalg.norm(out, axis=1).mean() == pytest.approx(0.5)
    assert np.abs(out).max() <= 1.0


def test_normalise_refills_out_of_range_points():
    rng = np.random.default_rng(4)
    pts = np.vstack([rng.uniform(0, 1, (1000, 3)), [[500.0, 0.0, 0.0], [0.0, -400.0, 0.0]]])
    out, c = normalise(pts.copy(), pts, np.random.default_rng(0))
    assert out.shape == pts.shape
    assert np.abs(out).max() <= 1.0
    s = 0.5 / np.linalg.norm(pts - c, axis=1).mean()
    pool = {tuple(p) for p in (-s * (pts - c)).tolist()}
    assert all(tuple(p) in pool for p in out.tolist())
    np.testing.assert_allclose(out[:1000], -s * (pts[:1000] - c))  # in-range points untouched


def test_normalise_flips_z_up():
    """z is down in the input: a wall's top (most negative z) must end with positive z (up)."""
    rng = np.random.default_rng(5)
    wall = np.column_stack([rng.uniform(0, 6, 2000), np.full(2000, 5.0), rng.uniform(-3.0, 0.0, 2000)])
    out, _ = normalise(wall, wall, rng)
    top = wall[:, 2] < -2.5
    bottom = wall[:, 2] > -0.5
    assert (out[top, 2] > 0).all()
    assert (out[bottom, 2] < 0).all()
    assert np.abs(out).max() <= 1.0


# ------------------------------------------------------------------------------------------------------------
# ground removal and whole submaps

def _scene(rng, n_ground=6000, n_facade=8000, n_clutter=3000):
    """z down: ground plane at z = +1.7 (below the sensor), a facade rising to z = -5 (5 m above)."""
    ground = np.column_stack([rng.uniform(-20, 20, n_ground), rng.uniform(-20, 20, n_ground),
                              1.7 + rng.normal(0, 0.05, n_ground)])
    facade = np.column_stack([rng.uniform(-20, 20, n_facade), 8 + rng.normal(0, 0.02, n_facade),
                              rng.uniform(-5, 1.0, n_facade)])
    clutter = np.column_stack([rng.uniform(-20, 20, n_clutter), rng.uniform(-20, 5, n_clutter),
                               rng.uniform(-3, 0.8, n_clutter)])
    return ground, facade, clutter


def test_remove_ground_keeps_dominant_facade():
    rng = np.random.default_rng(6)
    ground, facade, clutter = _scene(rng)
    assert len(facade) > len(ground)  # the facade is the dominant plane
    pts = np.vstack([ground, facade, clutter])
    kept = remove_ground(pts, 0.5, 200, 30.0, seed=0)
    kept_set = {tuple(p) for p in kept.tolist()}
    assert all(tuple(p) in kept_set for p in facade.tolist())
    assert all(tuple(p) in kept_set for p in clutter.tolist())
    ground_left = sum(tuple(p) in kept_set for p in ground.tolist())
    assert ground_left < 0.05 * len(ground)
    assert len(kept) == len(facade) + len(clutter) + ground_left


def test_remove_ground_without_ground_keeps_facades():
    rng = np.random.default_rng(7)
    _, facade, clutter = _scene(rng, n_ground=0)
    facade2 = facade[:, [1, 0, 2]]  # a second, perpendicular facade
    pts = np.vstack([facade, facade2, clutter])
    kept = remove_ground(pts, 0.5, 200, 30.0, seed=0)
    assert len(kept) >= len(pts) - len(clutter)  # no facade removed; at most clutter that happened to be planar


def test_make_submap_invariants():
    rng = np.random.default_rng(8)
    pts = np.vstack(_scene(rng))
    cfg = SubmapConfig()
    a = make_submap(pts, cfg, seed=11)
    assert a is not None
    cloud, centroid = a
    assert cloud.shape == (4096, 3) and cloud.dtype == np.float64
    assert np.abs(cloud).max() <= 1.0
    assert centroid.shape == (3,)
    b = make_submap(pts.copy(), cfg, seed=11)
    np.testing.assert_array_equal(cloud, b[0])
    np.testing.assert_array_equal(centroid, b[1])
    c = make_submap(pts, cfg, seed=12)
    assert not np.array_equal(cloud, c[0])


def test_make_submap_too_few_points_after_ground_removal():
    rng = np.random.default_rng(9)
    ground, facade, clutter = _scene(rng, n_ground=8000, n_facade=2000, n_clutter=1000)
    assert make_submap(np.vstack([ground, facade, clutter]), SubmapConfig(), seed=0) is None


def test_submap_seed_stable():
    s = submap_seed(0, "2014-05-19-13-20-57", 1400075815702346)
    assert s == int.from_bytes(hashlib.sha256(b"0/2014-05-19-13-20-57/1400075815702346").digest()[:8], "little")
    assert s == 3020894855953989806  # pinned: changing it changes every generated file
    assert submap_seed(0, "2014-05-19-13-20-57", 1400075815702346) == s
    assert submap_seed(1, "2014-05-19-13-20-57", 1400075815702346) != s
    assert submap_seed(0, "2014-05-19-13-20-58", 1400075815702346) != s
    assert submap_seed(0, "2014-05-19-13-20-57", 1400075815702347) != s


# ------------------------------------------------------------------------------------------------------------
# locations CSV

def test_locations_csv_round_trip(tmp_path):
    rows = [(1400075815702346, 5735712.7681239876, 620084.4023814), (1400075817000000, 5735611.0, 620540.27),
            (1400075819999999, 5735237.358209, 620543.0943795)]
    path = tmp_path / "pointcloud_locations_20m_10overlap.csv"
    write_locations_csv(path, rows)
    lines = path.read_text().splitlines()
    assert lines[0] == "timestamp,northing,easting"
    assert lines[1] == "1400075815702346,5735712.768124,620084.402381"
    assert lines[2] == "1400075817000000,5735611.000000,620540.270000"
    for line in lines[1:]:
        for field in line.split(",")[1:]:
            assert len(field.split(".")[1]) == 6
    df = read_locations_csv(path)
    assert list(df.columns) == ["timestamp", "northing", "easting"]
    assert df["timestamp"].dtype == np.int64
    assert df["timestamp"].tolist() == [r[0] for r in rows]
    np.testing.assert_allclose(df[["northing", "easting"]].to_numpy(), [[r[1], r[2]] for r in rows], atol=5e-7)
    empty = tmp_path / "empty.csv"
    write_locations_csv(empty, [])
    assert len(read_locations_csv(empty)) == 0


@pytest.mark.parametrize("text", [
    "a,b,c\n1,2,3\n",  # wrong header
    "timestamp,northing,easting\n1,x,3\n",  # text
    "timestamp,northing,easting\n1.5,2,3\n",  # non-integer timestamp
    "timestamp,northing,easting\n1,2,3\n5,6,7,8\n",  # extra field on a later row
    "timestamp,northing,easting\n,2,3\n",  # missing timestamp
    "",  # empty file
])
def test_locations_csv_malformed(tmp_path, text):
    path = tmp_path / "bad_locations.csv"
    path.write_text(text)
    with pytest.raises(InputError, match="bad_locations.csv"):
        read_locations_csv(path)


@pytest.mark.parametrize("text", [
    "timestamp,northing,easting\n1,2,3\n5,6\n",  # short row -> easting NaN
    "timestamp,northing,easting\n1,2,\n",  # empty field -> NaN
    "timestamp,northing,easting\n1,nan,3\n",  # NaN position
    "timestamp,northing,easting\n1,2,3,4\n5,6,7,8\n",  # extra field on every row -> timestamp := 2, 6
])
def test_locations_csv_malformed_values(tmp_path, text):
    path = tmp_path / "bad_locations.csv"
    path.write_text(text)
    with pytest.raises(InputError, match="bad_locations.csv"):
        read_locations_csv(path)


def test_locations_csv_missing(tmp_path):
    with pytest.raises(InputError, match="nothere.csv"):
        read_locations_csv(tmp_path / "nothere.csv")


def test_remove_ground_on_a_subset_matches_the_full_fit():
    rng = np.random.default_rng(3)
    ground = np.column_stack([rng.uniform(-20, 20, 30000), rng.uniform(-20, 20, 30000), rng.normal(2.0, 0.05, 30000)])
    wall = np.column_stack([rng.uniform(-20, 20, 8000), np.full(8000, 9.0), rng.uniform(-8, 1.0, 8000)])
    pts = np.vstack([ground, wall])
    full = remove_ground(pts, 0.5, 200, 30.0, seed=11, fit_points=0)
    subset = remove_ground(pts, 0.5, 200, 30.0, seed=11, fit_points=2000)
    again = remove_ground(pts, 0.5, 200, 30.0, seed=11, fit_points=2000)
    assert np.array_equal(subset, again)
    # the wall survives in both; they agree on all but a handful of points near the 0.5 m band
    assert abs(len(full) - len(subset)) < 0.01 * len(pts)
    assert (subset[:, 1] == 9.0).sum() == (full[:, 1] == 9.0).sum() == 8000  # the wall lies > 0.5 m above ground
    assert len(subset) - 8000 < 0.001 * len(ground)  # almost every ground point removed
