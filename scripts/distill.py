#!/usr/bin/env python
"""Distil an image-only student from a LiDAR + image teacher, then evaluate it (docs/distillation.md).

    python scripts/distill.py teacher=fusion student=image                 # DistilVPR on the synthetic default
    python scripts/distill.py preset=quick                                 # the small dataset, ~2 minutes
    python scripts/distill.py distill=rkd teacher_training.checkpoint=runs/teachers/fusion-<hash>/best.pt
    python scripts/distill.py -m distill=none,rkd,distilvpr seed=0,1,2     # a sweep (teacher trained once)
    python scripts/distill.py -m hydra/launcher=submitit_slurm distill=rkd,pkt seed=0,1,2   # on SLURM
    torchrun --nproc_per_node=2 scripts/distill.py trainer.device=cuda     # DDP (docs/scaling.md)

Re-running a killed command resumes it (teacher, cache, students: hash-keyed folders). See configs/distill.yaml.
"""

import logging
import os
import sys

import hydra
from hydra.core.hydra_config import HydraConfig


@hydra.main(version_base="1.3", config_path="../configs", config_name="distill")
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
    from crossmodal.pipelines.distill import run_distillation
    from crossmodal.training import distributed
    from preprocessing.io import record_run

    info = distributed.init_from_env(cfg.trainer.device)
    logging.getLogger().setLevel(cfg.log_level if info.is_main else logging.WARNING)
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # its CPU-feature probing logs tracebacks at INFO
    hc = HydraConfig.get()
    run_dir = distributed.broadcast_object(hc.runtime.output_dir)  # rank 0's folder
    if info.is_main:
        record_run(run_dir, cfg)
    try:
        run_distillation(cfg, run_dir, teacher_choice=hc.runtime.choices.get("teacher"),
                         student_choice=hc.runtime.choices.get("student"))
    finally:
        distributed.teardown()


if __name__ == "__main__":
    from crossmodal.launch import prepare_argv

    prepare_argv(sys.argv)
    main()
