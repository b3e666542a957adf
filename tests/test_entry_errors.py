"""User errors at the entry points (issue 13): wrong values are rejected before any stage starts, and every user
error ends with one ``error: ...`` line and exit code 2 (no traceback; CROSSMODAL_DEBUG=1 brings it back)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from crossmodal.data.fake import write_fake_manifest
from crossmodal.launch import is_user_error, user_errors
from crossmodal.training.testing import script_env, write_eval_pickles

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _restore_error_hooks(monkeypatch):
    """An interrupt makes the teardown quiet by replacing the process's error hooks (it is ending); here the test
    process goes on, so they are put back after each test."""
    import threading

    for owner, name in ((sys, "unraisablehook"), (sys, "excepthook"), (threading, "excepthook")):
        monkeypatch.setattr(owner, name, getattr(owner, name))


def test_user_errors_context(capsys):
    with pytest.raises(SystemExit) as info, user_errors({}):
        raise ValueError("data.batch_size must be even\n   and at least 4")
    assert info.value.code == 2
    assert capsys.readouterr().err.strip() == ("error: data.batch_size must be even and at least 4 "
                                               "(traceback: CROSSMODAL_DEBUG=1)")
    with pytest.raises(ValueError), user_errors({"CROSSMODAL_DEBUG": "1"}):  # the traceback on request
        raise ValueError("x")
    with pytest.raises(ZeroDivisionError), user_errors({}):  # a bug keeps its traceback
        raise ZeroDivisionError
    assert is_user_error(FileNotFoundError()) and not is_user_error(KeyError())


def test_interrupts_end_with_one_line_and_the_shell_code(capsys):
    from preprocessing.processes import Terminated

    for exc, code, name in ((KeyboardInterrupt(), 130, "SIGINT"), (Terminated(), 143, "SIGTERM")):
        with pytest.raises(SystemExit) as info, user_errors({}):
            raise exc
        assert info.value.code == code
        assert capsys.readouterr().err.strip() == (f"interrupted by {name}; finished work is kept, re-run the same "
                                                   f"command to resume")


def test_a_worker_error_after_sigterm_is_still_a_stop(capsys):
    import os
    import signal
    import time

    from preprocessing.processes import Terminated

    with pytest.raises(SystemExit) as info, user_errors({}):
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
        except Terminated:
            pass  # as a library's clean-up may swallow it; a killed DataLoader worker then surfaces first
        raise RuntimeError("DataLoader worker (pid 1) is killed by signal: Terminated.")
    assert info.value.code == 143 and capsys.readouterr().err.startswith("interrupted by SIGTERM")
    with pytest.raises(RuntimeError), user_errors({}):  # a new block starts with no SIGTERM recorded
        raise RuntimeError("a real crash")
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # the handler is restored after the block


def test_the_run_summary_records_what_ended_the_run(tmp_path, capsys):
    cases = [(ValueError("bad value"), "user_error", "bad value"), (ZeroDivisionError("boom"), "crash",
             "ZeroDivisionError: boom"), (KeyboardInterrupt(), "interrupted", "interrupted by SIGINT")]
    for exc, reason, message in cases:
        with pytest.raises((SystemExit, ZeroDivisionError)), user_errors({}, run_dir=tmp_path):
            raise exc
        summary = json.loads((tmp_path / "summary.json").read_text())
        assert summary["finished"] is False and summary["reason"] == reason and message in summary["error"]
    (tmp_path / "summary.json").write_text(json.dumps({"finished": True}))
    with pytest.raises(SystemExit), user_errors({}, run_dir=tmp_path):  # never over a finished run's summary
        raise ValueError("late")
    assert json.loads((tmp_path / "summary.json").read_text()) == {"finished": True}
    with pytest.raises(SystemExit), user_errors({"RANK": "1", "WORLD_SIZE": "2"}, run_dir=tmp_path / "r1"):
        raise ValueError("rank 1 writes nothing")
    assert not (tmp_path / "r1").exists()
    capsys.readouterr()


@pytest.fixture(scope="module")
def empty_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("entry")
    write_fake_manifest(root / "data", runs=3, train_per_run=6, eval_per_run=4)
    return root


@pytest.mark.parametrize("override, message", [
    ("data.batch_size=abc", "invalid literal for int() with base 10: 'abc'"),
    ("data.batch_size=-4", "data.batch_size must be even and at least 4"),
    ('teacher_training.overrides=["data.batch_size=2"]', "data.batch_size must be even and at least 4"),
    ("teacher_training.checkpoint=/nonexistent/best.pt", "no checkpoint at /nonexistent/best.pt"),
])
def test_distill_rejects_before_any_stage(empty_runs, tmp_path, override, message):
    runs = tmp_path / "runs"
    cmd = [sys.executable, "scripts/distill.py", "preset=quick", f"dataset_dir={empty_runs / 'data'}",
           f"output_root={runs}", "trainer.progress=false", override]
    proc = subprocess.run(cmd, cwd=ROOT, env=script_env(), capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 2, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and message in last, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    # no stage started: no teacher, cache or student folder was made; the run's log records the error
    assert sorted(p.name for p in runs.iterdir()) == ["distill"]
    (log,) = runs.glob("distill/*/*/distill.log")
    assert "run failed: " in log.read_text()
    summary = json.loads((log.parent / "summary.json").read_text())
    assert summary["reason"] == "user_error" and message in summary["error"]


def _run(args, tmp_path):
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=script_env(), capture_output=True, text=True,
                          timeout=300, check=False)


@pytest.mark.parametrize("script, extra", [("distill.py", ["preset=quick"]), ("train_teacher.py", []),
                                           ("evaluate.py", ["+models.student=/nonexistent/best.pt"])])
def test_unwritable_output_root_is_one_line(tmp_path, script, extra):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    proc = _run([f"scripts/{script}", f"output_root={blocker / 'runs'}", *extra], tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: cannot write {blocker / 'runs'}") and "output folder" in last, proc.stderr


def test_a_stage_that_fails_before_its_first_checkpoint_leaves_no_folder(tmp_path):
    data = tmp_path / "data"
    write_fake_manifest(data, runs=3, train_per_run=12, eval_per_run=4, spacing_m=30.0, nan_cloud=[2])
    write_eval_pickles(data)
    runs = tmp_path / "runs"
    proc = _run(["scripts/distill.py", "preset=quick", f"dataset_dir={data}", f"output_root={runs}",
                 "trainer.progress=false"], tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "cloud holds NaN" in proc.stderr.strip().splitlines()[-1]
    # the teacher stage started (its lock file is there) and failed in its first epoch: no folder is left
    assert [p.name for p in (runs / "teachers").iterdir()] == [".locks"]
    assert not (runs / "students").exists() and not (runs / "students_alone").exists()
