"""End-to-end preprocessing: raw runs -> submaps -> image pairing -> splits -> pickles, manifest and report.

Resumable: each run's submaps carry a stamp (parameters + input fingerprint) written last, images are skipped
when already converted with the same settings, and every file is written atomically, so a killed job re-run
with the same command finishes the remaining work and gives the same files.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import dataclasses
import json
import logging
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from preprocessing.errors import InputError, OutputError, SkipLog
from preprocessing.io import (
    atomic_write_bytes,
    atomic_write_json,
    clean_stale_temporaries,
    output_error,
)
from preprocessing.manifest import MANIFEST_NAME, write_manifest
from preprocessing.pairing import PairingConfig, PairResult, pair_submaps
from preprocessing.processes import worker_pool
from preprocessing.report import Report
from preprocessing.robotcar import constants as C
from preprocessing.robotcar.camera import CorruptImage, process_frame, read_camera_model
from preprocessing.robotcar.constants import STEREO_CENTRE_MODEL
from preprocessing.robotcar.extrinsics import ins_from_laser
from preprocessing.robotcar.ins import read_ins
from preprocessing.robotcar.timestamps import existing_frames, read_timestamps
from preprocessing.splits import (
    SplitConfig,
    assign_training_splits,
    evaluation_sets,
    in_test_squares,
    select_runs,
    training_tuples,
)
from preprocessing.submaps import (
    SubmapConfig,
    build_run_submaps,
    load_run_scans,
    read_locations_csv,
    write_locations_csv,
)
from preprocessing.upstream import (
    TrainingTuple,
    load_pickle,
    write_pickle,
    write_training_tuples,
)

log = logging.getLogger(__name__)


def package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("crossmodal")
    except PackageNotFoundError:
        return "unknown (not installed)"

#: Folders of a raw root that are not runs (the SDK's calibration folders).
AUX_FOLDERS = {"extrinsics", "models"}
SUBMAP_STAMP = ".submaps_done.json"
IMAGE_STAMP = ".images.json"
LIDAR2IMAGE = "lidar2image_ndx.pickle"
PICKLES = {
    "training": "training_queries_baseline.pickle",
    "test": "test_queries_baseline.pickle",
    "eval_database": "oxford_evaluation_database.pickle",
    "eval_query": "oxford_evaluation_query.pickle",
    "val_database": "oxford_validation_database.pickle",
    "val_query": "oxford_validation_query.pickle",
}


# ------------------------------------------------------------------------------------------------------------
# Runs

def discover_runs(raw_root: Path, report: Report) -> list[str]:
    """Run folders under ``raw_root``; malformed names and empty runs are skipped and reported."""
    if not raw_root.is_dir():
        raise InputError(f"{raw_root}: raw data folder not found; set `source.raw_root` to the folder holding the "
                         f"RobotCar run folders (YYYY-MM-DD-HH-MM-SS)")
    runs = []
    for entry in sorted(raw_root.iterdir()):
        if not entry.is_dir() or entry.name in AUX_FOLDERS or entry.name.startswith("."):
            continue
        if not C.RUN_NAME_RE.match(entry.name):
            report.runs_skipped[entry.name] = ("malformed run folder name: expected YYYY-MM-DD-HH-MM-SS; rename "
                                               "the folder to its run's start time or move it out of the raw root")
            continue
        if not (entry / "lms_front.timestamps").is_file() and not (entry / "stereo.timestamps").is_file():
            report.runs_skipped[entry.name] = "empty run: no lms_front.timestamps and no stereo.timestamps"
            continue
        runs.append(entry.name)
    return runs


def _fingerprint(paths: list[Path]) -> list:
    out = []
    for p in paths:
        try:
            st = p.stat()
            out.append([str(p.name), st.st_size, st.st_mtime_ns])
        except FileNotFoundError:
            out.append([str(p.name), None, None])
    return out


def _submap_stamp(run_folder: Path, cfg: SubmapConfig, extrinsics_dir: Path | None) -> dict:
    inputs = [run_folder / "gps" / "ins.csv", run_folder / "lms_front.timestamps"]
    if extrinsics_dir is not None:
        inputs += [extrinsics_dir / "ins.txt", extrinsics_dir / "lms_front.txt"]
    n_scans = sum(1 for _ in os.scandir(run_folder / "lms_front")) if (run_folder / "lms_front").is_dir() else 0
    return {"config": cfg.key(), "inputs": _fingerprint(inputs), "scan_files": n_scans}


def _run_submaps_complete(out_run: Path, stamp: dict) -> dict[str, int] | None:
    """Counts per set when ``out_run`` holds a finished job with this stamp and every file is intact."""
    path = out_run / SUBMAP_STAMP
    try:
        saved = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    if saved.get("stamp") != stamp:
        return None
    counts = {}
    for set_name, folder, csv in (("train", C.TRAIN_CLOUD_DIR, C.TRAIN_LOCATIONS_CSV),
                                  ("eval", C.EVAL_CLOUD_DIR, C.EVAL_LOCATIONS_CSV)):
        try:
            df = read_locations_csv(out_run / csv)
        except InputError:
            return None
        for t in df["timestamp"].tolist():
            f = out_run / folder / f"{t}.bin"
            if not f.is_file() or f.stat().st_size != C.SUBMAP_BYTES:
                return None
        counts[set_name] = len(df)
    return counts


def build_submaps_for_run(run_folder: str, out_run: str, cfg: SubmapConfig,
                          extrinsics_dir: str | None) -> tuple[str, dict[str, int] | None, str | None, list, bool]:
    """Worker: build (or reuse) one run's submaps. Returns (run, counts, error, skips, reused)."""
    run_folder, out_run = Path(run_folder), Path(out_run)
    ext_dir = Path(extrinsics_dir) if extrinsics_dir else None
    skips = SkipLog()
    try:
        stamp = _submap_stamp(run_folder, cfg, ext_dir)
        done = _run_submaps_complete(out_run, stamp)
        if done is not None:
            return run_folder.name, done, None, [], True
        ins = read_ins(run_folder / "gps" / "ins.csv", skips)
        scan_ts = existing_frames(read_timestamps(run_folder / "lms_front.timestamps", skips),
                                  run_folder / "lms_front", ".bin", skips)
        if len(scan_ts) == 0:
            return run_folder.name, None, "no laser scans on disk (lms_front/ empty or missing)", skips.items, False
        if len(ins) < 2:
            return run_folder.name, None, f"{ins.path}: fewer than two usable INS rows", skips.items, False
        scans = load_run_scans(run_folder, ins.timestamps, ins.xyzrpy, scan_ts, cfg, skips)
        G = ins_from_laser(ext_dir, "lms_front")
        rows = build_run_submaps(scans, G, out_run, cfg, skips)
        write_locations_csv(out_run / C.TRAIN_LOCATIONS_CSV, rows["train"])
        write_locations_csv(out_run / C.EVAL_LOCATIONS_CSV, rows["eval"])
        atomic_write_json(out_run / SUBMAP_STAMP, {"stamp": stamp})
        return run_folder.name, {k: len(v) for k, v in rows.items()}, None, skips.items, False
    except InputError as exc:
        return run_folder.name, None, str(exc), skips.items, False


# ------------------------------------------------------------------------------------------------------------
# Images

def convert_frames(jobs: list[tuple[str, str]], mode: str, lut, downsample: int) -> list[tuple[str, str | None]]:
    """Worker: convert raw frames ``(src, dst)``; returns ``(src, error or None)`` per job."""
    out = []
    for src, dst in jobs:
        try:
            data = Path(src).read_bytes()
            atomic_write_bytes(dst, process_frame(data, src, mode, lut, downsample))
            out.append((src, None))
        except CorruptImage as exc:
            out.append((src, f"corrupt_image|{exc}"))
        except OutputError:
            raise
        except OSError as exc:
            out.append((src, f"unreadable_file|{src}: {exc}"))
    return out


def _check_image_stamp(image_root: Path, key: dict) -> bool:
    """True when ``image_root`` already holds images made with ``key``; raise if made with other settings."""
    path = image_root / IMAGE_STAMP
    if not path.is_file():
        return False
    saved = json.loads(path.read_text())
    if saved != key:
        raise InputError(f"{image_root}: images there were written with {saved}, this job asks for {key}; choose "
                         f"another `image_root` (output) or delete that folder")
    return True


# ------------------------------------------------------------------------------------------------------------
# The job

@dataclasses.dataclass
class Sources:
    """Where the inputs are. ``benchmark_root`` reuses an existing ``benchmark_datasets`` (no submap building);
    ``image_root`` reuses existing images + ``lidar2image_ndx.pickle`` (no pairing)."""

    raw_root: str | None = None
    benchmark_root: str | None = None
    image_root: str | None = None
    extrinsics_dir: str | None = None  #: null: ``<raw_root>/extrinsics`` if present, else the published values
    models_dir: str | None = None  #: null: ``<raw_root>/models`` (only needed to undistort)


def _map(executor, fn, arg_lists, desc: str, progress: bool, total: int | None = None):
    """Run ``fn(*args)`` for each args tuple, in the pool when there is one, yielding results as they finish."""
    bar = tqdm(total=total if total is not None else len(arg_lists), desc=desc, disable=not progress,
               unit="job", dynamic_ncols=True)
    try:
        if executor is None:
            for args in arg_lists:
                yield fn(*args)
                bar.update(1)
        else:
            futures = [executor.submit(fn, *args) for args in arg_lists]
            for fut in cf.as_completed(futures):
                yield fut.result()
                bar.update(1)
    finally:
        bar.close()


def _check_writable(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / ".write_probe"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise output_error(folder, exc) from exc


def preprocess(sources: Sources, output_dir: str | Path, submaps: SubmapConfig | None = None,
               pairing: PairingConfig | None = None, splits: SplitConfig | None = None, workers: int = 2,
               drop_unpaired: bool = True, progress: bool = True) -> Report:
    """Run the whole preprocessing job; returns the report (also written as ``report.md`` / ``report.json``)."""
    submaps = submaps or SubmapConfig()
    pairing = pairing or PairingConfig()
    splits = splits or SplitConfig()
    out = Path(output_dir)
    _check_writable(out)
    clean_stale_temporaries(out)
    report = Report(raw_root=sources.raw_root, output_dir=str(out))
    report.settings = {"submaps": dataclasses.asdict(submaps), "pairing": dataclasses.asdict(pairing),
                       "splits": dataclasses.asdict(splits), "drop_unpaired": drop_unpaired,
                       "sources": dataclasses.asdict(sources)}
    raw_root = Path(sources.raw_root) if sources.raw_root else None
    ext_dir = sources.extrinsics_dir or (str(raw_root / "extrinsics") if raw_root and (raw_root / "extrinsics")
                                         .is_dir() else None)
    bench = out / "benchmark_datasets"
    oxford = bench / "oxford"
    skips = SkipLog()
    try:
        # the pool's workers stop at once on an error or an interrupt (preprocessing.processes)
        with worker_pool(workers) if workers > 1 else contextlib.nullcontext() as executor:
            # 1. submaps
            t0 = time.perf_counter()
            if sources.benchmark_root:
                _link_benchmark(Path(sources.benchmark_root), oxford)
                runs = sorted(p.name for p in oxford.iterdir() if p.is_dir() and C.RUN_NAME_RE.match(p.name))
                report.runs = runs
            else:
                if raw_root is None:
                    raise InputError("no input: set `source.raw_root` (raw RobotCar runs) or `source.benchmark_root` "
                                     "(an existing benchmark_datasets folder)")
                runs = discover_runs(raw_root, report)
                if not runs:
                    raise InputError(f"{raw_root}: no usable run folders (YYYY-MM-DD-HH-MM-SS with lms_front and "
                                     f"stereo data); see the skipped folders: {report.runs_skipped}")
                jobs = [(str(raw_root / r), str(oxford / r), submaps, ext_dir) for r in runs]
                for run, counts, error, run_skips, reused in _map(executor, build_submaps_for_run, jobs, "submaps",
                                                                   progress):
                    skips.extend(run_skips)
                    if error is not None:
                        report.runs_skipped[run] = error
                        log.warning("run %s skipped: %s", run, error)
                        continue
                    if reused:
                        report.runs_reused.append(run)
                report.runs_reused.sort()
                runs = [r for r in runs if r not in report.runs_skipped]
                report.runs = runs
            report.timings_s["submaps"] = time.perf_counter() - t0

            train_loc = _locations(oxford, runs, C.TRAIN_LOCATIONS_CSV)
            eval_loc = _locations(oxford, runs, C.EVAL_LOCATIONS_CSV)
            for run in runs:
                report.submaps[run] = {"train": int((train_loc["run"] == run).sum()),
                                       "eval": int((eval_loc["run"] == run).sum())}

            # 2. images
            t0 = time.perf_counter()
            image_root = Path(sources.image_root) if sources.image_root else out / "images"
            all_submaps = list(dict.fromkeys(
                list(zip(train_loc["run"], train_loc["timestamp"].astype(int)))
                + list(zip(eval_loc["run"], eval_loc["timestamp"].astype(int)))))
            if sources.image_root and (image_root / LIDAR2IMAGE).is_file():
                pairs = _pairs_from_index(load_pickle(image_root / LIDAR2IMAGE), all_submaps, image_root)
            else:
                if raw_root is None:
                    raise InputError("image pairing needs the raw camera frames: set `source.raw_root`, or point "
                                     "`source.image_root` at a folder holding lidar2image_ndx.pickle")
                pairs = _pair_and_convert(raw_root, runs, all_submaps, image_root, max(1, workers), pairing, sources,
                                          executor, skips, report, progress)
            report.pairs = sum(bool(pairs.get((r, int(t))) and pairs[(r, int(t))].image_ts)
                               for loc in (train_loc, eval_loc) for r, t in zip(loc["run"], loc["timestamp"]))
            report.timings_s["images"] = time.perf_counter() - t0

            # 3. splits, pickles, manifest
            t0 = time.perf_counter()
            _write_splits(bench, image_root, out, train_loc, eval_loc, pairs, splits, drop_unpaired, report)
            report.timings_s["splits"] = time.perf_counter() - t0
    finally:
        report.skips = skips.items
    md, js = report.write(out)
    report.outputs.update({"report": str(md), "report_json": str(js)})
    return report


def _link_benchmark(benchmark_root: Path, oxford: Path) -> None:
    """Use an existing ``benchmark_datasets/oxford`` through a symlink in the output: its clouds are read, never
    modified, and the pickles written next to the link resolve their relative paths as upstream expects."""
    source = (benchmark_root / "oxford").resolve()
    if not source.is_dir():
        raise InputError(f"{benchmark_root / 'oxford'}: not found; `benchmark_root` must be PointNetVLAD's "
                         f"benchmark_datasets folder (holding oxford/<run>/pointcloud_20m*/)")
    if oxford.is_symlink() and oxford.resolve() == source:
        return
    if oxford.exists() or oxford.is_symlink():
        raise InputError(f"{oxford}: already exists and is not a link to {source}; choose another output folder")
    oxford.parent.mkdir(parents=True, exist_ok=True)
    try:
        oxford.symlink_to(source, target_is_directory=True)
    except OSError as exc:
        raise output_error(oxford, exc) from exc


def _locations(oxford: Path, runs: list[str], csv: str) -> pd.DataFrame:
    frames = []
    for run in runs:
        df = read_locations_csv(oxford / run / csv)
        df.insert(0, "run", run)
        frames.append(df)
    if not frames:
        return pd.DataFrame({"run": pd.Series(dtype=str), "timestamp": pd.Series(dtype=np.int64),
                             "northing": pd.Series(dtype=float), "easting": pd.Series(dtype=float)})
    return pd.concat(frames, ignore_index=True)


def _pairs_from_index(index: dict, submaps: list[tuple[str, int]], image_root: Path) -> dict:
    pairs = {}
    for run, ts in submaps:
        imgs = [int(t) for t in index.get(ts, index.get(np.int64(ts), []))]
        imgs = [t for t in imgs if (image_root / run / f"{t}.png").is_file()]
        pairs[(run, ts)] = PairResult(run, ts, imgs, [run] * len(imgs),
                                      abs(imgs[0] - ts) / 1e6 if imgs else float("inf"))
    return pairs


def _pair_and_convert(raw_root: Path, runs: list[str], submaps: list[tuple[str, int]], image_root: Path,
                      workers: int, cfg: PairingConfig, sources: Sources, executor, skips: SkipLog, report: Report,
                      progress: bool) -> dict:
    frames = {}
    for run in runs:
        ts_file = raw_root / run / "stereo.timestamps"
        if not ts_file.is_file():
            frames[run] = np.zeros(0, np.int64)
            continue
        frames[run] = existing_frames(read_timestamps(ts_file, skips), raw_root / run / "stereo" / "centre", ".png",
                                      skips)
    results = pair_submaps(submaps, frames, cfg)
    lut = None
    if cfg.undistort:
        models = Path(sources.models_dir) if sources.models_dir else raw_root / "models"
        lut = read_camera_model(models, STEREO_CENTRE_MODEL, load_lut=True).lut
        if lut is None:
            raise InputError(f"{models}/{STEREO_CENTRE_MODEL}_distortion_lut.bin: not found; copy the SDK's models/ "
                             f"folder there or set `pairing.undistort: false`")
    reuse = _check_image_stamp(image_root, cfg.image_key())
    needed = sorted({(r, t) for res in results for r, t in zip(res.image_runs, res.image_ts)})
    todo, n_reused = [], 0
    for run, t in needed:
        dst = image_root / run / f"{t}.png"
        if reuse and dst.is_file() and dst.stat().st_size > 0:
            n_reused += 1
            continue
        todo.append((str(raw_root / run / "stereo" / "centre" / f"{t}.png"), str(dst)))
    atomic_write_json(image_root / IMAGE_STAMP, cfg.image_key())
    failed = set()
    # about 8 batches per worker, at most 64 frames each: a smooth progress bar without per-frame overhead
    chunk = max(1, min(64, len(todo) // (8 * workers)))
    batches = [(todo[i:i + chunk], cfg.mode, lut, cfg.downsample) for i in range(0, len(todo), chunk)]
    bar_total = len(batches)
    for result in _map(executor, convert_frames, batches, "images", progress, total=bar_total):
        for src, err in result:
            if err is not None:
                kind, detail = err.split("|", 1)
                skips.add(kind, src, detail)
                failed.add(Path(src).stem)
    report.images_written = len(todo) - len(failed)
    report.images_reused = n_reused
    pairs = {}
    for res in results:
        keep = [(r, t) for r, t in zip(res.image_runs, res.image_ts) if str(t) not in failed]
        reason = None
        if not res.image_ts:
            reason = ("no camera frames in the run" if not np.isfinite(res.nearest_dt_s)
                      else f"nearest frame {res.nearest_dt_s:.3f} s away > {cfg.threshold_s} s")
        elif not keep:
            reason = "every paired frame is unreadable"
        res = PairResult(res.run, res.lidar_ts, [t for _, t in keep], [r for r, _ in keep], res.nearest_dt_s)
        pairs[(res.run, res.lidar_ts)] = res
        if reason:
            report.unpaired.append({"run": res.run, "timestamp": res.lidar_ts, "nearest_dt_s": res.nearest_dt_s,
                                    "reason": reason})
    index = {np.int64(ts): [np.int64(t) for t in res.image_ts] for (run, ts), res in pairs.items() if res.image_ts}
    write_pickle(image_root / LIDAR2IMAGE, index)
    return pairs


def _write_splits(bench: Path, image_root: Path, out: Path, train_loc: pd.DataFrame, eval_loc: pd.DataFrame,
                  pairs: dict, cfg: SplitConfig, drop_unpaired: bool, report: Report) -> None:
    def paired(df):
        return np.array([bool(pairs.get((r, int(t))) and pairs[(r, int(t))].image_ts)
                         for r, t in zip(df["run"], df["timestamp"])], bool)

    if drop_unpaired:
        train_loc = train_loc[paired(train_loc)].reset_index(drop=True)
        eval_loc = eval_loc[paired(eval_loc)].reset_index(drop=True)
    eval_runs = select_runs(eval_loc["run"].unique().tolist(), cfg.test_runs)
    eval_loc = eval_loc[eval_loc["run"].isin(eval_runs)].reset_index(drop=True)

    train_loc = train_loc.copy()
    train_loc["split"] = assign_training_splits(train_loc, cfg)
    train_loc["submap_set"] = "20m_10overlap"
    train_loc["cloud"] = [f"oxford/{r}/{C.TRAIN_CLOUD_DIR}/{t}.bin" for r, t in zip(train_loc["run"],
                                                                                    train_loc["timestamp"])]
    eval_loc = eval_loc.copy()
    eval_loc["split"] = "eval"
    eval_loc["submap_set"] = "20m"
    eval_loc["cloud"] = [f"oxford/{r}/{C.EVAL_CLOUD_DIR}/{t}.bin" for r, t in zip(eval_loc["run"],
                                                                               eval_loc["timestamp"])]
    table = pd.concat([train_loc, eval_loc], ignore_index=True)
    table.insert(0, "sample_id", np.arange(len(table), dtype=np.int64))
    table["tuple_id"] = -1
    table["is_query"] = False
    empty = np.zeros(0, np.int64)
    positives_col = [empty] * len(table)
    non_negatives_col = [empty] * len(table)
    sample_ids = table["sample_id"].to_numpy()

    # training and test-query tuples (ids consecutive within each pickle, as upstream)
    for split, name in (("train", "training"), ("test", "test")):
        rows = table.index[(table["submap_set"] == "20m_10overlap") & (table["split"] == split)].to_numpy()
        sub = table.loc[rows]
        positives, non_negatives = training_tuples(sub[["northing", "easting"]].to_numpy(), cfg)
        tuples = {}
        for i, (row, ts, cloud, n, e) in enumerate(zip(rows, sub["timestamp"], sub["cloud"], sub["northing"],
                                                       sub["easting"])):
            tuples[i] = TrainingTuple(i, int(ts), cloud, positives[i], non_negatives[i], np.array([n, e]))
            positives_col[row] = sample_ids[rows[positives[i]]]
            non_negatives_col[row] = sample_ids[rows[non_negatives[i]]]
        table.loc[rows, "tuple_id"] = np.arange(len(rows))
        write_training_tuples(bench / PICKLES[name], tuples)
        report.outputs[name] = str(bench / PICKLES[name])
    table["positives"] = pd.Series(positives_col, index=table.index, dtype=object)
    table["non_negatives"] = pd.Series(non_negatives_col, index=table.index, dtype=object)

    # evaluation (20m, test runs) and validation (10overlap val cells) sets
    def set_ids(mask):
        sub = table[mask]
        for run in sub["run"].unique():
            idx = sub.index[sub["run"] == run]
            table.loc[idx, "tuple_id"] = np.arange(len(idx))

    ev_mask = (table["submap_set"] == "20m").to_numpy()
    ev = table[ev_mask]
    qmask = in_test_squares(ev["northing"], ev["easting"], cfg.test_squares, cfg.test_square_half_width_m)
    table.loc[ev_mask, "is_query"] = qmask
    sets = evaluation_sets(ev, lambda r, t: f"oxford/{r}/{C.EVAL_CLOUD_DIR}/{t}.bin", qmask, cfg.eval_radius_m)
    set_ids(ev_mask)
    write_pickle(bench / PICKLES["eval_database"], sets.database)
    write_pickle(bench / PICKLES["eval_query"], sets.query)
    va_mask = ((table["submap_set"] == "20m_10overlap") & (table["split"] == "val")).to_numpy()
    va = table[va_mask]
    vsets = evaluation_sets(va, lambda r, t: f"oxford/{r}/{C.TRAIN_CLOUD_DIR}/{t}.bin", np.ones(len(va), bool),
                            cfg.eval_radius_m)
    table.loc[va_mask, "is_query"] = True
    set_ids(va_mask)
    write_pickle(bench / PICKLES["val_database"], vsets.database)
    write_pickle(bench / PICKLES["val_query"], vsets.query)
    for key in ("eval_database", "eval_query", "val_database", "val_query"):
        report.outputs[key] = str(bench / PICKLES[key])

    # images
    def image_cols(run, ts):
        res = pairs.get((run, int(ts)))
        if res is None or not res.image_ts:
            return None, np.zeros(0, np.int64), float("nan")
        return f"{res.image_runs[0]}/{res.image_ts[0]}.png", np.asarray(res.image_ts, np.int64), \
            abs(res.image_ts[0] - int(ts)) / 1e6

    cols = [image_cols(r, t) for r, t in zip(table["run"], table["timestamp"])]
    table["image"] = [c[0] for c in cols]
    table["image_timestamps"] = pd.Series([c[1] for c in cols], index=table.index, dtype=object)
    table["image_dt_s"] = [c[2] for c in cols]
    table["tuple_id"] = table["tuple_id"].astype(np.int64)
    table["is_query"] = table["is_query"].astype(bool)

    meta = {"benchmark_root": os.path.relpath(bench, out), "image_root": os.path.relpath(image_root, out),
            "positive_radius_m": cfg.positive_radius_m, "non_negative_radius_m": cfg.non_negative_radius_m,
            "eval_radius_m": cfg.eval_radius_m, "version": package_version()}
    write_manifest(out / MANIFEST_NAME, table, meta)
    report.outputs["manifest"] = str(out / MANIFEST_NAME)
    report.outputs["images"] = str(image_root)
    report.outputs["lidar2image"] = str(image_root / LIDAR2IMAGE)
    s = table[table["submap_set"] == "20m_10overlap"]["split"].value_counts()
    report.splits = {k: int(s.get(k, 0)) for k in ("train", "val", "test", "unused")}
    report.eval_sets = {"runs": len(sets.runs), "database": int(ev_mask.sum()), "queries": int(qmask.sum()),
                        "validation_runs": len(vsets.runs), "validation_samples": int(va_mask.sum())}
