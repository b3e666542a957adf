"""Ctrl-C and SIGTERM end every child process promptly in each stage (issue 13.6), on real processes: the
synthetic-RobotCar generation pool, the teacher's DataLoader workers, the teacher cache's workers and the
student's. Each entry point runs in its own session; once its worker processes are alive it gets SIGINT on the
whole process group (a terminal's Ctrl-C) or SIGTERM on the main process alone (``kill``, a scheduler), and must
exit within seconds with one ``interrupted ...`` line and the shell's code, leaving no process of its group."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from crossmodal.training.testing import TINY_CLOUD, TINY_DATA, script_env

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="lists processes through /proc")

#: How each signal is sent: Ctrl-C reaches the whole group, ``kill`` the main process only.
HOW = {"SIGINT": (signal.SIGINT, True, 130), "SIGTERM": (signal.SIGTERM, False, 143)}


def _group(pgid: int) -> list[int]:
    """Live (not zombie) processes of process group ``pgid``."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            pids.append(int(stat.parent.name))
    return pids


def _sigint_live() -> None:
    """In the child before it starts: Ctrl-C delivered, whatever the test runner inherited (a process started with
    SIGINT ignored, as some launchers start background jobs, keeps ignoring it, and Python then does too)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _interrupt_when_ready(args: list[str], cwd: Path, ready_text: str, how: str, children: int = 2,
                          timeout_s: float = 240.0) -> str:
    """Start ``python <args>``; once its output holds ``ready_text`` and at least ``children`` child processes
    live, send the signal ``how``; assert a prompt, clean end; returns the output."""
    out = cwd / f"output-{how}.txt"
    with open(out, "w") as fh:
        proc = subprocess.Popen([sys.executable, str(ROOT / args[0]), *args[1:]], cwd=cwd, env=script_env(),
                                stdout=fh, stderr=subprocess.STDOUT, start_new_session=True,
                                preexec_fn=_sigint_live)  # noqa: PLW1509 - no threads started in the child
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            assert proc.poll() is None, f"ended before the signal: {out.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"never got ready: {out.read_text()[-3000:]}"
            if ready_text in out.read_text() and len(_group(proc.pid)) >= 1 + children:
                break
            time.sleep(0.2)
        signum, group, code = HOW[how]
        if group:
            os.killpg(proc.pid, signum)
        else:
            proc.send_signal(signum)
        t0 = time.monotonic()
        rc = proc.wait(timeout=60)
        while _group(proc.pid) and time.monotonic() - t0 < 20:
            time.sleep(0.2)
        left = _group(proc.pid)
        text = out.read_text()
        assert not left, f"processes left after {how}: {left}\n{text[-3000:]}"
        assert rc == code, text[-3000:]
        assert time.monotonic() - t0 < 30
        assert text.strip().splitlines()[-1] == ("interrupted by " + how + "; finished work is kept, re-run the "
                                                 "same command to resume"), text[-3000:]
        return text
    finally:
        if proc.poll() is None or _group(proc.pid):
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.mark.parametrize("how", HOW)
def test_generation_workers(tmp_path, how):
    text = _interrupt_when_ready(["scripts/preprocess_oxford.py", "synthetic=quick", f"output_dir={tmp_path / 'q'}",
                                  "workers=2", "progress=false"], tmp_path, "synthetic RobotCar (quick)", how)
    assert "Traceback" not in text  # workers ignore Ctrl-C: the parent stops them


@pytest.mark.parametrize("how", HOW)
def test_teacher_dataloader_workers(tiny_fusion_teacher, tmp_path, how):
    root, _ = tiny_fusion_teacher
    args = ["scripts/train_teacher.py", "teacher=fusion", *TINY_DATA, *TINY_CLOUD, "data.num_workers=2",
            f"dataset_dir={root}", f"output_root={tmp_path / 'runs'}", "trainer.epochs=1000"]
    _interrupt_when_ready(args, tmp_path, "epoch 1/1000", how)


def _distill_args(tiny_fusion_teacher, tmp_path: Path) -> list[str]:
    root, teacher = tiny_fusion_teacher
    return ["scripts/distill.py", f"dataset_dir={root}", "dataset.synthetic=null",
            f"teacher_training.checkpoint={teacher}", "student.out_dim=272", "data.batch_size=8",
            "data.eval_batch_size=16", "data.num_workers=2", "trainer.progress=false", "trainer.threads=1",
            f"output_root={tmp_path / 'runs'}"]


@pytest.mark.parametrize("how", HOW)
def test_teacher_cache_workers(tiny_fusion_teacher, tmp_path, how):
    args = [*_distill_args(tiny_fusion_teacher, tmp_path), "cache.views=2000", "cache.batch_size=8"]
    _interrupt_when_ready(args, tmp_path, "teacher cache: embedding", how)


@pytest.mark.parametrize("how", HOW)
def test_student_dataloader_workers(tiny_fusion_teacher, tmp_path, how):
    args = [*_distill_args(tiny_fusion_teacher, tmp_path), "distill=feature_l2", "trainer.epochs=1000",
            "optimizer.milestones=[1000]"]
    _interrupt_when_ready(args, tmp_path, "epoch 1/1000", how)


def test_quiet_teardown_keeps_destructor_noise_off_stderr(tmp_path):
    """A signal can leave an object half-built (a DataLoader iterator caught in ``__init__``); its ``__del__`` then
    fails at exit and Python prints "Exception ignored in ..."; the file descriptor sharer thread of DataLoader
    workers reports a reset connection through sys.excepthook; a thread may die. quiet_teardown, which the first
    interrupt calls, sends all of it to the debug log instead."""
    code = ("import gc, sys, threading\n"
            "class HalfBuilt:\n"
            "    def __del__(self):\n"
            "        raise AttributeError('no _workers_status')\n"
            "def serve():\n"
            "    try:\n"
            "        raise ConnectionResetError(104, 'Connection reset by peer')\n"
            "    except OSError:\n"
            "        sys.excepthook(*sys.exc_info())\n"
            "def die():\n"
            "    raise RuntimeError('thread died')\n"
            "{quiet}"
            "x = HalfBuilt()\n"
            "del x\n"
            "gc.collect()\n"
            "for target in (serve, die):\n"
            "    t = threading.Thread(target=target)\n"
            "    t.start()\n"
            "    t.join()\n"
            "print('interrupted by SIGTERM', file=sys.stderr)\n")
    noisy = subprocess.run([sys.executable, "-c", code.format(quiet="")], capture_output=True, text=True)
    for noise in ("Exception ignored", "ConnectionResetError", "thread died"):  # the noise is real without it
        assert noise in noisy.stderr
    quiet = subprocess.run([sys.executable, "-c", code.format(
        quiet="from preprocessing.processes import quiet_teardown\nquiet_teardown()\n")],
        capture_output=True, text=True, cwd=ROOT)
    assert quiet.returncode == 0
    assert quiet.stderr.strip().splitlines() == ["interrupted by SIGTERM"]
