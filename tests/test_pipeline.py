"""The preprocessing pipeline end to end on the tiny synthetic RobotCar: outputs, upstream compatibility,
resumability and every bad-input case."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from preprocessing.errors import InputError, OutputError
from preprocessing.manifest import read_manifest
from preprocessing.pipeline import PICKLES, Sources, preprocess
from preprocessing.robotcar import constants as C
from preprocessing.robotcar.timestamps import read_timestamps
from preprocessing.splits import in_test_squares
from preprocessing.upstream import load_pickle
from tests.conftest import tiny_splits

REPO = Path(__file__).resolve().parents[1]


def run_pipeline(raw, out, **kw):
    kw.setdefault("splits", tiny_splits())
    return preprocess(Sources(raw_root=str(raw)), out, workers=1, progress=False, **kw)


def first_run(raw: Path) -> Path:
    return sorted(p for p in raw.iterdir() if C.RUN_NAME_RE.match(p.name))[0]


# ------------------------------------------------------------------------------------------------------------
# outputs

def test_submap_files_are_benchmark_clouds(tiny_processed):
    _, out, report = tiny_processed
    bins = sorted((out / "benchmark_datasets" / "oxford").rglob("*.bin"))
    assert len(bins) == sum(sum(v.values()) for v in report.submaps.values()) > 0
    for b in bins:
        assert b.stat().st_size == 4096 * 3 * 8
        pc = np.fromfile(b, dtype=np.float64).reshape(-1, 3)
        assert pc.shape == (4096, 3) and np.isfinite(pc).all()
        assert np.abs(pc).max() <= 1.0
    # z up: buildings rise above the (removed) ground, so most points lie above the lowest decile
    pc = np.fromfile(bins[len(bins) // 2], dtype=np.float64).reshape(-1, 3)
    assert np.median(pc[:, 2]) > np.percentile(pc[:, 2], 10)


def test_locations_csv_format(tiny_processed):
    _, out, _ = tiny_processed
    for csv in (out / "benchmark_datasets" / "oxford").rglob("pointcloud_locations_*.csv"):
        lines = csv.read_text().splitlines()
        assert lines[0] == "timestamp,northing,easting"
        for line in lines[1:]:
            ts, n, e = line.split(",")
            assert len(ts) == 16 and ts.isdigit()
            assert len(n.split(".")[1]) == 6 and len(e.split(".")[1]) == 6
            folder = C.TRAIN_CLOUD_DIR if "10overlap" in csv.name else C.EVAL_CLOUD_DIR
            assert (csv.parent / folder / f"{ts}.bin").is_file()


def test_manifest_agrees_with_pickles(tiny_processed):
    _, out, report = tiny_processed
    table, meta = read_manifest(out)
    bench = Path(meta["benchmark_root"])
    assert set(table["split"]) <= {"train", "val", "test", "unused", "eval"}
    assert report.splits["train"] > 0 and report.splits["test"] > 0 and report.splits["val"] > 0
    train = load_pickle(bench / PICKLES["training"])
    rows = table[(table["submap_set"] == "20m_10overlap") & (table["split"] == "train")].sort_values("tuple_id")
    assert len(train) == len(rows)
    by_sample = dict(zip(table["sample_id"], table["tuple_id"]))
    for (_, r), (i, t) in zip(rows.iterrows(), sorted(train.items())):
        assert t.id == i == r["tuple_id"] and t.timestamp == r["timestamp"] and t.rel_scan_filepath == r["cloud"]
        assert [by_sample[s] for s in r["positives"]] == t.positives.tolist()
        assert [by_sample[s] for s in r["non_negatives"]] == t.non_negatives.tolist()
        assert np.allclose(t.position, [r["northing"], r["easting"]])
    # every paired row's nearest image exists and is the first of its k frames
    image_root = Path(meta["image_root"])
    paired = table[table["image"].notna()]
    assert len(paired) == len(table)  # drop_unpaired default
    for _, r in paired.head(20).iterrows():
        assert (image_root / r["image"]).is_file()
        assert r["image"].endswith(f"/{r['image_timestamps'][0]}.png")


def test_evaluation_sets_match_brute_force(tiny_processed):
    _, out, _ = tiny_processed
    bench = out / "benchmark_datasets"
    db, qs = load_pickle(bench / PICKLES["eval_database"]), load_pickle(bench / PICKLES["eval_query"])
    assert len(db) == len(qs) == 2
    for j, q in enumerate(qs):
        assert len(q) > 0
        for entry in q.values():
            assert in_test_squares([entry["northing"]], [entry["easting"]], C.TEST_SQUARES, 150.0)[0]
            assert j not in entry
            for m, dbm in enumerate(db):
                if m == j:
                    continue
                brute = [k for k, d in dbm.items()
                         if np.hypot(d["northing"] - entry["northing"], d["easting"] - entry["easting"]) <= 25.0]
                assert entry[m] == brute


def test_outputs_load_exactly_as_minkloc_reads_them(tiny_processed, tmp_path):
    """Plain numpy/pickle code with MinkLoc++'s own TrainingTuple class and image lookup."""
    _, out, _ = tiny_processed
    pkg = tmp_path / "upstream" / "datasets"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "oxford.py").write_text(textwrap.dedent("""
        import numpy as np
        class TrainingTuple:
            def __init__(self, id, timestamp, rel_scan_filepath, positives, non_negatives, position):
                assert position.shape == (2,)
                self.id = id; self.timestamp = timestamp; self.rel_scan_filepath = rel_scan_filepath
                self.positives = positives; self.non_negatives = non_negatives; self.position = position
    """))
    script = textwrap.dedent(f"""
        import os, pickle, random, numpy as np
        from PIL import Image
        dataset_path = {str(out / 'benchmark_datasets')!r}
        image_path = {str(out / 'images')!r}
        queries = pickle.load(open(os.path.join(dataset_path, 'training_queries_baseline.pickle'), 'rb'))
        lidar2image_ndx = pickle.load(open(os.path.join(image_path, 'lidar2image_ndx.pickle'), 'rb'))
        n = 0
        for ndx in queries:
            q = queries[ndx]
            assert q.id == ndx
            pc = np.fromfile(os.path.join(dataset_path, q.rel_scan_filepath), dtype=np.float64)
            assert pc.shape[0] == 4096 * 3
            lidar_ts = int(os.path.splitext(os.path.split(q.rel_scan_filepath)[1])[0])
            traversal = os.path.split(os.path.split(os.path.split(q.rel_scan_filepath)[0])[0])[1]
            assert len(traversal) == 19
            assert lidar_ts in lidar2image_ndx
            image_ts = random.choice(lidar2image_ndx[lidar_ts])
            img = Image.open(os.path.join(image_path, traversal, str(image_ts) + '.png'))
            assert img.mode == 'RGB'
            for p in q.positives:
                assert ndx in queries[p].positives
            n += 1
        for name in ('oxford_evaluation_database.pickle', 'oxford_evaluation_query.pickle'):
            sets = pickle.load(open(os.path.join(dataset_path, name), 'rb'))
            for s in sets:
                for k, e in s.items():
                    assert os.path.exists(os.path.join(dataset_path, e['query']))
        print('ok', n)
    """)
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(tmp_path / "upstream")}, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("ok") and int(res.stdout.split()[1]) > 0


def test_report_files(tiny_processed):
    _, out, report = tiny_processed
    js = json.loads((out / "report.json").read_text())
    assert js["totals"]["runs"] == 2 and js["totals"]["submaps"] > 0
    md = (out / "report.md").read_text()
    assert "# Preprocessing report" in md and "Submaps per run" in md


# ------------------------------------------------------------------------------------------------------------
# determinism and resumability

def _snapshot(out: Path) -> dict[str, bytes]:
    files = {}
    for p in sorted(out.rglob("*")):
        if p.is_file() and p.suffix in (".bin", ".csv", ".pickle", ".png"):
            files[str(p.relative_to(out))] = p.read_bytes()
    return files


def test_rerun_reuses_everything_and_is_identical(tiny_processed, tmp_path):
    raw, out, first = tiny_processed
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    again = run_pipeline(raw, copy)
    assert again.runs_reused == first.runs and again.images_written == 0
    assert _snapshot(copy) == _snapshot(out)


def test_interrupted_job_completes_with_the_same_result(tiny_processed, tmp_path):
    raw, out, _ = tiny_processed
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    run = first_run(raw).name
    run_out = copy / "benchmark_datasets" / "oxford" / run
    (run_out / ".submaps_done.json").unlink()  # killed before the run was stamped
    for b in sorted((run_out / C.TRAIN_CLOUD_DIR).glob("*.bin"))[::2]:
        b.unlink()
    (run_out / C.EVAL_CLOUD_DIR / ".123.bin.x.tmp").write_bytes(b"half")  # a stale temporary
    imgs = sorted((copy / "images" / run).glob("*.png"))
    for p in imgs[::3]:
        p.unlink()
    for name in PICKLES.values():
        (copy / "benchmark_datasets" / name).unlink()
    again = run_pipeline(raw, copy)
    assert run not in again.runs_reused and again.images_written == len(imgs[::3])
    assert not list(copy.rglob("*.tmp"))
    assert _snapshot(copy) == _snapshot(out)


def test_same_result_with_two_workers(tiny_processed, tmp_path):
    raw, out, _ = tiny_processed
    preprocess(Sources(raw_root=str(raw)), tmp_path / "out", splits=tiny_splits(), workers=2, progress=False)
    assert _snapshot(tmp_path / "out") == _snapshot(out)


# ------------------------------------------------------------------------------------------------------------
# bad input

def skipped(report, kind):
    return [s for s in report.skips if s.kind == kind]


def test_corrupt_png_is_skipped_and_counted(raw_copy, tmp_path, tiny_processed):
    _, out, _ = tiny_processed
    table, _ = read_manifest(out)
    row = table.iloc[0]
    run, ts = row["run"], int(row["image_timestamps"][0])
    frame = raw_copy / run / "stereo" / "centre" / f"{ts}.png"
    frame.write_bytes(frame.read_bytes()[:100])  # truncated download
    report = run_pipeline(raw_copy, tmp_path / "out")
    bad = skipped(report, "corrupt_image")
    assert [s.path for s in bad] == [str(frame)]
    assert "truncated" in bad[0].detail
    assert not (tmp_path / "out" / "images" / run / f"{ts}.png").exists()
    table2, _ = read_manifest(tmp_path / "out")
    r2 = table2[(table2["run"] == run) & (table2["timestamp"] == row["timestamp"])
                & (table2["submap_set"] == row["submap_set"])]
    assert len(r2) == 1 and ts not in r2.iloc[0]["image_timestamps"].tolist()
    assert "corrupt_image" in (tmp_path / "out" / "report.md").read_text()


def test_truncated_scan_and_missing_files_are_skipped(raw_copy, tmp_path):
    run = first_run(raw_copy)
    scans = sorted((run / "lms_front").glob("*.bin"))
    scans[50].write_bytes(scans[50].read_bytes()[:1000])
    scans[60].unlink()  # listed in lms_front.timestamps, absent on disk
    frames = sorted((run / "stereo" / "centre").glob("*.png"))
    frames[3].unlink()
    report = run_pipeline(raw_copy, tmp_path / "out")
    assert [s.path for s in skipped(report, "corrupt_scan")] == [str(scans[50])]
    missing = {s.path for s in skipped(report, "missing_file")}
    assert {str(scans[60]), str(frames[3])} <= missing
    assert report.submaps[run.name]["train"] > 0


def test_malformed_ins_rows_and_gaps(raw_copy, tmp_path):
    run = first_run(raw_copy)
    ins = run / "gps" / "ins.csv"
    lines = ins.read_text().splitlines()
    n = len(lines)
    gap = range(n // 2, n // 2 + 150)  # 3 s without INS at 50 Hz
    kept = [ln for i, ln in enumerate(lines) if i not in gap]
    kept.insert(10, "garbage,row")
    kept.insert(20, lines[20].replace("INS_SOLUTION_GOOD,", "INS_SOLUTION_GOOD,abc,", 1))
    ins.write_text("\n".join(kept) + "\n")
    report = run_pipeline(raw_copy, tmp_path / "out")
    assert len(skipped(report, "malformed_ins_row")) == 2
    assert all(str(ins) in s.path for s in skipped(report, "malformed_ins_row"))
    assert len(skipped(report, "no_ins_pose")) > 100
    assert report.submaps[run.name]["train"] > 0


def test_submaps_without_nearby_frames_are_listed_unpaired(raw_copy, tmp_path):
    run = first_run(raw_copy)
    scan_ts = read_timestamps(run / "lms_front.timestamps")
    t_mid = int(scan_ts[len(scan_ts) // 2])
    stamps = (run / "stereo.timestamps").read_text().splitlines()
    for line in stamps:
        t = int(line.split()[0])
        if abs(t - t_mid) < 6_000_000:  # no camera frame for 12 s around the middle
            (run / "stereo" / "centre" / f"{t}.png").unlink()
    report = run_pipeline(raw_copy, tmp_path / "out")
    assert report.unpaired and all(u["run"] == run.name for u in report.unpaired)
    assert all("> 1.0 s" in u["reason"] for u in report.unpaired)
    assert "Unpaired submaps" in (tmp_path / "out" / "report.md").read_text()
    table, _ = read_manifest(tmp_path / "out")
    unpaired = {(u["run"], u["timestamp"]) for u in report.unpaired}
    assert not unpaired & set(zip(table["run"], table["timestamp"]))


def test_empty_run_and_malformed_run_name_are_skipped(raw_copy, tmp_path):
    (raw_copy / "2015-01-01-00-00-00").mkdir()
    shutil.copytree(first_run(raw_copy), raw_copy / "my-run")
    report = run_pipeline(raw_copy, tmp_path / "out")
    assert "empty run" in report.runs_skipped["2015-01-01-00-00-00"]
    assert "malformed run folder name" in report.runs_skipped["my-run"]
    assert len(report.runs) == 2


def test_run_without_ins_is_skipped_with_the_file_named(raw_copy, tmp_path):
    run = first_run(raw_copy)
    (run / "gps" / "ins.csv").unlink()
    report = run_pipeline(raw_copy, tmp_path / "out")
    assert str(run / "gps" / "ins.csv") in report.runs_skipped[run.name]
    assert len(report.runs) == 1


def test_missing_raw_root_is_a_clear_error(tmp_path):
    with pytest.raises(InputError, match="raw data folder not found"):
        run_pipeline(tmp_path / "nope", tmp_path / "out")


@pytest.mark.parametrize("code,hint", [(errno.ENOSPC, "disk is full"), (errno.EROFS, "read-only")])
def test_full_disk_or_read_only_output_leaves_no_partial_files_and_rerun_completes(
        raw_copy, tmp_path, monkeypatch, code, hint, tiny_processed):
    import preprocessing.io as pio

    real_replace = os.replace
    calls = {"n": 0}

    def failing_replace(src, dst):
        calls["n"] += 1
        if calls["n"] == 40:
            raise OSError(code, os.strerror(code))
        return real_replace(src, dst)

    monkeypatch.setattr(pio.os, "replace", failing_replace)
    out = tmp_path / "out"
    with pytest.raises(OutputError, match=hint):
        run_pipeline(raw_copy, out)
    assert not list(out.rglob("*.tmp"))
    monkeypatch.setattr(pio.os, "replace", real_replace)
    run_pipeline(raw_copy, out)
    assert _snapshot(out) == _snapshot(tiny_processed[1])


def test_cli_reports_bad_input_without_traceback(tmp_path):
    res = subprocess.run([sys.executable, str(REPO / "scripts" / "preprocess_oxford.py"), "source=oxford",
                          f"source.paths.raw_root={tmp_path / 'missing'}", f"data_dir={tmp_path}", "progress=false"],
                         capture_output=True, text=True, cwd=tmp_path)
    assert res.returncode == 2
    assert "raw data folder not found" in res.stderr and "Traceback" not in res.stderr


def test_cli_reports_an_unwritable_output_folder(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    res = subprocess.run([sys.executable, str(REPO / "scripts" / "preprocess_oxford.py"), f"data_dir={blocker}",
                          "synthetic=quick", "progress=false"], capture_output=True, text=True, cwd=tmp_path)
    assert res.returncode == 2
    assert "cannot write" in res.stderr and str(blocker) in res.stderr and "Traceback" not in res.stderr


def test_existing_benchmark_and_images_are_reused_read_only(tiny_processed, tmp_path):
    """Users with PointNetVLAD's benchmark_datasets (and MinkLoc++ images) skip the steps they already have."""
    raw, out, _ = tiny_processed
    before = _snapshot(out)
    bench_only = preprocess(Sources(raw_root=str(raw), benchmark_root=str(out / "benchmark_datasets")),
                            tmp_path / "a", splits=tiny_splits(), workers=1, progress=False)
    assert bench_only.runs_reused == [] and bench_only.images_written > 0
    both = preprocess(Sources(benchmark_root=str(out / "benchmark_datasets"), image_root=str(out / "images")),
                      tmp_path / "b", splits=tiny_splits(), workers=1, progress=False)
    assert both.images_written == 0
    assert _snapshot(out) == before  # the user's folders are not modified
    for new in (tmp_path / "a", tmp_path / "b"):
        assert (new / "benchmark_datasets" / "oxford").is_symlink()
        for name in PICKLES.values():
            assert (new / "benchmark_datasets" / name).read_bytes() == (out / "benchmark_datasets" / name).read_bytes()
        table, meta = read_manifest(new)
        ref, _ = read_manifest(out)
        assert table.drop(columns=["image"]).equals(ref.drop(columns=["image"]))
        assert all((Path(meta["benchmark_root"]) / c).is_file() for c in table["cloud"])
        assert all((Path(meta["image_root"]) / i).is_file() for i in table["image"])
