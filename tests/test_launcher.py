"""Hydra's submitit launcher: this project's ``hydra/launcher=submitit_slurm`` defaults compose and validate
against the plugin's schema, and a sweep through ``hydra/launcher=submitit_local`` (the same launcher code,
local processes instead of SLURM jobs) runs the distillation pipeline end to end on a tiny dataset."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from crossmodal.training.testing import folders, script_env

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"

pytest.importorskip("hydra_plugins.hydra_submitit_launcher")


@pytest.mark.parametrize("name", ["submitit_slurm", "submitit_local"])
def test_launcher_configs_compose_with_every_plugin_field(name):
    from hydra import compose, initialize_config_dir
    from hydra_plugins.hydra_submitit_launcher import config as plugin

    from crossmodal.launch import quiet_launcher_schema_warning

    quiet_launcher_schema_warning()
    schema = plugin.SlurmQueueConf if name == "submitit_slurm" else plugin.LocalQueueConf
    own = yaml.safe_load((CONFIGS / "hydra" / "launcher" / f"{name}.yaml").read_text())
    assert set(own) == {f.name for f in dataclasses.fields(schema)}  # nothing missing, nothing unknown
    with initialize_config_dir(str(CONFIGS), version_base="1.3"):
        cfg = compose("distill", overrides=[f"hydra/launcher={name}", "hydra.launcher.timeout_min=30"],
                      return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_ == schema._target_ and launcher.timeout_min == 30
    if name == "submitit_slurm":
        assert launcher.gpus_per_node == 1 and launcher.tasks_per_node == 1 and launcher.max_num_timeout == 3
        assert launcher.partition is None  # a placeholder the user must set (docs/scaling.md)


def test_a_sweep_through_the_local_submitit_launcher(tiny_fusion_teacher, tmp_path):
    root, teacher = tiny_fusion_teacher
    env = script_env()
    sweep = tmp_path / "sweep"
    cmd = [sys.executable, str(ROOT / "scripts" / "distill.py"), "-m", "hydra/launcher=submitit_local",
           "distill=feature_l2,none", f"dataset_dir={root}", "dataset.synthetic=null",
           f"teacher_training.checkpoint={teacher}", "student.out_dim=272", "data.batch_size=8",
           "data.eval_batch_size=16", "data.num_workers=0", "trainer.progress=false", "trainer.epochs=1",
           "trainer.threads=1", "optimizer.milestones=[1]", "evaluation.report=false",
           "student_alone.enabled=false", f"output_root={tmp_path / 'runs'}", f"hydra.sweep.dir={sweep}"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900, check=False)
    assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-5000:])
    assert "validated against ConfigStore" not in proc.stderr
    assert (sweep / ".submitit").is_dir()  # the jobs went through submitit
    for job in ("feature_l2_seed0", "none_seed0"):
        summary = json.loads((sweep / job / "summary.json").read_text())
        assert summary["rows"] and (sweep / job / "student" / "best.pt").is_file(), job
    assert len(folders(tmp_path / "runs" / "students")) == 2
