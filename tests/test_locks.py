"""Concurrent jobs and the hash-keyed stage folders (crossmodal/pipelines/locks.py): one job trains a teacher or
student alone, the others wait for it and reuse it; a killed holder leaves no stale lock."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from crossmodal.pipelines.locks import POLL_ENV, folder_lock
from crossmodal.training.testing import TINY_CLOUD, folders, script_env

ROOT = Path(__file__).resolve().parents[1]

HOLDER = """
import sys, time
from pathlib import Path
from crossmodal.pipelines.locks import folder_lock
folder, flag = Path(sys.argv[1]), Path(sys.argv[2])
with folder_lock(folder, "holder", poll_s=0.05):
    flag.write_text("held")
    while not (flag.parent / "release").exists():
        time.sleep(0.02)
"""


def _hold(folder: Path, tmp_path: Path) -> subprocess.Popen:
    flag = tmp_path / "held"
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder), str(flag)], env=script_env(),
                            start_new_session=True)
    deadline = time.monotonic() + 60
    while not flag.exists():
        assert proc.poll() is None and time.monotonic() < deadline, "the holder never took the lock"
        time.sleep(0.02)
    return proc


def test_a_second_job_waits_for_the_holder_then_proceeds(tmp_path, caplog):
    folder = tmp_path / "runs" / "teachers" / "fusion-abc"
    holder = _hold(folder, tmp_path)
    threading.Timer(0.6, (tmp_path / "release").touch).start()
    t0 = time.monotonic()
    with caplog.at_level(logging.INFO, logger="crossmodal.pipelines.locks"), \
            folder_lock(folder, "stage 2/6 teacher", poll_s=0.05) as waited:
        inside = time.monotonic() - t0
    assert holder.wait(30) == 0
    assert waited >= 0.5 and inside >= 0.5
    assert f"waiting for pid {holder.pid} on " in caplog.text and str(folder.parent / ".locks" / "fusion-abc.lock") in caplog.text
    with folder_lock(folder, "again", poll_s=0.05) as waited:  # free: no wait
        assert waited < 0.5


def test_a_killed_holder_leaves_no_stale_lock(tmp_path):
    folder = tmp_path / "student"
    holder = _hold(folder, tmp_path)
    os.killpg(holder.pid, signal.SIGKILL)
    holder.wait()
    with folder_lock(folder, "after kill", poll_s=0.05) as waited:
        assert waited < 1.0
    assert (tmp_path / ".locks" / "student.lock").is_file() and not folder.exists()


def test_nested_locks_of_different_folders(tmp_path):
    with folder_lock(tmp_path / "a", "a", poll_s=0.05), folder_lock(tmp_path / "b", "b", poll_s=0.05) as waited:
        assert waited < 0.5


def test_concurrent_sweep_jobs_train_the_shared_teacher_and_student_alone_once(fake, tmp_path):
    """Two ``scripts/distill.py`` jobs started together (distill=feature_l2 and rkd, nothing trained yet), as a
    parallel sweep launches them: one teacher and one student alone are trained, both jobs finish."""
    teacher = ["trainer.epochs=1", "trainer.max_steps_per_epoch=2", "data.quantization_size=0.2", "data.batch_size=8",
               "data.eval_batch_size=16", "data.num_workers=0", "trainer.eval_test=false"]
    common = [str(ROOT / "scripts" / "distill.py"), f"dataset_dir={fake}", "dataset.synthetic=null", *TINY_CLOUD,
              "student.out_dim=272", "data.batch_size=8", "data.eval_batch_size=16", "data.num_workers=0",
              "trainer.progress=false", "trainer.epochs=1", "optimizer.milestones=[1]", "trainer.max_steps_per_epoch=2",
              "evaluation.report=false", "teacher_training.overrides=[" + ",".join(f"'{o}'" for o in teacher) + "]",
              f"output_root={tmp_path / 'runs'}"]
    env = {**script_env(), POLL_ENV: "0.2"}
    procs = [subprocess.Popen([sys.executable, *common, f"distill={d}", f"hydra.run.dir={tmp_path / d}"],
                              cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for d in ("feature_l2", "rkd")]
    logs = [p.communicate(timeout=600)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), [lg[-3000:] for lg in logs]
    text = "".join(logs)
    assert text.count("stage 2/6 teacher: training fusion") == 1
    assert text.count("stage 2/6 teacher: reusing") == 1
    assert text.count("stage 5/6 student alone: training in") == 1
    assert text.count("stage 5/6 student alone: reusing") == 1
    for stage in ("teachers", "students_alone"):
        assert len(folders(tmp_path / "runs" / stage)) == 1, stage
        assert (tmp_path / "runs" / stage / ".locks").is_dir()
