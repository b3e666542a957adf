"""Kill a real process (SIGKILL, no chance to clean up) in the middle of preprocessing, teacher training and the
distillation pipeline, re-run THE SAME command, and check the result equals an uninterrupted run's, bit for bit
(CPU, same seed, ``trainer.deterministic=true``)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest
import torch

from crossmodal.training import load_checkpoint
from crossmodal.training.teacher_cache import read_cache
from crossmodal.training.testing import (
    TINY_CLOUD,
    folders,
    history_rows,
    run_python,
    script_env,
    tiny_overrides,
)

ROOT = Path(__file__).resolve().parents[1]


def run_and_kill(args: list[str], cwd: Path, when: Callable[[], bool], timeout: float = 600) -> None:
    """Start the command and SIGKILL its process group as soon as ``when()`` holds; fail if it ends first."""
    proc = subprocess.Popen([sys.executable, *args], cwd=cwd, env=script_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.monotonic() + timeout
    try:
        while not when():
            if proc.poll() is not None:
                pytest.fail(f"the process ended before the kill point (exit {proc.returncode}): "
                            f"{proc.stderr.read()[-3000:]}")
            if time.monotonic() > deadline:
                pytest.fail("the kill point never came")
            time.sleep(0.01)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL


def assert_same_training(a_dir: Path, b_dir: Path) -> None:
    a, b = load_checkpoint(a_dir / "last.pt"), load_checkpoint(b_dir / "last.pt")
    assert history_rows(a["history"]) == history_rows(b["history"])
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k
    sa, sb = (json.loads((d / "summary.json").read_text()) for d in (a_dir, b_dir))
    assert sa["finished"] and sb["finished"]
    assert sa["best"] == sb["best"] and sa["test_best_checkpoint"] == sb["test_best_checkpoint"]


# ------------------------------------------------------------------------------------------------------------
def test_killed_teacher_training_resumes_with_the_same_command(fake, tmp_path):
    args = [str(ROOT / "scripts" / "train_teacher.py"), *tiny_overrides("fusion"), f"dataset_dir={fake}",
            "trainer.epochs=3", "optimizer.milestones=[2]", "trainer.deterministic=true",
            "trainer.max_steps_per_epoch=3"]
    run_python(*args, f"output_root={tmp_path / 'ref'}", cwd=tmp_path)
    (ref,) = (tmp_path / "ref" / "train_teacher" / "fusion").iterdir()

    runs = tmp_path / "runs"
    folder = runs / "train_teacher" / "fusion"
    run_and_kill([*args, f"output_root={runs}"], tmp_path, lambda: any(folder.glob("*/last.pt")))
    (killed,) = folder.iterdir()
    assert not (killed / "summary.json").exists()
    time.sleep(1.1)  # the re-run gets its own timestamped folder
    proc = run_python(*args, f"output_root={runs}", cwd=tmp_path)  # the same command
    (resumed,) = [d for d in folder.iterdir() if d != killed]
    summary = json.loads((resumed / "summary.json").read_text())
    assert summary["resumed_from"] == str(killed / "last.pt"), proc.stderr[-2000:]
    assert_same_training(ref, resumed)

    # a third run of the same command starts afresh: the newest run of this config is finished
    time.sleep(1.1)
    run_python(*args, f"output_root={runs}", cwd=tmp_path)
    (third,) = [d for d in folder.iterdir() if d not in (killed, resumed)]
    assert json.loads((third / "summary.json").read_text())["resumed_from"] is None


def _distill_args(fake: Path, output_root: Path) -> list[str]:
    teacher = ["trainer.epochs=2", "optimizer.milestones=[1]", "trainer.deterministic=true",
               "trainer.max_steps_per_epoch=3", "data.quantization_size=0.2", "data.batch_size=8",
               "data.eval_batch_size=16", "data.num_workers=0", "trainer.eval_test=false"]
    return [str(ROOT / "scripts" / "distill.py"), f"dataset_dir={fake}", "dataset.synthetic=null",
            "distill=feature_l2", *TINY_CLOUD, "student.out_dim=272", "data.batch_size=8", "data.eval_batch_size=16",
            "data.num_workers=0", "trainer.progress=false", "trainer.epochs=3", "optimizer.milestones=[2]",
            "trainer.deterministic=true", "trainer.max_steps_per_epoch=3", "evaluation.report=false",
            "student_alone.enabled=false",
            "teacher_training.overrides=[" + ",".join(f"'{o}'" for o in teacher) + "]",
            f"output_root={output_root}"]


def test_killed_distillation_resumes_with_the_same_command(fake, tmp_path):
    """Killed during teacher training, then again during the student's training: the same command three times
    ends like one uninterrupted run (teacher, cache, student)."""
    run_python(*_distill_args(fake, tmp_path / "ref"), cwd=tmp_path)
    runs = tmp_path / "runs"
    args = _distill_args(fake, runs)
    run_and_kill(args, tmp_path, lambda: any((runs / "teachers").glob("*/last.pt")))
    assert not any((runs / "students").glob("*/last.pt"))
    run_and_kill(args, tmp_path, lambda: any((runs / "students").glob("*/last.pt")))
    time.sleep(1.1)
    proc = run_python(*args, cwd=tmp_path)
    log = proc.stdout + proc.stderr
    assert "stage 2/6 teacher: reusing" in log and "resuming the interrupted student" in log

    for stage in ("teachers", "students"):
        # (the students' folder names differ: their hash covers the cache key, i.e. the teacher checkpoint file,
        # whose bytes hold paths and timings; a re-run in the same output_root reuses that very file)
        (a,) = folders(tmp_path / "ref" / stage)
        (b,) = folders(runs / stage)
        assert_same_training(a, b)
    (ca,) = (tmp_path / "ref" / "teacher_cache").iterdir()
    (cb,) = (runs / "teacher_cache").iterdir()
    cache_a, cache_b = read_cache(ca), read_cache(cb)
    assert (cache_a.sample_ids == cache_b.sample_ids).all() and cache_a.outputs == cache_b.outputs
    for k, v in cache_a.tensors.items():
        assert torch.equal(v, cache_b.tensors[k]), k
    runs_of = sorted((runs / "distill" / "feature_l2").iterdir())
    assert len(runs_of) == 3 and (runs_of[-1] / "summary.json").is_file()
    (ref_run,) = (tmp_path / "ref" / "distill" / "feature_l2").iterdir()
    ra, rb = (json.loads((d / "summary.json").read_text())["rows"] for d in (ref_run, runs_of[-1]))
    assert [{k: v for k, v in r.items() if k != "run_dir"} for r in ra] == \
           [{k: v for k, v in r.items() if k != "run_dir"} for r in rb]
    assert (runs_of[-1] / "student" / "best.pt").is_file()


def test_killed_preprocessing_resumes_with_the_same_command(tiny_raw, tmp_path):
    """The tiny synthetic RobotCar of tests/conftest.py; killed once the first run's submaps are stamped and
    again while the images are converted (when the re-run gets that far before it finishes)."""
    def args(out: Path) -> list[str]:
        return [str(ROOT / "scripts" / "preprocess_oxford.py"), "source=oxford", f"source.paths.raw_root={tiny_raw}",
                f"source.output_dir={out}", f"data_dir={tmp_path}", "splits.val_cell_m=30.0",
                "splits.val_fraction=0.3", "workers=1", "progress=false"]

    run_python(*args(tmp_path / "ref"), cwd=tmp_path)
    out = tmp_path / "out"
    run_and_kill(args(out), tmp_path, lambda: any(out.glob("benchmark_datasets/oxford/*/.submaps_done.json")))
    assert not (out / "manifest.parquet").exists()
    proc = subprocess.Popen([sys.executable, *args(out)], cwd=tmp_path, env=script_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    while proc.poll() is None and not any((out / "images").glob("*/*.png")):
        time.sleep(0.01)
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    run_python(*args(out), cwd=tmp_path)

    def snapshot(root: Path) -> dict[str, bytes]:
        return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
                if p.is_file() and p.suffix in (".bin", ".csv", ".pickle", ".png") and "logs" not in p.parts}

    a, b = snapshot(tmp_path / "ref"), snapshot(out)
    assert a.keys() == b.keys() and len(a) > 10
    assert all(a[k] == b[k] for k in a)
    assert not list(out.rglob("*.tmp"))
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "ref" / "manifest.parquet"),
                                  pd.read_parquet(out / "manifest.parquet"))
