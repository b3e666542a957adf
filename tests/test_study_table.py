"""Seed statistics (mean ± 95 % t-interval, paired differences) and the study table built from run summaries."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest

from crossmodal.evaluation.seeds import mean_ci, paired_difference

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "distill_table.py"


def _script():
    spec = importlib.util.spec_from_file_location("distill_table", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_mean_ci_against_a_hand_computation():
    ci = mean_ci([1.0, 2.0, 3.0, 4.0, 5.0])
    sd = math.sqrt(sum((v - 3.0) ** 2 for v in range(1, 6)) / 4)  # 1.5811
    assert ci.mean == pytest.approx(3.0) and ci.n == 5
    assert ci.half_width == pytest.approx(2.7764451 * sd / math.sqrt(5), rel=1e-6)  # t_{0.975, 4}
    assert ci.format() == "3.00 ± 1.96" and ci.excludes_zero()
    assert mean_ci([7.0]).format() == "7.00" and not mean_ci([7.0]).excludes_zero()
    assert mean_ci([]).format() == "-"
    assert not mean_ci([-1.0, 1.0]).excludes_zero()


def test_paired_difference_matches_seeds():
    d = paired_difference({0: 10.0, 1: 12.0, 2: 14.0, 7: 99.0}, {0: 9.0, 1: 10.0, 2: 11.0})
    assert d.n == 3 and d.mean == pytest.approx(2.0)
    assert d.half_width == pytest.approx(4.3026527 * 1.0 / math.sqrt(3), rel=1e-6)


def _run(folder: Path, distill: str, seed: int, distilled: float, alone: float, teacher: float = 90.0) -> None:
    folder.mkdir(parents=True)
    rows = [{"model": "teacher (fusion)", "val_r1": 95.0, "test_r1": teacher, "test_r1p": teacher,
             "run_dir": "runs/teachers/t"},
            {"model": f"student image, distill={distill}", "val_r1": distilled + 5, "test_r1": distilled,
             "test_r1p": distilled, "run_dir": f"runs/students/{distill}-{seed}"},
            {"model": "student image alone", "val_r1": alone + 5, "test_r1": alone, "test_r1p": alone,
             "run_dir": f"runs/students_alone/{seed}"}]
    (folder / "summary.json").write_text(json.dumps({"distill": distill, "seed": seed, "rows": rows}))


def test_table_from_runs_and_from_its_results_file(tmp_path, capsys):
    alone = {0: 60.0, 1: 62.0, 2: 58.0}
    for seed, a in alone.items():
        _run(tmp_path / "runs" / f"x_seed{seed}", "x", seed, a + 10 + seed, a)
        _run(tmp_path / "runs" / f"y_seed{seed}", "y", seed, a - 1 + seed, a)
    mod = _script()
    records = mod.collect([tmp_path / "runs"])
    assert sum(r["model"] == "student alone" for r in records) == 3  # shared per seed, counted once
    assert sum(r["model"] == "teacher" for r in records) == 1
    results = tmp_path / "study.csv"
    assert mod.main([str(tmp_path / "runs"), "--csv", str(results)]) == 0
    from_runs = capsys.readouterr().out
    assert mod.main(["--results", str(results), "--markdown", str(tmp_path / "t.md")]) == 0
    from_file = capsys.readouterr().out
    assert from_runs == from_file == (tmp_path / "t.md").read_text()
    line = next(ln for ln in from_file.splitlines() if ln.startswith("| distill=x |"))
    # Δ = 10, 11, 12 → 11 ± t_{0.975,2}·1/√3; gap: teacher 90 − alone 60 → 11 / 30 = 37 %
    assert f"| {11:.2f} ± {4.3026527 / math.sqrt(3):.2f} * | 37 % | 3 |" in line
    line_y = next(ln for ln in from_file.splitlines() if ln.startswith("| distill=y |"))
    assert "| 0.00 ± 2.48 | 0 % | 3 |" in line_y  # −1, 0, 1: the interval holds 0, no star
    assert mod.main([]) == 2 and mod.main(["--results", str(tmp_path / "missing.csv")]) == 2


def test_runs_table_reads_configs_and_summaries(tmp_path, capsys):
    import yaml

    spec = importlib.util.spec_from_file_location("runs_table", SCRIPT.parent / "runs_table.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    run = tmp_path / "t1"
    run.mkdir()
    cfg = {"teacher": {"_target_": "crossmodal.models.teachers.FusionTeacher", "fusion": "concat_l2",
                       "cloud": {"_target_": "x.MinkLoc3D", "pooling": "GridGeM"},
                       "image": {"_target_": "crossmodal.models.image.EfficientNetLiteGeM"}},
           "data": {"augment": True, "cloud_augment": {"block_p": 0.0}}, "teacher_loss": {"normalize": False},
           "trainer": {"epochs": 16}, "optimizer": {"milestones": [12]}}
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    (run / "summary.json").write_text(json.dumps({"train_rows": 745, "best": {"epoch": 16, "val_r1": 94.2},
                                                  "test_best_checkpoint": {"r1": 92.78}}))
    (tmp_path / "unfinished").mkdir()
    out = tmp_path / "r.csv"
    assert mod.main([str(run), str(tmp_path / "unfinished"), "--csv", str(out)]) == 0
    captured = capsys.readouterr()
    assert "skipped (unfinished" in captured.err
    row = ("| FusionTeacher | EfficientNetLiteGeM | GridGeM | concat_l2 | True | `{\"block_p\": 0.0}` | False | "
           "16 ([12]) | 745 | 16 | 94.20 | 92.78 |")
    assert row in captured.out
    assert mod.main(["--results", str(out)]) == 0 and row in capsys.readouterr().out
