"""Mixed precision and torch.compile as trainer options (``trainer.precision``, ``trainer.compile``) on the CPU:
bf16 autocast trains the student and the fusion teacher (sparse branch included), fp16 keeps its GradScaler
state in the checkpoint and resumes it, and a compiled training forward runs (backend ``eager`` here: the
compiler stack is exercised without a C++ toolchain's minutes of compile time)."""

from __future__ import annotations

import math

import pytest
import torch

from crossmodal.pipelines.distill import compose_config
from crossmodal.training import TrainerConfig, load_checkpoint, train_teacher
from crossmodal.training.student import train_student
from crossmodal.training.testing import (
    compose_train_teacher,
    tiny_overrides,
)

STUDENT = ["data.batch_size=8", "data.eval_batch_size=16", "data.num_workers=0",
           "trainer.progress=false", "trainer.epochs=1", "optimizer.milestones=[1]", "trainer.max_steps_per_epoch=3",
           "distill=none", "trainer.threads=1", "trainer.eval_test=false"]


def _student(root, *extra):
    return compose_config("distill", [f"dataset_dir={root}", *STUDENT, *extra])


def test_new_options_at_their_defaults_keep_old_checkpoints_and_hashes_valid():
    """Checkpoints and reuse hashes made before trainer.sync_batchnorm / precision / compile existed still match
    a config that has them at their defaults; a changed precision is a difference."""
    from crossmodal.pipelines.distill import config_hash
    from crossmodal.training.checkpoint import RESUME_IGNORED, config_differences

    old = {"trainer": {"epochs": 3, "seed": 0}, "data": {"batch_size": 8}}
    new = {"trainer": {"epochs": 3, "seed": 0, "sync_batchnorm": False, "precision": "fp32", "compile": False,
                       "compile_backend": "inductor", "compile_mode": None}, "data": {"batch_size": 8}}
    assert config_differences(old, new, RESUME_IGNORED) == []
    assert config_hash(old) == config_hash(new)
    bf16 = {**new, "trainer": {**new["trainer"], "precision": "bf16"}}
    assert config_differences(old, bf16, RESUME_IGNORED) == ["trainer.precision: '<absent>' -> 'bf16'"]
    assert config_hash(bf16) != config_hash(old)


def test_bad_precision_is_refused():
    with pytest.raises(ValueError, match="trainer.precision must be one of"):
        TrainerConfig(precision="fp8")


def test_bf16_student_and_fusion_teacher_train_on_cpu(fake, tmp_path):
    root = fake
    summary = train_student(_student(root, "trainer.precision=bf16"), tmp_path / "student")
    assert summary["finished"] and summary["precision"] == "bf16"
    assert math.isfinite(summary["last"]["loss"]) and summary["last"]["loss"] > 0
    ckpt = load_checkpoint(tmp_path / "student" / "last.pt")
    assert all(v.dtype != torch.bfloat16 for v in ckpt["model"].values())  # weights stay float32
    cfg = compose_train_teacher(tiny_overrides("fusion") + [f"dataset_dir={root}", "trainer.epochs=1",
                                                             "trainer.eval_test=false", "trainer.max_steps_per_epoch=2",
                                                             "trainer.precision=bf16", "trainer.threads=1"])
    teacher = train_teacher(cfg, tmp_path / "teacher", name="fusion")
    assert teacher["finished"] and math.isfinite(teacher["last"]["loss"])


def test_fp16_scaler_state_is_checkpointed_and_resumed(fake, tmp_path):
    root = fake
    first = train_student(_student(root, "trainer.precision=fp16", "trainer.epochs=2", "trainer.max_epochs=1"),
                          tmp_path / "a")
    assert not first["finished"]
    state = load_checkpoint(tmp_path / "a" / "last.pt")["step"]["scaler"]
    assert state is not None and state["scale"] > 0
    resumed = train_student(_student(root, "trainer.precision=fp16", "trainer.epochs=2",
                                     f"trainer.resume={tmp_path / 'a'}"), tmp_path / "b")
    assert resumed["finished"] and math.isfinite(resumed["last"]["loss"])


def test_compiled_training_forward(fake, tmp_path):
    root = fake
    summary = train_student(_student(root, "trainer.compile=true", "trainer.compile_backend=eager"), tmp_path)
    assert summary["finished"] and math.isfinite(summary["last"]["loss"])
    ckpt = load_checkpoint(tmp_path / "last.pt")
    assert not any(k.startswith("_orig_mod") for k in ckpt["model"])  # the plain model is checkpointed


@pytest.mark.parametrize("backend", ["torch", pytest.param("minkowski", marks=pytest.mark.minkowski)])
def test_compiled_fusion_teacher_matches_eager(fake, tmp_path, backend):
    """The sparse branch runs eagerly under torch.compile (MinkowskiEngine is not traceable): a compiled fusion
    teacher trains, with the eager run's losses."""
    from crossmodal.sparse import minkowski_available

    if backend == "minkowski" and not minkowski_available():
        pytest.skip("MinkowskiEngine is not installed")
    base = tiny_overrides("fusion") + [f"dataset_dir={fake}", "trainer.epochs=1", "trainer.eval_test=false",
                                       "trainer.max_steps_per_epoch=2", "trainer.threads=1",
                                       f"teacher.cloud.backend={backend}"]
    eager = train_teacher(compose_train_teacher(base), tmp_path / "eager", name="fusion")
    compiled = train_teacher(compose_train_teacher(base + ["trainer.compile=true", "trainer.compile_backend=eager"]),
                             tmp_path / "compiled", name="fusion")
    assert compiled["finished"]
    assert compiled["last"]["loss"] == pytest.approx(eager["last"]["loss"], rel=1e-5)
    ckpt = load_checkpoint(tmp_path / "compiled" / "last.pt")
    assert not any(k.startswith("_orig_mod") for k in ckpt["model"])
