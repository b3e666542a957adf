#!/usr/bin/env python
"""Train a place-recognition teacher (fusion, LiDAR-only or image-only) on a preprocessed dataset.

    python scripts/train_teacher.py teacher=fusion                  # MinkLoc++ fusion teacher, published recipe
    python scripts/train_teacher.py teacher=image trainer=synthetic # image branch alone, CPU preset
    python scripts/train_teacher.py teacher=fusion resume=true      # continue the newest interrupted run

See configs/train_teacher.yaml and docs/teacher.md.
"""

import logging
import os

import hydra
from hydra.core.hydra_config import HydraConfig


@hydra.main(version_base="1.3", config_path="../configs", config_name="train_teacher")
def main(cfg) -> None:
    if cfg.trainer.get("deterministic", False):
        # before torch loads: MKL reads these once (crossmodal.training.trainer.TrainerConfig.deterministic)
        os.environ.update({"MKL_CBWR": "COMPATIBLE", "MKL_ENABLE_INSTRUCTIONS": "SSE4_2"})
    from crossmodal.training import train_teacher
    from preprocessing.io import record_run

    logging.getLogger().setLevel(cfg.log_level)
    hc = HydraConfig.get()
    run_dir = hc.runtime.output_dir
    record_run(run_dir, cfg)
    train_teacher(cfg, run_dir, name=hc.runtime.choices.get("teacher"))


if __name__ == "__main__":
    main()
