#!/usr/bin/env python
"""Train a place-recognition teacher (fusion, LiDAR-only or image-only) on a preprocessed dataset.

    python scripts/train_teacher.py teacher=fusion                  # MinkLoc++ fusion teacher, published recipe
    python scripts/train_teacher.py teacher=image trainer=synthetic # image branch alone, CPU preset
    python scripts/train_teacher.py teacher=fusion                  # again after a kill: resumes (resume=auto)
    torchrun --nproc_per_node=2 scripts/train_teacher.py teacher=fusion trainer.device=cuda   # DDP

See configs/train_teacher.yaml, docs/teacher.md and docs/scaling.md.
"""

import logging
import os
import sys

import hydra
from hydra.core.hydra_config import HydraConfig


@hydra.main(version_base="1.3", config_path="../configs", config_name="train_teacher")
def main(cfg) -> None:
    from crossmodal.launch import user_errors

    # user errors: one `error:` line, exit code 2 (CROSSMODAL_DEBUG=1: traceback); SIGTERM acts as Ctrl-C; the
    # run's log and summary.json record what ended it
    with user_errors(run_dir=HydraConfig.get().runtime.output_dir):
        _main(cfg)


def _main(cfg) -> None:
    if cfg.trainer.get("deterministic", False):
        # before torch loads: MKL reads these once (crossmodal.training.trainer.TrainerConfig.deterministic)
        os.environ.update({"MKL_CBWR": "COMPATIBLE", "MKL_ENABLE_INSTRUCTIONS": "SSE4_2"})
    from crossmodal.training import distributed, train_teacher
    from preprocessing.io import record_run

    info = distributed.init_from_env(cfg.trainer.device)
    logging.getLogger().setLevel(cfg.log_level if info.is_main else logging.WARNING)
    hc = HydraConfig.get()
    run_dir = distributed.broadcast_object(hc.runtime.output_dir)  # rank 0's folder
    if info.is_main:
        record_run(run_dir, cfg)
    try:
        train_teacher(cfg, run_dir, name=hc.runtime.choices.get("teacher"))
    finally:
        distributed.teardown()


if __name__ == "__main__":
    from crossmodal.launch import prepare_argv

    prepare_argv(sys.argv)
    main()
