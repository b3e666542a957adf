#!/usr/bin/env python
"""Distil an image-only student from a LiDAR + image teacher, then evaluate it (docs/distillation.md).

    python scripts/distill.py teacher=fusion student=image                 # DistilVPR on the synthetic default
    python scripts/distill.py preset=quick                                 # the small dataset, ~2 minutes
    python scripts/distill.py distill=rkd teacher_training.checkpoint=runs/teachers/fusion-<hash>/best.pt
    python scripts/distill.py -m distill=none,rkd,distilvpr seed=0,1,2     # a sweep (teacher trained once)

See configs/distill.yaml.
"""

import logging
import os

import hydra
from hydra.core.hydra_config import HydraConfig


@hydra.main(version_base="1.3", config_path="../configs", config_name="distill")
def main(cfg) -> None:
    if cfg.trainer.get("deterministic", False):
        # before torch loads: MKL reads these once (crossmodal.training.trainer.TrainerConfig.deterministic)
        os.environ.update({"MKL_CBWR": "COMPATIBLE", "MKL_ENABLE_INSTRUCTIONS": "SSE4_2"})
    from crossmodal.pipelines.distill import run_distillation
    from preprocessing.io import record_run

    logging.getLogger().setLevel(cfg.log_level)
    hc = HydraConfig.get()
    run_dir = hc.runtime.output_dir
    record_run(run_dir, cfg)
    run_distillation(cfg, run_dir, teacher_choice=hc.runtime.choices.get("teacher"),
                     student_choice=hc.runtime.choices.get("student"))


if __name__ == "__main__":
    main()
