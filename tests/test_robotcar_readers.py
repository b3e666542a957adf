"""Readers of the raw RobotCar formats on hand-made files, and the SE(3) helpers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from preprocessing.errors import InputError, SkipLog
from preprocessing.robotcar import constants as C
from preprocessing.robotcar.camera import (
    CameraModel,
    camera_model_text,
    identity_lut,
    lut_bytes,
    read_camera_model,
)
from preprocessing.robotcar.extrinsics import (
    format_extrinsics,
    ins_from_laser,
    read_extrinsics,
)
from preprocessing.robotcar.ins import read_ins
from preprocessing.robotcar.lidar import (
    CorruptScan,
    lms_scan_bytes,
    read_lms_scan,
    scan_points_laser_frame,
    try_read_lms_scan,
)
from preprocessing.robotcar.timestamps import (
    existing_frames,
    read_timestamps,
    write_timestamps,
)
from preprocessing.robotcar.transforms import (
    euler_to_rotation,
    invert_se3,
    rotation_to_euler,
    se3_from_xyzrpy,
    transform_points,
    xyzrpy_from_se3,
)

T0 = 1_400_000_000_000_000  # a plausible 16-digit UNIX microsecond timestamp


# ------------------------------------------------------------------------------------------------------------
# timestamps

def test_read_timestamps_skips_malformed_line(tmp_path):
    path = tmp_path / "stereo.timestamps"
    path.write_text(f"{T0} 1\n{T0 + 62500} 1\nnot-a-timestamp 1\n\n{T0 + 125000} 2\n")
    skips = SkipLog()
    ts = read_timestamps(path, skips)
    assert ts.dtype == np.int64
    assert ts.tolist() == [T0, T0 + 62500, T0 + 125000]
    assert skips.counts() == {"malformed_timestamp_line": 1}
    (skip,) = skips.items
    assert skip.path == f"{path}:3"  # file and line number
    assert "not-a-timestamp" in skip.detail


def test_read_timestamps_without_skiplog_and_missing_file(tmp_path):
    path = tmp_path / "lms_front.timestamps"
    path.write_text("garbage\n17 1\n")
    assert read_timestamps(path).tolist() == [17]
    missing = tmp_path / "nope.timestamps"
    with pytest.raises(InputError, match="nope.timestamps"):
        read_timestamps(missing)


def test_write_read_timestamps_round_trip(tmp_path):
    ts = T0 + np.arange(0, 10) * 20_000
    path = tmp_path / "lms_front.timestamps"
    write_timestamps(path, ts, chunk=3)
    lines = path.read_text().splitlines()
    assert lines[0] == f"{T0} 3"
    assert all(len(line.split()[0]) == 16 for line in lines)
    np.testing.assert_array_equal(read_timestamps(path), ts)


def test_existing_frames_tolerates_missing_files(tmp_path):
    folder = tmp_path / "stereo" / "centre"
    folder.mkdir(parents=True)
    listed = np.array([T0, T0 + 1, T0 + 2, T0 + 3, T0 + 4], np.int64)
    for t in (T0, T0 + 2, T0 + 4):
        (folder / f"{t}.png").write_bytes(b"x")
    (folder / f"{T0 + 1}.bin").write_bytes(b"x")  # wrong suffix does not count
    skips = SkipLog()
    got = existing_frames(listed, folder, ".png", skips)
    assert got.tolist() == [T0, T0 + 2, T0 + 4]
    assert skips.counts() == {"missing_file": 2}
    assert sorted(s.path for s in skips.items) == sorted(str(folder / f"{t}.png") for t in (T0 + 1, T0 + 3))
    # a whole chunk (folder) missing: everything listed is absent, nothing raises
    skips2 = SkipLog()
    assert existing_frames(listed, tmp_path / "absent", ".png", skips2).size == 0
    assert skips2.counts() == {"missing_file": 5}


# ------------------------------------------------------------------------------------------------------------
# gps/ins.csv

def _ins_row(t, n=5735000.0, e=620000.0, d=-100.0, roll=0.01, pitch=-0.02, yaw=1.5) -> str:
    return (f"{t},INS_SOLUTION_GOOD,51.76,-1.26,100.0,{n},{e},{d},30U,1.0,2.0,0.0,{roll},{pitch},{yaw}")


def _write_ins(path, rows, header=",".join(C.INS_COLUMNS)):
    path.write_text(header + "\n" + "\n".join(rows) + "\n")


def test_read_ins_values_and_columns(tmp_path):
    path = tmp_path / "ins.csv"
    rows = [_ins_row(T0 + 20_000 * i, n=5735000.0 + i, e=620000.0 + 2 * i, d=-100.0 - i, roll=0.1 * i,
                     pitch=-0.01 * i, yaw=0.3 * i) for i in range(5)]
    _write_ins(path, rows)
    assert len(C.INS_COLUMNS) == 15
    poses = read_ins(path)
    assert len(poses) == 5
    assert poses.timestamps.dtype == np.int64
    assert poses.timestamps.tolist() == [T0 + 20_000 * i for i in range(5)]
    expected = np.array([[5735000.0 + i, 620000.0 + 2 * i, -100.0 - i, 0.1 * i, -0.01 * i, 0.3 * i]
                         for i in range(5)])
    np.testing.assert_array_equal(poses.xyzrpy, expected)
    assert poses.path == str(path)


def test_read_ins_skips_malformed_rows_and_duplicates(tmp_path):
    path = tmp_path / "ins.csv"
    good = [_ins_row(T0 + 20_000 * i, n=float(i)) for i in range(4)]
    rows = [
        good[0],
        "1400000000020000,INS_SOLUTION_GOOD,51.76,-1.26",  # wrong column count
        good[1],
        _ins_row(T0 + 30_000, n="north"),  # text in a numeric column
        _ins_row(T0 + 35_000, yaw="nan"),  # NaN
        _ins_row(T0 + 36_000, e="inf"),  # infinite
        _ins_row("abc"),  # text timestamp
        good[2],
        _ins_row(T0 + 20_000, n=99.0),  # duplicate of good[1]'s timestamp: dropped, first kept
        "",
        good[3],
    ]
    _write_ins(path, rows)
    skips = SkipLog()
    poses = read_ins(path, skips)
    assert poses.timestamps.tolist() == [T0 + 20_000 * i for i in range(4)]
    np.testing.assert_array_equal(poses.xyzrpy[:, 0], [0.0, 1.0, 2.0, 3.0])
    assert skips.counts() == {"duplicate_ins_timestamp": 1, "malformed_ins_row": 5}
    malformed_lines = sorted(int(s.path.rsplit(":", 1)[1]) for s in skips.items if s.kind == "malformed_ins_row")
    assert malformed_lines == [3, 5, 6, 7, 8]  # header is line 1
    assert np.all(np.diff(poses.timestamps) > 0)
    # without a skip log the same rows are dropped silently
    poses2 = read_ins(path)
    np.testing.assert_array_equal(poses2.timestamps, poses.timestamps)


def test_read_ins_out_of_order_rows_are_sorted(tmp_path):
    path = tmp_path / "ins.csv"
    _write_ins(path, [_ins_row(T0 + 40_000, n=2.0), _ins_row(T0, n=0.0), _ins_row(T0 + 20_000, n=1.0)])
    poses = read_ins(path)
    assert poses.timestamps.tolist() == [T0, T0 + 20_000, T0 + 40_000]
    np.testing.assert_array_equal(poses.xyzrpy[:, 0], [0.0, 1.0, 2.0])


@pytest.mark.parametrize("header", [
    "timestamp,northing,easting",  # too few columns
    "time," + ",".join(C.INS_COLUMNS[1:]),  # wrong first column
    "",  # empty file
])
def test_read_ins_wrong_header_names_file(tmp_path, header):
    path = tmp_path / "bad_header_ins.csv"
    _write_ins(path, [_ins_row(T0)], header=header)
    with pytest.raises(InputError, match="bad_header_ins.csv"):
        read_ins(path)


def test_read_ins_missing_file_and_no_usable_rows(tmp_path):
    with pytest.raises(InputError, match="missing_ins.csv"):
        read_ins(tmp_path / "missing_ins.csv")
    path = tmp_path / "useless_ins.csv"
    _write_ins(path, [_ins_row(T0, n="nan"), "1,2,3"])
    skips = SkipLog()
    with pytest.raises(InputError, match="useless_ins.csv"):
        read_ins(path, skips)
    assert skips.counts() == {"malformed_ins_row": 2}
    header_only = tmp_path / "header_only_ins.csv"
    header_only.write_text(",".join(C.INS_COLUMNS) + "\n")
    with pytest.raises(InputError, match="header_only_ins.csv"):
        read_ins(header_only)


# ------------------------------------------------------------------------------------------------------------
# lms_front scans

def test_lms_scan_round_trip_and_layout(tmp_path):
    rng = np.random.default_rng(0)
    xy = rng.normal(size=(C.LMS_POINTS_PER_SCAN, 2)) * 10
    refl = rng.uniform(0, 1000, C.LMS_POINTS_PER_SCAN)
    data = lms_scan_bytes(xy, refl)
    assert len(data) == C.LMS_POINTS_PER_SCAN * 3 * 8
    # point-interleaved little-endian float64: x0 y0 r0 x1 y1 r1 ...
    flat = np.frombuffer(data, "<f8")
    assert flat[0] == xy[0, 0] and flat[1] == xy[0, 1] and flat[2] == refl[0] and flat[3] == xy[1, 0]
    path = tmp_path / f"{T0}.bin"
    path.write_bytes(data)
    scan = read_lms_scan(path)
    assert scan.shape == (C.LMS_POINTS_PER_SCAN, 3)
    np.testing.assert_array_equal(scan[:, :2], xy)
    np.testing.assert_array_equal(scan[:, 2], refl)


@pytest.mark.parametrize("cut", [4, 8, 16, 3 * 8 * 541 - 1])
def test_lms_scan_truncated_raises(tmp_path, cut):
    data = lms_scan_bytes(np.ones((541, 2)), np.ones(541))
    path = tmp_path / f"{T0}_truncated.bin"
    path.write_bytes(data[:-cut])
    with pytest.raises(CorruptScan, match=f"{T0}_truncated.bin"):
        read_lms_scan(path)


def test_lms_scan_empty_and_nan_raise(tmp_path):
    empty = tmp_path / "empty.bin"
    empty.write_bytes(b"")
    with pytest.raises(CorruptScan, match="empty.bin"):
        read_lms_scan(empty)
    xy = np.ones((10, 2))
    xy[3, 1] = np.nan
    nan = tmp_path / "nan_scan.bin"
    nan.write_bytes(lms_scan_bytes(xy, np.ones(10)))
    with pytest.raises(CorruptScan, match="nan_scan.bin"):
        read_lms_scan(nan)
    refl = np.ones(10)
    refl[0] = np.inf
    inf = tmp_path / "inf_scan.bin"
    inf.write_bytes(lms_scan_bytes(np.ones((10, 2)), refl))
    with pytest.raises(CorruptScan, match="inf_scan.bin"):
        read_lms_scan(inf)


def test_try_read_lms_scan_records_skips(tmp_path):
    good = tmp_path / "good.bin"
    good.write_bytes(lms_scan_bytes(np.ones((5, 2)), np.zeros(5)))
    bad = tmp_path / "bad.bin"
    bad.write_bytes(b"\x00" * 20)
    skips = SkipLog()
    assert try_read_lms_scan(good, skips).shape == (5, 3)
    assert try_read_lms_scan(bad, skips) is None
    assert try_read_lms_scan(tmp_path / "missing.bin", skips) is None
    assert skips.counts() == {"corrupt_scan": 1, "unreadable_file": 1}
    by_kind = {s.kind: s.path for s in skips.items}
    assert by_kind["corrupt_scan"] == str(bad)
    assert by_kind["unreadable_file"] == str(tmp_path / "missing.bin")


def test_scan_points_laser_frame_drops_near_zero_ranges():
    scan = np.array([
        [0.0, 0.0, 5.0],  # no echo
        [0.05, 0.05, 1.0],  # range 0.0707 < 0.1
        [0.06, 0.08, 1.0],  # range exactly 0.1: kept (>=)
        [3.0, -4.0, 7.0],
        [-10.0, 0.0, 2.0],
    ])
    pts = scan_points_laser_frame(scan, min_range=0.1)
    expected = [[0.06, 0.08, 0.0, 1.0], [3.0, -4.0, 0.0, 1.0], [-10.0, 0.0, 0.0, 1.0]]
    np.testing.assert_array_equal(pts, expected)
    # naive reference on random scans
    rng = np.random.default_rng(1)
    scan = np.column_stack([rng.uniform(-1, 1, (500, 2)) * rng.choice([0.01, 10.0], (500, 1)), rng.random(500)])
    pts = scan_points_laser_frame(scan, min_range=0.5)
    ref = [[x, y, 0.0, 1.0] for x, y, _ in scan if math.sqrt(x * x + y * y) >= 0.5]
    np.testing.assert_allclose(pts, np.array(ref).reshape(-1, 4))
    assert 0 < len(ref) < 500


# ------------------------------------------------------------------------------------------------------------
# extrinsics

def test_extrinsics_round_trip(tmp_path):
    vals = (1.7589, 0.2268, 1.0411, -0.0437, -1.4572, 0.0356)
    text = format_extrinsics(vals)
    assert text == "1.758900 0.226800 1.041100 -0.043700 -1.457200 0.035600\n"
    (tmp_path / "lms_front.txt").write_text(text)
    np.testing.assert_allclose(read_extrinsics(tmp_path, "lms_front"), se3_from_xyzrpy(vals), atol=1e-12)
    for sensor, v in C.EXTRINSICS.items():
        (tmp_path / f"{sensor}.txt").write_text(format_extrinsics(v))
        np.testing.assert_allclose(read_extrinsics(tmp_path, sensor), read_extrinsics(None, sensor), atol=1e-12)
    # values on several lines / extra whitespace still parse (the SDK splits on whitespace)
    (tmp_path / "ldmrs.txt").write_text("1.5349 0.0090\n1.3777   0.0205 0.0767 -0.0299\n")
    np.testing.assert_allclose(read_extrinsics(tmp_path, "ldmrs"), se3_from_xyzrpy(C.EXTRINSICS["ldmrs"]))


def test_ins_from_laser_is_inv_ins_times_laser(tmp_path):
    ins = se3_from_xyzrpy(C.EXTRINSICS["ins"])
    lms = se3_from_xyzrpy(C.EXTRINSICS["lms_front"])
    np.testing.assert_allclose(ins_from_laser(None), np.linalg.inv(ins) @ lms, atol=1e-12)
    # from files, same result
    for sensor in ("ins", "lms_front"):
        (tmp_path / f"{sensor}.txt").write_text(format_extrinsics(C.EXTRINSICS[sensor]))
    np.testing.assert_allclose(ins_from_laser(tmp_path), np.linalg.inv(ins) @ lms, atol=1e-12)


@pytest.mark.parametrize("content", ["1 2 3 4 5\n", "1 2 3 4 5 6 7\n", "1 2 3 a 5 6\n", ""])
def test_extrinsics_malformed_file(tmp_path, content):
    (tmp_path / "ins.txt").write_text(content)
    with pytest.raises(InputError, match="ins.txt"):
        read_extrinsics(tmp_path, "ins")


def test_extrinsics_missing_file(tmp_path):
    with pytest.raises(InputError, match="stereo.txt"):
        read_extrinsics(tmp_path, "stereo")


def test_published_lms_front_points_down():
    T = read_extrinsics(None, "lms_front")
    roll, pitch, yaw = C.EXTRINSICS["lms_front"][3:]
    assert math.degrees(pitch) == pytest.approx(-83.5, abs=0.05)
    np.testing.assert_allclose(xyzrpy_from_se3(T), C.EXTRINSICS["lms_front"], atol=1e-12)
    x_axis = T[:3, 0]
    assert x_axis[2] > 0.99  # the laser's x axis points mostly down (+z in the NED-like vehicle frame)
    assert abs(x_axis[0]) < 0.12
    # a point 10 m along the laser's x axis lands ~10 m below the sensor
    p = T @ np.array([10.0, 0.0, 0.0, 1.0])
    assert p[2] - T[2, 3] == pytest.approx(10 * x_axis[2])
    assert p[2] > T[2, 3] + 9.9


# ------------------------------------------------------------------------------------------------------------
# camera models

def test_camera_model_round_trip_with_lut(tmp_path):
    w, h = 7, 5
    rng = np.random.default_rng(2)
    lut = identity_lut(w, h) + rng.uniform(-0.5, 0.5, (w * h, 2))
    G = np.array(C.G_CAMERA_IMAGE, float)
    model = CameraModel(*C.STEREO_CENTRE_INTRINSICS, G_camera_image=G, lut=lut, name=C.STEREO_CENTRE_MODEL)
    text = camera_model_text(model)
    assert text.splitlines()[0] == "964.828979 964.828979 643.788025 484.407990"
    assert len(text.splitlines()) == 5
    (tmp_path / f"{C.STEREO_CENTRE_MODEL}.txt").write_text(text)
    (tmp_path / f"{C.STEREO_CENTRE_MODEL}_distortion_lut.bin").write_bytes(lut_bytes(lut))
    got = read_camera_model(tmp_path, C.STEREO_CENTRE_MODEL)
    assert (got.fx, got.fy, got.cx, got.cy) == C.STEREO_CENTRE_INTRINSICS
    np.testing.assert_array_equal(got.G_camera_image, G)
    assert got.lut.shape == (w * h, 2)
    np.testing.assert_array_equal(got.lut, lut)
    assert got.name == C.STEREO_CENTRE_MODEL
    assert read_camera_model(tmp_path, C.STEREO_CENTRE_MODEL, load_lut=False).lut is None
    scaled = got.scaled(0.25)
    assert (scaled.fx, scaled.cx, scaled.cy) == pytest.approx((964.828979 / 4, 643.788025 / 4, 484.407990 / 4))
    assert scaled.lut is None


def test_lut_sdk_layout(tmp_path):
    """The SDK reads the LUT as float64, reshapes to [2, N] and transposes: row 0 is x_src, row 1 is y_src."""
    w, h = 4, 3
    x_src = np.arange(w * h, dtype=np.float64) + 0.25
    y_src = -np.arange(w * h, dtype=np.float64) - 0.5
    raw = np.concatenate([x_src, y_src]).astype("<f8").tobytes()  # [2, N] row-major
    (tmp_path / "cam.txt").write_text("1 2 3 4\n" + "\n".join(" ".join(map(str, r)) for r in np.eye(4)) + "\n")
    (tmp_path / "cam_distortion_lut.bin").write_bytes(raw)
    model = read_camera_model(tmp_path, "cam")
    assert model.lut.shape == (w * h, 2)
    np.testing.assert_array_equal(model.lut[:, 0], x_src)
    np.testing.assert_array_equal(model.lut[:, 1], y_src)
    assert lut_bytes(model.lut) == raw
    # identity LUT: entry y*w + x is (x, y)
    ident = identity_lut(w, h)
    for y in range(h):
        for x in range(w):
            assert tuple(ident[y * w + x]) == (x, y)


@pytest.mark.parametrize("content", ["1 2 3\n" + "1 0 0 0\n" * 4, "1 2 3 4\n" + "1 0 0 0\n" * 3,
                                     "1 2 3 x\n" + "1 0 0 0\n" * 4, "", "1 2 3 4\n1 0 0\n0 1 0 0\n0 0 1 0\n0 0 0 1\n"])
def test_camera_model_malformed(tmp_path, content):
    (tmp_path / "cam.txt").write_text(content)
    with pytest.raises(InputError, match="cam.txt"):
        read_camera_model(tmp_path, "cam")


def test_camera_model_missing_and_odd_lut(tmp_path):
    with pytest.raises(InputError, match="nocam.txt"):
        read_camera_model(tmp_path, "nocam")
    (tmp_path / "cam.txt").write_text("1 2 3 4\n" + "\n".join(" ".join(map(str, r)) for r in np.eye(4)) + "\n")
    (tmp_path / "cam_distortion_lut.bin").write_bytes(np.zeros(5).tobytes())
    with pytest.raises(InputError, match="cam_distortion_lut.bin"):
        read_camera_model(tmp_path, "cam")


# ------------------------------------------------------------------------------------------------------------
# transforms

def _rx(a):
    c, s = math.cos(a), math.sin(a)
    return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])


def _ry(a):
    c, s = math.cos(a), math.sin(a)
    return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])


def _rz(a):
    c, s = math.cos(a), math.sin(a)
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])


def _random_xyzrpy(rng, n):
    return np.column_stack([rng.normal(size=(n, 3)) * 100, rng.uniform(-math.pi, math.pi, n),
                            rng.uniform(-math.pi / 2 + 0.01, math.pi / 2 - 0.01, n), rng.uniform(-math.pi, math.pi, n)])


def test_se3_from_xyzrpy_matches_explicit_product():
    rng = np.random.default_rng(3)
    vals = _random_xyzrpy(rng, 50)
    batch = se3_from_xyzrpy(vals)
    assert batch.shape == (50, 4, 4)
    for v, T in zip(vals, batch):
        x, y, z, roll, pitch, yaw = v
        R = _rz(yaw) @ _ry(pitch) @ _rx(roll)
        expected = np.eye(4)
        expected[:3, :3] = R
        expected[:3, 3] = (x, y, z)
        np.testing.assert_allclose(T, expected, atol=1e-12)
        np.testing.assert_allclose(se3_from_xyzrpy(v), expected, atol=1e-12)
        np.testing.assert_allclose(euler_to_rotation(roll, pitch, yaw), R, atol=1e-12)
    # single-axis sanity: yaw +90 deg maps x (forward/north) to y (right/east)
    np.testing.assert_allclose(se3_from_xyzrpy([0, 0, 0, 0, 0, math.pi / 2])[:3, :3] @ [1, 0, 0], [0, 1, 0],
                               atol=1e-15)
    with pytest.raises(ValueError):
        se3_from_xyzrpy([1, 2, 3])


def test_xyzrpy_round_trip():
    rng = np.random.default_rng(4)
    vals = _random_xyzrpy(rng, 200)
    np.testing.assert_allclose(xyzrpy_from_se3(se3_from_xyzrpy(vals)), vals, atol=1e-9)
    for v in vals[:10]:
        np.testing.assert_allclose(xyzrpy_from_se3(se3_from_xyzrpy(v)), v, atol=1e-9)
    R = euler_to_rotation(vals[:, 3], vals[:, 4], vals[:, 5])
    np.testing.assert_allclose(rotation_to_euler(R), vals[:, 3:], atol=1e-9)


def test_invert_se3_and_transform_points():
    rng = np.random.default_rng(5)
    T = se3_from_xyzrpy(_random_xyzrpy(rng, 30))
    inv = invert_se3(T)
    for a, b in zip(T, inv):
        np.testing.assert_allclose(b, np.linalg.inv(a), atol=1e-10)
        np.testing.assert_allclose(a @ b, np.eye(4), atol=1e-10)
    pts = rng.normal(size=(40, 3)) * 10
    got = transform_points(T[0], pts)
    ref = np.array([(T[0] @ np.append(p, 1.0))[:3] for p in pts])
    np.testing.assert_allclose(got, ref, atol=1e-10)
