"""End to end through ``scripts/distill.py`` with ``preset=quick`` (the CI end-to-end test): the synthetic quick
dataset is generated and preprocessed, the fusion teacher trained, the cache built, the student distilled and
trained alone, everything evaluated; then a Hydra multirun over two more ``distill=`` choices reuses the teacher,
the cache and the student alone."""

from __future__ import annotations

import json

import pytest
from conftest import DEFAULT_DISTILL, run_distill

from crossmodal.training.testing import folders


@pytest.fixture(scope="module")
def first_run(quick_e2e):
    """The e2e run (conftest: once per session; its dataset is shared with the DDP tests)."""
    return quick_e2e


def test_quick_preset_end_to_end(first_run):
    work, run_dir, log = first_run
    assert "generating and preprocessing the synthetic RobotCar (quick)" in log
    for name in ("config.yaml", "command.txt", "distill.log", "report.md", "summary.json", "student/best.pt",
                 "student/last.pt", "student/metrics.csv", "student/summary.json", "evaluation/report.md",
                 "evaluation/report.json"):
        assert (run_dir / name).is_file(), name
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["distill"] == DEFAULT_DISTILL and set(summary["models"]) == {"teacher", "student_distilled",
                                                                              "student_alone"}
    for row in summary["rows"]:
        assert 0.0 <= row["test_r1"] <= 100.0 and 0.0 <= row["val_r1"] <= 100.0, row
    (teacher_dir,) = folders(work / "runs" / "teachers")
    assert teacher_dir.name.startswith("fusion-") and (teacher_dir / "best.pt").is_file()
    assert len(list((work / "runs" / "teacher_cache").glob("teacher-*.safetensors"))) == 1
    assert len(folders(work / "runs" / "students_alone")) == 1
    evaluation = json.loads((run_dir / "evaluation" / "report.json").read_text())
    assert evaluation  # the evaluation report's content is tested in tests/test_evaluation_*.py
    report = (run_dir / "report.md").read_text()
    assert f"distill={DEFAULT_DISTILL}" in report and "student image alone" in report
    # the one-line verdict and the training-free baselines of both modalities on the same test sets
    rows = {r["model"]: r for r in summary["rows"]}
    alone, distilled = rows["student image alone"]["test_r1"], rows[f"student image, distill={DEFAULT_DISTILL}"]["test_r1"]
    assert f"**Verdict: distillation changed test R@1 by {distilled - alone:+.2f} (student alone {alone:.2f} → " \
           f"distilled {distilled:.2f})" in report
    assert summary["verdict"].startswith("distillation changed test R@1 by")
    assert {r["model"] for r in summary["baseline_rows"]} == {"tiny_image (training-free, image)",
                                                               "hog (training-free, image)",
                                                               "bev_height (training-free, lidar)"}
    assert "| hog (training-free, image) |" in report and "| bev_height (training-free, lidar) |" in report
    assert "scripts/distill.py" in (run_dir / "command.txt").read_text()


def test_verdict_line():
    from crossmodal.pipelines.distill import verdict

    assert verdict({"test_r1": 70.0}, {"test_r1": 60.0}, {"test_r1": 90.0}) == (
        "distillation changed test R@1 by +10.00 (student alone 60.00 → distilled 70.00); it closed 33 % of the gap "
        "to the teacher (90.00)")
    assert verdict({"test_r1": 55.5}, {"test_r1": 60.0}) == \
        "distillation changed test R@1 by -4.50 (student alone 60.00 → distilled 55.50)"
    assert verdict({"test_r1": 55.5}, None) is None and verdict(None, {"test_r1": 1.0}) is None


def test_a_sweep_reuses_the_teacher_cache_and_student_alone(first_run):
    work, _, _ = first_run
    proc = run_distill("-m", "preset=quick", "distill=feature_l2,rkd", "trainer.progress=false",
                f"data_dir={work / 'data'}", f"output_root={work / 'runs'}", cwd=work)
    log = proc.stdout + proc.stderr
    assert "training fusion" not in log and log.count("stage 2/6 teacher: reusing") == 2
    assert log.count("stage 3/6 cache: reused") == 2
    assert log.count("stage 5/6 student alone: reusing") == 2
    (sweep,) = list((work / "runs" / "distill_sweep").iterdir())
    jobs = sorted(p.name for p in sweep.iterdir() if p.is_dir() and (p / "summary.json").is_file())
    assert jobs == ["feature_l2_seed0", "rkd_seed0"]
    assert len(folders(work / "runs" / "teachers")) == 1
