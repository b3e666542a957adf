"""Synthetic RobotCar: layout, readers, determinism, geometry round trip, appearance, resumability."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from preprocessing.errors import OutputError, SkipLog
from preprocessing.robotcar import camera, extrinsics, ins, lidar, timestamps
from preprocessing.robotcar.constants import (
    EXTRINSICS,
    INS_COLUMNS,
    LMS_POINTS_PER_SCAN,
    RUN_NAME_RE,
    STEREO_CENTRE_INTRINSICS,
)
from preprocessing.robotcar.interpolation import interpolate_poses
from preprocessing.robotcar.transforms import invert_se3, se3_from_xyzrpy
from preprocessing.synthetic import (
    PRESETS,
    STAMP,
    SyntheticConfig,
    generate_synthetic_robotcar,
)
from preprocessing.synthetic.route import build_route, route_test_square_coverage

#: Smaller than `quick`: 200 m of street, 2 runs, tiny frames, no laser range noise (for the exact round trip).
TINY = dict(PRESETS["quick"], num_runs=2, route=[[5735150.0, 620540.0], [5735350.0, 620540.0]], image_width=160,
            image_height=120, render_scale=0.5, camera_hz=2.0, lidar_range_noise_m=0.0, street_extension_m=40.0)


def _tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic") / "raw"
    cfg = SyntheticConfig(**TINY)
    runs = generate_synthetic_robotcar(root, cfg, workers=1, progress=False)
    return root, cfg, runs


def test_layout_and_readers(tiny):
    root, cfg, runs = tiny
    assert runs == sorted(runs) and len(runs) == 2 and all(RUN_NAME_RE.match(r) for r in runs)
    for s in ("stereo", "ins", "lms_front"):
        np.testing.assert_allclose(extrinsics.read_extrinsics(root / "extrinsics", s), se3_from_xyzrpy(EXTRINSICS[s]),
                                   atol=1e-6)
    model = camera.read_camera_model(root / "models", "stereo_narrow_left")
    f = cfg.image_width / 1280
    np.testing.assert_allclose([model.fx, model.fy, model.cx, model.cy], np.array(STEREO_CENTRE_INTRINSICS) * f,
                               atol=1e-5)
    assert model.lut is None
    for run in runs:
        d = root / run
        skips = SkipLog()
        lines = (d / "gps" / "ins.csv").read_text().splitlines()
        assert lines[0] == ",".join(INS_COLUMNS)
        assert all(len(ln.split(",")) == 15 for ln in lines)
        assert {ln.split(",")[1] for ln in lines[1:]} == {"INS_SOLUTION_GOOD"}
        assert {ln.split(",")[8] for ln in lines[1:]} == {"30U"}
        poses = ins.read_ins(d / "gps" / "ins.csv", skips)
        assert len(poses) == len(lines) - 1 and len(skips) == 0
        assert np.all(np.diff(poses.timestamps) == 20_000)  # 50 Hz
        lt = timestamps.read_timestamps(d / "lms_front.timestamps", skips)
        ct = timestamps.read_timestamps(d / "stereo.timestamps", skips)
        assert all(len(str(t)) == 16 for t in (lt[0], ct[0], poses.timestamps[0]))
        assert len(timestamps.existing_frames(lt, d / "lms_front", ".bin", skips)) == len(lt)
        assert len(timestamps.existing_frames(ct, d / "stereo" / "centre", ".png", skips)) == len(ct)
        assert len(skips) == 0
        assert not np.isin(ct, lt).any()  # camera and laser clocks never coincide
        assert poses.timestamps[0] <= min(lt[0], ct[0]) and max(lt[-1], ct[-1]) <= poses.timestamps[-1]
        assert np.all(np.diff(lt) == 20_000)
        scan = lidar.read_lms_scan(d / "lms_front" / f"{lt[len(lt) // 2]}.bin")
        assert scan.shape == (LMS_POINTS_PER_SCAN, 3)
        assert len(lidar.scan_points_laser_frame(scan)) > 300
        raw = camera.decode_bayer_png((d / "stereo" / "centre" / f"{ct[3]}.png").read_bytes())
        assert raw.shape == (cfg.image_height, cfg.image_width) and raw.dtype == np.uint8
        rgb = camera.demosaic_fast(raw, "GBRG")
        assert rgb.shape == (cfg.image_height, cfg.image_width, 3) and 20 < rgb.mean() < 235
        stamp = json.loads((d / STAMP).read_text())
        assert stamp["config_hash"] == cfg.run_hash() and stamp["run"] == run
        assert stamp["counts"] == {"ins": len(poses), "lms_front": len(lt), "stereo_centre": len(ct)}


def test_deterministic_whatever_the_worker_count(tiny, tmp_path):
    root, cfg, runs = tiny
    other = tmp_path / "raw"
    assert generate_synthetic_robotcar(other, SyntheticConfig(**TINY), workers=2, progress=False) == runs
    assert _tree_digest(other) == _tree_digest(root)


def _run_setup(cfg, run_index):
    from preprocessing.synthetic.conditions import run_conditions
    from preprocessing.synthetic.render import RunScene
    from preprocessing.synthetic.route import RunTrajectory
    from preprocessing.synthetic.town import build_cars, build_town

    route = build_route(cfg.route, cfg.corner_radius_m, cfg.ground_altitude_m)
    town = build_town(route, cfg.town_seed, cfg.street_extension_m)
    cond = run_conditions(cfg.seed, run_index, route.waypoints[0])
    scene = RunScene(town, build_cars(town, cfg.seed, run_index, cfg.parking_occupancy), cond.veg_density)
    return route, cond, RunTrajectory(route, cfg, run_index), scene


def _world_points(run_dir: Path, scan_ts, T_world_ins):
    G = invert_se3(se3_from_xyzrpy(EXTRINSICS["ins"])) @ se3_from_xyzrpy(EXTRINSICS["lms_front"])
    pts = []
    for t, T in zip(scan_ts, T_world_ins):
        p = lidar.scan_points_laser_frame(lidar.read_lms_scan(run_dir / "lms_front" / f"{t}.bin"))
        pts.append((T @ G @ p.T).T[:, :3])
    return pts


def test_laser_round_trip_lands_on_scene_surfaces(tiny):
    """Readers' formula T_world_ins(t) @ inv(SE3(ins)) @ SE3(lms_front) @ [x, y, 0, 1] with the noise-free poses."""
    import open3d as o3d

    root, cfg, runs = tiny
    for i in range(cfg.num_runs):
        route, cond, traj, scene = _run_setup(cfg, i)
        d = root / cond.name
        lt = timestamps.read_timestamps(d / "lms_front.timestamps")[::20]
        T_true = traj.true_ins_poses_world((lt - cond.start_us) / 1e6)
        per_scan = _world_points(d, lt, T_true)
        assert sum(map(len, per_scan)) > 100 * len(lt)
        # oracle: the first surface along the line from the true laser origin through each point is the point itself
        laser_origin = traj.sensor_poses_local((lt - cond.start_us) / 1e6, "lms_front")[:, :3, 3]
        origins = np.repeat(laser_origin, [len(p) for p in per_scan], axis=0)
        local = np.vstack(per_scan) - route.origin
        ray = local - origins
        rng_ = np.linalg.norm(ray, axis=1)
        rays = np.column_stack([origins, ray / rng_[:, None]]).astype(np.float32)
        t_hit = scene.full.cast_rays(o3d.core.Tensor(rays))["t_hit"].numpy()
        crown_gaps = t_hit < rng_ - 1e-3  # rays that went through a gap in a crown: hit behind it
        assert crown_gaps.mean() < 0.05
        assert np.abs(t_hit - rng_)[~crown_gaps].max() < 1e-3
        if crown_gaps.any():  # those continue in the crown-less scene
            t_bare = scene.bare.cast_rays(o3d.core.Tensor(rays[crown_gaps]))["t_hit"].numpy()
            assert np.abs(t_bare - rng_[crown_gaps]).max() < 1e-3
        # and every point is on some surface (open3d's point-to-mesh distance is float32: loose bound)
        dist = scene.full.compute_distance(o3d.core.Tensor(local.astype(np.float32))).numpy()
        assert np.max(dist) < 0.05
        # the written (noisy) INS stays within a few decimetres / a fraction of a degree of the truth
        written = ins.read_ins(d / "gps" / "ins.csv")
        true_at_ins = traj.true_ins_poses_world((written.timestamps - cond.start_us) / 1e6)
        drift = np.linalg.norm(written.xyzrpy[:, :3] - true_at_ins[:, :3, 3], axis=1)
        assert 0.0 < drift.max() < 1.5
        noisy_R = se3_from_xyzrpy(written.xyzrpy)[:, :3, :3]
        cos = (np.trace(np.swapaxes(noisy_R, 1, 2) @ true_at_ins[:, :3, :3], axis1=1, axis2=2) - 1) / 2
        assert np.degrees(np.arccos(np.clip(cos, -1, 1))).max() < 1.0
        # 50 Hz samples of the true motion interpolate it closely (smooth trajectory, as the readers assume)
        from preprocessing.robotcar.transforms import xyzrpy_from_se3

        true_xyzrpy = xyzrpy_from_se3(true_at_ins)
        interp, valid = interpolate_poses(written.timestamps, true_xyzrpy, lt)
        assert valid.all()
        assert np.abs(interp[:, :3, 3] - T_true[:, :3, 3]).max() < 2e-3


def test_runs_differ_in_appearance_not_in_static_geometry(tiny):
    import open3d as o3d

    from preprocessing.synthetic.town import CROWN, FACADE, GRASS, ROAD, SIDEWALK

    root, cfg, runs = tiny
    setups = [_run_setup(cfg, i) for i in range(2)]
    (route, ca, ta, sa), (_, cb, tb, sb) = setups

    def frames(cond, traj):
        d = root / cond.name
        ct = timestamps.read_timestamps(d / "stereo.timestamps")
        imgs = [camera.demosaic_fast(camera.decode_bayer_png((d / "stereo" / "centre" / f"{t}.png").read_bytes()))
                .astype(float) for t in ct]
        pos = traj.vehicle_xyzrpy_local((ct - cond.start_us) / 1e6)[:, :2]
        return imgs, pos

    ia, pa = frames(ca, ta)
    ib, pb = frames(cb, tb)
    within = np.mean([np.abs(ia[k] - ia[k + 1]).mean() for k in range(len(ia) - 1)])
    across = []
    for k in range(len(ia)):
        j = int(np.argmin(np.linalg.norm(pb - pa[k], axis=1)))
        if np.linalg.norm(pb[j] - pa[k]) < 1.5:
            across.append(np.abs(ia[k] - ib[j]).mean())
    assert len(across) > 10
    assert np.mean(across) > within, (np.mean(across), within)
    # static geometry is shared: run b's laser points on static surfaces lie on run a's scene too
    d = root / cb.name
    lt = timestamps.read_timestamps(d / "lms_front.timestamps")[::25]
    pts = np.vstack(_world_points(d, lt, tb.true_ins_poses_world((lt - cb.start_us) / 1e6)))
    local = (pts - route.origin).astype(np.float32)
    dist_a = sa.full.compute_distance(o3d.core.Tensor(local)).numpy()
    assert np.mean(dist_a < 1e-3) > 0.8
    kinds_a = set(np.unique(sa.objects.kind).tolist())
    assert {GRASS, ROAD, SIDEWALK, FACADE, CROWN} <= kinds_a
    # but the runs are not identical in geometry: parked cars move
    assert np.mean(dist_a < 1e-3) < 1.0


def test_resume_regenerates_incomplete_and_keeps_complete_runs(tiny, tmp_path):
    root, cfg, runs = tiny
    copy = tmp_path / "raw"
    shutil.copytree(root, copy)
    before = _tree_digest(copy)
    kept = copy / runs[0] / STAMP
    kept_mtime = kept.stat().st_mtime_ns
    broken = copy / runs[1]
    (broken / STAMP).unlink()
    (broken / "junk.txt").write_text("left by a killed run")
    victim = sorted((broken / "lms_front").iterdir())[5]
    victim.write_bytes(b"truncated")
    skips = SkipLog()
    assert generate_synthetic_robotcar(copy, SyntheticConfig(**TINY), workers=1, progress=False, skips=skips) == runs
    assert kept.stat().st_mtime_ns == kept_mtime
    assert not (broken / "junk.txt").exists()
    assert _tree_digest(copy) == before
    assert skips.counts() == {"synthetic_run_exists": 1, "synthetic_run_incomplete": 1}


def test_config_mismatch_is_a_clear_error(tiny):
    root, cfg, runs = tiny
    changed = SyntheticConfig(**dict(TINY, image_noise=2.5))
    with pytest.raises(OutputError, match="different configuration.*another output folder"):
        generate_synthetic_robotcar(root, changed, workers=1, progress=False)
    # adding runs is not a mismatch: run i never depends on num_runs
    assert SyntheticConfig(**dict(TINY, num_runs=5)).run_hash() == cfg.run_hash()


@pytest.mark.parametrize("preset", ["default", "quick"])
def test_preset_routes_cross_test_squares(preset):
    cfg = SyntheticConfig(**PRESETS[preset])
    cfg.validate()
    n_squares, inside = route_test_square_coverage(cfg.route, cfg.corner_radius_m)
    assert n_squares >= 2
    if preset == "default":
        assert 0.15 < inside < 0.5  # most of the route is training territory
    fields = {f.name: type(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    assert set(fields.values()) <= {int, float, str, bool, list}
    assert SyntheticConfig.preset(preset) == cfg


def test_geodesy():
    from preprocessing.synthetic.geo import latlon_to_utm, sun_position, utm_to_latlon

    n, e = 5735237.358209, 620543.094379
    lat, lon = utm_to_latlon(n, e)
    assert 51.7 < lat < 51.8 and -1.3 < lon < -1.2  # Oxford
    n2, e2 = latlon_to_utm(lat, lon)
    assert abs(n2 - n) < 1e-6 and abs(e2 - e) < 1e-6
    # central meridian of zone 30 at 51 N: k0 times the WGS84 meridian arc (numerical quadrature: 5649824.888255)
    n51, e51 = latlon_to_utm(51.0, -3.0)
    assert abs(n51 - 5649824.888255) < 1e-3 and abs(e51 - 500000.0) < 1e-6
    import datetime as dt

    _, el_summer = sun_position(dt.datetime(2015, 6, 21, 12, 0), lat, lon)
    az_dec, el_winter = sun_position(dt.datetime(2015, 12, 21, 12, 0), lat, lon)
    assert 61 < el_summer < 62.5 and 14 < el_winter < 15.5 and 170 < az_dec < 190


def test_concurrent_generation_into_one_folder_is_refused(tiny):
    from preprocessing.synthetic.generate import _lock_root

    root, cfg, runs = tiny
    held = _lock_root(root)
    try:
        with pytest.raises(OutputError, match="another synthetic-RobotCar generation"):
            generate_synthetic_robotcar(root, cfg, workers=1, progress=False)
    finally:
        held.close()
    assert generate_synthetic_robotcar(root, cfg, workers=1, progress=False) == runs  # all complete: no work
