"""Teacher training end to end on the fake manifest: the Hydra entry point writes its run folder; a run
interrupted after one epoch and resumed ends exactly like an uninterrupted one (CPU, same seed); batch
expansion; dropped rows are counted."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from crossmodal.data.fake import write_fake_manifest
from crossmodal.training import CheckpointMismatchError, load_checkpoint, train_teacher
from crossmodal.training.losses import TeacherLoss
from crossmodal.training.trainer import NoTripletsError
from crossmodal.training.testing import (
    compose_train_teacher,
    history_rows,
    script_env,
    tiny_overrides,
    write_eval_pickles,
)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def fake(tmp_path_factory):
    root = tmp_path_factory.mktemp("fake")
    # sample 1 (train) has no image, sample 5 (train) a short cloud: both dropped and counted
    # places 30 m apart: every batch holds places beyond the 50 m non-negative radius, so triplets form
    write_fake_manifest(root, runs=3, train_per_run=20, eval_per_run=6, absent_image=[1], short_cloud=[5],
                        spacing_m=30.0)
    write_eval_pickles(root)
    return root


def _cfg(fake, *extra, teacher="fusion"):
    return compose_train_teacher(tiny_overrides(teacher) + [f"dataset_dir={fake}", *extra])


def _entry(fake, *overrides, teacher="fusion"):
    cmd = [sys.executable, "scripts/train_teacher.py", *tiny_overrides(teacher), f"dataset_dir={fake}", *overrides]
    env = script_env(threads=None)
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_entry_point_writes_the_run_folder(fake, tmp_path):
    run_dir = tmp_path / "run"
    _entry(fake, "trainer.epochs=2", f"hydra.run.dir={run_dir}")
    for name in ("last.pt", "best.pt", "metrics.csv", "summary.json", "config.yaml", "command.txt",
                 "train_teacher.log"):
        assert (run_dir / name).is_file(), name
    with open(run_dir / "metrics.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    for col in ("loss", "non_zero_fraction", "batch_size", "lr_image", "lr_cloud", "val_r1", "val_r1p",
                "train_time_s"):
        assert rows[0][col] != "", col
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["finished"] and summary["epochs_completed"] == 2 and summary["name"] == "fusion"
    assert summary["dropped_rows"]["train"] == {"image_missing": 1, "cloud_size": 1}
    assert summary["test_best_checkpoint"]["pairs"] == 6
    assert 0.0 <= summary["best"]["val_r1"] <= 100.0
    log = (run_dir / "train_teacher.log").read_text()
    assert "dropped rows in train: 2" in log
    assert "scripts/train_teacher.py" in (run_dir / "command.txt").read_text()
    ckpt = load_checkpoint(run_dir / "last.pt")
    assert ckpt["epoch"] == 2 and ckpt["config"]["teacher"]["_target_"].endswith("FusionTeacher")
    assert {"optimizer", "scheduler", "sampler", "rng", "metrics", "fingerprint", "version"} <= set(ckpt)
    best = load_checkpoint(run_dir / "best.pt")
    assert best["metrics"]["val_r1"] == summary["best"]["val_r1"]


def test_resume_equals_uninterrupted(fake, tmp_path):
    """`max_epochs`-limited run, then the same command with resume=true, vs one uninterrupted run; through the
    entry point, deterministic mode (MKL_CBWR=COMPATIBLE must be set before torch loads)."""
    common = ["trainer.epochs=3", "optimizer.milestones=[2]", "trainer.batch_expansion_th=1.01",
              "trainer.batch_size_limit=12", "trainer.deterministic=true", "trainer.max_steps_per_epoch=2"]
    full_dir = tmp_path / "full"
    _entry(fake, *common, f"hydra.run.dir={full_dir}")
    runs = tmp_path / "runs"
    _entry(fake, *common, f"output_root={runs}", "trainer.max_epochs=1")
    (first_dir,) = list((runs / "train_teacher" / "fusion").iterdir())
    first = json.loads((first_dir / "summary.json").read_text())
    assert not first["finished"] and first["epochs_completed"] == 1 and first["test_best_checkpoint"] is None
    time.sleep(1.1)  # a new timestamped run folder
    _entry(fake, *common, f"output_root={runs}", "resume=true")
    (resumed_dir,) = [d for d in (runs / "train_teacher" / "fusion").iterdir() if d != first_dir]
    full = json.loads((full_dir / "summary.json").read_text())
    resumed = json.loads((resumed_dir / "summary.json").read_text())
    assert resumed["resumed_from"] == str(first_dir / "last.pt")
    for d in (full_dir, first_dir, resumed_dir):
        assert "trainer.deterministic: environment" not in (d / "train_teacher.log").read_text()
    assert resumed["finished"] and resumed["epochs_completed"] == 3

    a, b = load_checkpoint(full_dir / "last.pt"), load_checkpoint(resumed_dir / "last.pt")
    assert [r["batch_size"] for r in a["history"]] == [8, 10, 12]  # batch expansion, restored on resume
    assert [r["lr_cloud"] for r in a["history"]] == pytest.approx([1e-3, 1e-3, 1e-4])
    assert history_rows(a["history"]) == history_rows(b["history"])
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k
    assert full["best"] == resumed["best"]
    assert full["test_best_checkpoint"] == resumed["test_best_checkpoint"]
    assert (resumed_dir / "best.pt").is_file()
    with open(full_dir / "metrics.csv") as fa, open(resumed_dir / "metrics.csv") as fb:
        ra, rb = list(csv.DictReader(fa)), list(csv.DictReader(fb))
    assert history_rows(ra) == history_rows(rb)


def test_resume_with_another_config_or_model_is_refused(fake, tmp_path):
    train_teacher(_cfg(fake, "trainer.epochs=2", "trainer.max_epochs=1"), tmp_path / "a", name="fusion")
    last = tmp_path / "a" / "last.pt"
    with pytest.raises(CheckpointMismatchError, match=r"data.quantization_size: 0.2 -> 0.25"):
        train_teacher(_cfg(fake, "trainer.epochs=2", "data.quantization_size=0.25", f"trainer.resume={last}"),
                      tmp_path / "b")
    with pytest.raises(CheckpointMismatchError, match="model class"):
        train_teacher(_cfg(fake, "trainer.epochs=2", f"trainer.resume={tmp_path / 'a'}", teacher="image"),
                      tmp_path / "c")
    with pytest.raises(FileNotFoundError, match="no run folder"):
        train_teacher(_cfg(fake, "resume=true"), tmp_path / "empty" / "x")


@pytest.mark.parametrize("teacher", ["lidar", "image"])
def test_single_modality_teachers_train(fake, tmp_path, teacher):
    summary = train_teacher(_cfg(fake, "trainer.epochs=1", "trainer.eval_test=false", teacher=teacher),
                            tmp_path, name=teacher)
    assert summary["modalities"] == (["cloud"] if teacher == "lidar" else ["image"])
    assert summary["finished"] and summary["best"]["epoch"] == 1


def test_an_epoch_without_triplets_is_an_error(fake, tmp_path, monkeypatch):
    """A loss with no active terms in a whole epoch trained nothing: the run must stop, not report success
    (issue 13: data.batch_size=2 once trained for every epoch at loss 0 and exited 0)."""
    real = TeacherLoss.forward

    def no_triplets(self, outputs, positives_mask, negatives_mask):
        loss, stats = real(self, outputs, positives_mask, negatives_mask)
        return loss * 0.0, {**stats, "num_triplets": 0.0, "num_non_zero_triplets": 0.0, "loss": 0.0}

    monkeypatch.setattr(TeacherLoss, "forward", no_triplets)
    cfg = _cfg(fake, "trainer.epochs=2", "trainer.max_steps_per_epoch=2")
    with pytest.raises(NoTripletsError, match=r"epoch 1: none of its 2 batches formed a triplet.*data.batch_size"):
        train_teacher(cfg, tmp_path / "run", name="fusion")


def test_batch_of_one_pair_is_rejected(fake, tmp_path):
    cmd = [sys.executable, "scripts/train_teacher.py", *tiny_overrides("fusion"), f"dataset_dir={fake}",
           "data.batch_size=2", "trainer.epochs=1", f"hydra.run.dir={tmp_path / 'run'}"]
    proc = subprocess.run(cmd, cwd=ROOT, env=script_env(threads=None), capture_output=True, text=True, timeout=600,
                          check=False)
    assert proc.returncode != 0 and "batch_size must be even and at least 4" in proc.stderr
