"""User errors at the entry points (issue 13): wrong values are rejected before any stage starts, and every user
error ends with one ``error: ...`` line and exit code 2 (no traceback; CROSSMODAL_DEBUG=1 brings it back)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from crossmodal.data.fake import write_fake_manifest
from crossmodal.launch import is_user_error, user_errors
from crossmodal.training.testing import script_env

ROOT = Path(__file__).resolve().parents[1]


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
