"""Write synthetic RobotCar runs in the raw layout, in parallel, resumably.

``generate_synthetic_robotcar(root, config, workers, progress, skips)`` writes under ``root``::

    extrinsics/{stereo,ins,lms_front}.txt     published values
    models/stereo_narrow_left.txt             intrinsics scaled to the synthetic frame width (no distortion LUT)
    synthetic_config.json                     the configuration and its hash
    <run>/gps/ins.csv                         50 Hz, 15 columns
    <run>/lms_front.timestamps, lms_front/<ts>.bin
    <run>/stereo.timestamps, stereo/centre/<ts>.png
    <run>/.synthetic_complete.json            written last: the run is finished

Run i depends only on (config, i): the output is byte-identical whatever the worker count or order.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path

import numpy as np

from preprocessing.errors import OutputError, SkipLog
from preprocessing.io import (
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    clean_stale_temporaries,
    output_error,
)
from preprocessing.robotcar.constants import EXTRINSICS, INS_COLUMNS, RUN_NAME_RE
from preprocessing.synthetic.config import GENERATOR_VERSION, SyntheticConfig

log = logging.getLogger(__name__)

STAMP = ".synthetic_complete.json"
LIDAR_BATCH = 500  # scans per ray-casting batch (fixed: the noise streams are keyed by batch)
CAMERA_BATCH = 20  # frames per progress update
INS_STATUS = "INS_SOLUTION_GOOD"
#: Huffman-only deflate: as small as level 1 on noisy raw frames and twice as fast.
_PNG_PARAMS = [1, 1]  # replaced by the cv2 constants on first use (cv2 is imported lazily)
UTM_ZONE_STR = "30U"


# ----------------------------------------------------------------------------------------------------------------
# bulk atomic writes

# ----------------------------------------------------------------------------------------------------------------
# timestamps

def sensor_timestamps(config: SyntheticConfig, run_index: int, start_us: int, duration_s: float):
    """(ins, lms_front, stereo) timestamps (int64 UNIX microseconds) of a run.

    INS samples cover the whole run; the laser and camera clocks are offset from it and from each other, and a
    camera time never equals a laser time.
    """
    from preprocessing.synthetic.route import STREAM_CAMERA, STREAM_LIDAR, run_rng

    dur_us = int(duration_s * 1e6)
    ins = start_us + np.rint(np.arange(0, dur_us * config.ins_hz / 1e6 + 1) * 1e6 / config.ins_hz).astype(np.int64)
    ins = ins[ins <= start_us + dur_us]
    laser_off = int(run_rng(config.seed, run_index, STREAM_LIDAR, 1 << 30).integers(1_000, 19_000))
    cam_off = int(run_rng(config.seed, run_index, STREAM_CAMERA, 1 << 30).integers(100_000, 400_000))
    end = int(ins[-1]) - 1_000
    laser = start_us + laser_off + np.rint(np.arange(0, dur_us * config.lidar_hz / 1e6 + 1) * 1e6
                                           / config.lidar_hz).astype(np.int64)
    laser = laser[laser <= end]
    cam = start_us + cam_off + np.rint(np.arange(0, dur_us * config.camera_hz / 1e6 + 1) * 1e6
                                       / config.camera_hz).astype(np.int64)
    cam = cam[cam <= end]
    clash = np.isin(cam, laser)
    while clash.any():
        cam = np.where(clash, cam + 1, cam)
        clash = np.isin(cam, laser)
    return ins, laser, cam


def ins_csv_text(traj, ins_ts: np.ndarray, start_us: int) -> str:
    """The ``gps/ins.csv`` contents (header + one row per timestamp)."""
    from preprocessing.synthetic.geo import utm_to_latlon

    t = (ins_ts - start_us) / 1e6
    xyzrpy = traj.written_ins_xyzrpy_world(t)
    vel = np.gradient(xyzrpy[:, :3], t, axis=0)
    lat, lon = utm_to_latlon(xyzrpy[:, 0], xyzrpy[:, 1])
    alt = -xyzrpy[:, 2]
    lines = [",".join(INS_COLUMNS)]
    for k in range(len(ins_ts)):
        n, e, d, r, p, y = xyzrpy[k]
        lines.append(f"{ins_ts[k]},{INS_STATUS},{lat[k]:.10f},{lon[k]:.10f},{alt[k]:.6f},{n:.6f},{e:.6f},{d:.6f},"
                     f"{UTM_ZONE_STR},{vel[k, 0]:.6f},{vel[k, 1]:.6f},{vel[k, 2]:.6f},{r:.9f},{p:.9f},{y:.9f}")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------------------------
# one run

_TOWN_CACHE: dict = {}


def _town_for(config: SyntheticConfig, route):
    from preprocessing.synthetic.town import build_town

    key = (json.dumps(config.route), config.town_seed, config.street_extension_m, config.corner_radius_m)
    if key not in _TOWN_CACHE:
        _TOWN_CACHE.clear()
        _TOWN_CACHE[key] = build_town(route, config.town_seed, config.street_extension_m)
    return _TOWN_CACHE[key]


def generate_run(root: str | Path, config: SyntheticConfig, run_index: int, nthreads: int = 1,
                 progress=None, town=None) -> dict:
    """Generate run ``run_index`` into ``root/<run name>``; returns its stamp (also written as STAMP)."""
    import cv2

    from preprocessing.robotcar.lidar import lms_scan_bytes
    from preprocessing.robotcar.timestamps import write_timestamps
    from preprocessing.synthetic.conditions import run_conditions
    from preprocessing.synthetic.render import Renderer, RunScene, lidar_scans
    from preprocessing.synthetic.route import RunTrajectory, build_route
    from preprocessing.synthetic.town import build_cars

    global _PNG_PARAMS
    _PNG_PARAMS = [cv2.IMWRITE_PNG_COMPRESSION, 1, cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_HUFFMAN_ONLY]
    t_start = time.perf_counter()
    route = build_route(config.route, config.corner_radius_m, config.ground_altitude_m)
    town = town if town is not None else _town_for(config, route)
    cond = run_conditions(config.seed, run_index, route.waypoints[0])
    traj = RunTrajectory(route, config, run_index)
    run_dir = Path(root) / cond.name
    ins_ts, laser_ts, cam_ts = sensor_timestamps(config, run_index, cond.start_us, traj.duration)
    origin = route.origin

    atomic_write_text(run_dir / "gps" / "ins.csv", ins_csv_text(traj, ins_ts, cond.start_us))

    cars = build_cars(town, config.seed, run_index, config.parking_occupancy)
    scene = RunScene(town, cars, cond.veg_density, nthreads=nthreads)
    t_lidar = time.perf_counter()
    scan_dir = run_dir / "lms_front"
    scan_dir.mkdir(parents=True, exist_ok=True)
    for b0 in range(0, len(laser_ts), LIDAR_BATCH):
        ts = laser_ts[b0:b0 + LIDAR_BATCH]
        poses = traj.sensor_poses_local((ts - cond.start_us) / 1e6, "lms_front")
        xy, refl = lidar_scans(scene, cond, config, run_index, poses, b0)
        for k, t in enumerate(ts.tolist()):
            atomic_write_bytes(scan_dir / f"{t}.bin", lms_scan_bytes(xy[k], refl[k]))
        if progress is not None:
            progress(len(ts))
    write_timestamps(run_dir / "lms_front.timestamps", laser_ts)

    t_cam = time.perf_counter()
    renderer = Renderer(scene, cond, config, run_index)
    cam_dir = run_dir / "stereo" / "centre"
    cam_dir.mkdir(parents=True, exist_ok=True)
    cam_poses = traj.sensor_poses_local((cam_ts - cond.start_us) / 1e6, "stereo")
    done = 0
    for k, t in enumerate(cam_ts.tolist()):
        raw = renderer.render_raw(cam_poses[k], k)
        ok, enc = cv2.imencode(".png", raw, _PNG_PARAMS)
        if not ok:
            raise RuntimeError(f"PNG encoding failed for frame {t} of {cond.name}")
        atomic_write_bytes(cam_dir / f"{t}.png", enc.tobytes())
        done += 1
        if progress is not None and (done == CAMERA_BATCH or k == len(cam_ts) - 1):
            progress(done)
            done = 0
    write_timestamps(run_dir / "stereo.timestamps", cam_ts)

    stamp = dict(
        config_hash=config.run_hash(), generator_version=GENERATOR_VERSION, run=cond.name, run_index=run_index,
        seed=config.seed, town_seed=config.town_seed, origin_utm=[float(v) for v in origin],
        duration_s=round(traj.duration, 3), route_length_m=round(route.length, 3),
        cruise_speed_mps=round(traj.cruise, 3),
        counts={"ins": len(ins_ts), "lms_front": len(laser_ts), "stereo_centre": len(cam_ts)},
        conditions=cond.summary(), config={k: v for k, v in config.to_dict().items() if k != "num_runs"},
    )
    atomic_write_json(run_dir / STAMP, stamp)
    log.debug("synthetic run %s: setup %.1fs, lidar %.1fs, camera %.1fs", cond.name, t_lidar - t_start,
              t_cam - t_lidar, time.perf_counter() - t_cam)
    return stamp


# ----------------------------------------------------------------------------------------------------------------
# process pool plumbing

_QUEUE = None


def _limit_threads() -> None:
    try:
        import cv2

        cv2.setNumThreads(1)
    except Exception:  # pragma: no cover - cv2 always present in this project
        pass
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(1)
    except Exception:  # pragma: no cover
        pass


def _worker_init(queue) -> None:
    global _QUEUE
    _QUEUE = queue
    _limit_threads()


def _worker_run(root: str, config_dict: dict, run_index: int, nthreads: int, town) -> dict:
    config = SyntheticConfig(**config_dict)

    def report(n):
        if _QUEUE is not None:
            _QUEUE.put((run_index, n))

    return generate_run(root, config, run_index, nthreads=nthreads, progress=report, town=town)


def _run_units(config: SyntheticConfig, route, run_index: int) -> int:
    """Progress units (laser scans + camera frames) of a run, without generating it."""
    from preprocessing.synthetic.conditions import run_conditions
    from preprocessing.synthetic.route import RunTrajectory

    cond = run_conditions(config.seed, run_index, route.waypoints[0])
    traj = RunTrajectory(route, config, run_index)
    _, laser, cam = sensor_timestamps(config, run_index, cond.start_us, traj.duration)
    return len(laser) + len(cam)


def _write_shared(root: Path, config: SyntheticConfig) -> None:
    from preprocessing.robotcar.camera import camera_model_text
    from preprocessing.robotcar.extrinsics import format_extrinsics
    from preprocessing.synthetic.render import camera_model

    files = {root / "extrinsics" / f"{s}.txt": format_extrinsics(EXTRINSICS[s]) for s in ("stereo", "ins", "lms_front")}
    files[root / "models" / "stereo_narrow_left.txt"] = camera_model_text(camera_model(config.image_width,
                                                                                        config.image_height))
    files[root / "synthetic_config.json"] = json.dumps(
        dict(config_hash=config.run_hash(), generator_version=GENERATOR_VERSION, config=config.to_dict()),
        indent=2, sort_keys=True) + "\n"
    for path, text in files.items():
        if path.is_file() and path.read_text() == text:
            continue
        atomic_write_text(path, text)


def generate_synthetic_robotcar(root: str | Path, config: SyntheticConfig, workers: int = 2, progress: bool = True,
                                skips: SkipLog | None = None) -> list[str]:
    """Generate (or complete) the synthetic RobotCar described by ``config`` under ``root``.

    Returns the sorted run names. Finished runs (stamp with the same config hash) are kept; unfinished run folders
    of this configuration are deleted and regenerated; a finished run made with another configuration raises
    :class:`~preprocessing.errors.OutputError`. ``skips`` (optional) records ``synthetic_run_exists`` for kept runs
    and ``synthetic_run_incomplete`` for regenerated ones.
    """
    from preprocessing.synthetic.conditions import run_conditions
    from preprocessing.synthetic.route import build_route

    if isinstance(config, dict):
        config = SyntheticConfig(**config)
    config.validate()
    root = Path(root)
    route = build_route(config.route, config.corner_radius_m, config.ground_altitude_m)
    names = [run_conditions(config.seed, i, route.waypoints[0]).name for i in range(config.num_runs)]
    if len(set(names)) != len(names):
        raise ValueError(f"synthetic runs {names} share a name; choose another seed")
    digest = config.run_hash()
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise output_error(root, exc) from exc

    lock = _lock_root(root)
    try:
        return _generate_locked(root, config, route, names, digest, workers, progress, skips)
    finally:
        lock.close()


def _lock_root(root: Path):
    """An exclusive, non-blocking lock on ``root/.synthetic.lock`` (released when the handle is closed)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX: no locking
        return open(os.devnull)
    try:
        fh = open(root / ".synthetic.lock", "a+")
    except OSError as exc:
        raise output_error(root / ".synthetic.lock", exc) from exc
    try:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        fh.close()
        raise OutputError(f"{root}: another synthetic-RobotCar generation is writing to this folder; wait for it "
                          f"to finish (or stop it), or choose another output folder") from None
    return fh


def _generate_locked(root: Path, config: SyntheticConfig, route, names, digest, workers, progress, skips):
    for d in sorted(p for p in root.iterdir() if p.is_dir() and RUN_NAME_RE.match(p.name)):
        stamp = d / STAMP
        if not stamp.is_file():
            continue
        try:
            old = json.loads(stamp.read_text()).get("config_hash")
        except (OSError, ValueError):
            old = None
        if old != digest:
            raise OutputError(
                f"{d}: this synthetic run was generated with a different configuration (config hash {old}, now "
                f"{digest}); choose another output folder for this configuration, or delete {root} (or just the "
                f"run folders in it) to regenerate")
    extra = sorted(p.name for p in root.iterdir() if p.is_dir() and RUN_NAME_RE.match(p.name)
                   and p.name not in names)
    if extra:
        log.warning("%s holds run folders that are not part of this configuration: %s", root, extra)

    _write_shared(root, config)
    for sub in ("extrinsics", "models"):
        clean_stale_temporaries(root / sub)
    todo = []
    for i, name in enumerate(names):
        d = root / name
        if (d / STAMP).is_file():
            log.info("synthetic run %s already complete; kept", name)
            if skips is not None:
                skips.add("synthetic_run_exists", d, "already generated with the same configuration")
            continue
        if d.exists():
            log.warning("synthetic run %s is incomplete (interrupted?); deleting and regenerating it", name)
            if skips is not None:
                skips.add("synthetic_run_incomplete", d, "no completion stamp: deleted and regenerated")
            try:
                shutil.rmtree(d)
            except OSError as exc:
                raise output_error(d, exc) from exc
        todo.append(i)
    if not todo:
        return sorted(names)

    from preprocessing.synthetic.town import build_town

    town = build_town(route, config.town_seed, config.street_extension_m)
    units = [_run_units(config, route, i) for i in todo]
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=sum(units), unit="frame", desc=f"synthetic RobotCar ({len(todo)} runs)", dynamic_ncols=True)
    n_workers = max(1, min(int(workers), len(todo)))
    nthreads = max(1, (os.cpu_count() or 1) // n_workers)
    t0 = time.perf_counter()
    try:
        if n_workers == 1:
            _limit_threads()
            for i in todo:
                generate_run(root, config, i, nthreads=nthreads, progress=bar.update if bar else None, town=town)
        else:
            _run_pool(root, config, todo, n_workers, nthreads, town, bar)
    finally:
        if bar is not None:
            bar.close()
    log.info("synthetic RobotCar: %d runs generated in %.1f s under %s", len(todo), time.perf_counter() - t0, root)
    return sorted(names)


def _run_pool(root, config, todo, n_workers, nthreads, town, bar) -> None:
    import concurrent.futures as cf
    import multiprocessing as mp
    import queue as _queue

    from preprocessing.processes import worker_pool

    # spawn, never fork: a forked child of a process whose libraries already started threads (OpenCV, open3d,
    # torch...) can deadlock; the bench script importing cv2 first hung that way. An error or an interrupt stops
    # every worker at once (preprocessing.processes.worker_pool).
    q = mp.get_context("spawn").Queue()
    try:
        with worker_pool(n_workers, initializer=_worker_init, initargs=(q,)) as pool:
            futs = [pool.submit(_worker_run, str(root), config.to_dict(), i, nthreads, town) for i in todo]
            pending = set(futs)
            while pending:
                done, pending = cf.wait(pending, timeout=0.2, return_when=cf.FIRST_COMPLETED)
                while True:
                    try:
                        _, n = q.get_nowait()
                    except _queue.Empty:
                        break
                    if bar is not None:
                        bar.update(n)
                for f in done:
                    f.result()  # re-raise a worker's exception
    except cf.process.BrokenProcessPool as exc:
        raise RuntimeError(
            "a synthetic-RobotCar worker process died (killed, out of memory, or a calling script without an "
            "`if __name__ == '__main__':` guard, which 'spawn' workers need); re-run to resume (finished runs are "
            "kept) or pass workers=1") from exc
    finally:
        q.close()
        q.cancel_join_thread()  # never block on progress messages nobody reads any more
