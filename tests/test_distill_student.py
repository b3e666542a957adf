"""Student training on the fake manifest: distilled from a cache vs alone, the run folder, the checkpoint (role,
input spec, objective state), the CSV's loss parts, and that the student step never runs the teacher."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from crossmodal.pipelines.distill import compose_config
from crossmodal.training import load_checkpoint
from crossmodal.training.student import train_student
from crossmodal.training.teacher_cache import load_or_build_cache

STUDENT_TINY = ["student=resnet18", "student.out_dim=272", "data.batch_size=8", "data.eval_batch_size=16", "data.num_workers=0", "trainer.progress=false",
                "trainer.epochs=2", "optimizer.milestones=[1]"]  # the tiny teacher: 16 + 256 = 272-d


@pytest.fixture(scope="module")
def setup(tiny_fusion_teacher, tmp_path_factory):
    root, ckpt = tiny_fusion_teacher
    cache, _, _ = load_or_build_cache(ckpt, root, tmp_path_factory.mktemp("cache"), progress=False)
    return root, cache


def _cfg(root, *extra):
    return compose_config("distill", [f"dataset_dir={root}", *STUDENT_TINY, *extra])


@pytest.mark.parametrize("distill", ["feature_l2", "none", "multi_teacher"])
def test_student_trains_and_writes_its_run_folder(setup, tmp_path, distill):
    root, cache = setup
    summary = train_student(_cfg(root, f"distill={distill}"), tmp_path, cache, name="image")
    assert summary["role"] == "student" and summary["finished"] and summary["epochs_completed"] == 2
    assert summary["distill"] == distill
    assert summary["test_best_checkpoint"]["pairs"] == 6
    ckpt = load_checkpoint(tmp_path / "best.pt", expect_role="student")
    assert ckpt["config"]["student"]["_target_"].endswith("ImageStudent")
    assert ckpt["input"]["image_size"] == [24, 32] and ckpt["input"]["mode"] == "RGB"
    with open(tmp_path / "metrics.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert rows[0]["loss_task"] != ""
    if distill == "none":
        assert "loss_distill" not in rows[0] and summary["teacher_outputs"] == []
    else:
        assert float(rows[0]["loss_distill"]) > 0
        # loss = task_weight * task + weight * distill
        obj = ckpt["config"]["distill"]["objective"]
        assert float(rows[0]["loss"]) == pytest.approx(
            obj["task_weight"] * float(rows[0]["loss_task"]) + obj.get("weight", 1.0) * float(rows[0]["loss_distill"]),
            rel=1e-4)
    json.loads((tmp_path / "summary.json").read_text())


def test_the_student_step_never_runs_the_teacher_or_reads_clouds(setup, tmp_path, monkeypatch):
    root, cache = setup
    from crossmodal.data.dataset import PairedPlaceDataset
    from crossmodal.models import teachers

    def boom(*a, **k):
        raise AssertionError("the student run touched the teacher or a cloud")

    monkeypatch.setattr(PairedPlaceDataset, "load_cloud", boom)
    for cls in (teachers.FusionTeacher, teachers.LidarTeacher, teachers.ImageTeacher):
        monkeypatch.setattr(cls, "forward", boom)
    summary = train_student(_cfg(root, "distill=feature_l2"), tmp_path, cache)
    assert summary["finished"]


def test_distillation_without_a_cache_or_with_missing_outputs_is_refused(setup, tmp_path):
    root, cache = setup
    with pytest.raises(ValueError, match="needs the teacher cache"):
        train_student(_cfg(root, "distill=feature_l2"), tmp_path / "a", None)
    from crossmodal.training.teacher_cache import TeacherCache

    only = TeacherCache(cache.sample_ids, {"descriptor": cache.tensors["descriptor"]}, cache.meta)
    with pytest.raises(KeyError, match=r"reads teacher outputs \['cloud', 'image'\]"):
        train_student(_cfg(root, "distill=multi_teacher"), tmp_path / "b", only)


def test_student_resume_matches_the_uninterrupted_run(setup, tmp_path):
    root, cache = setup
    common = ["distill=feature_l2", "trainer.deterministic=true", "trainer.max_steps_per_epoch=2", "trainer.epochs=3"]
    full = train_student(_cfg(root, *common), tmp_path / "full", cache)
    first = train_student(_cfg(root, *common, "trainer.max_epochs=1"), tmp_path / "part", cache)
    assert not first["finished"]
    resumed = train_student(_cfg(root, *common, f"trainer.resume={tmp_path / 'part'}"), tmp_path / "resumed", cache)
    assert resumed["finished"] and resumed["best"] == full["best"]
    a, b = load_checkpoint(tmp_path / "full" / "last.pt"), load_checkpoint(tmp_path / "resumed" / "last.pt")
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k
