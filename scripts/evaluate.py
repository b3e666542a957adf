#!/usr/bin/env python
"""Evaluate checkpoints (teachers and students) on a preprocessed dataset's evaluation sets and write a report.

    python scripts/evaluate.py 'models={teacher: runs/train_teacher/fusion/<time>/best.pt, student: <ckpt>}'
    python scripts/evaluate.py +models.student=runs/distill/<...>/best.pt metric=cosine index.kind=ivf
    python scripts/evaluate.py +models.student=<ckpt> dataset_dir=/data/oxford latency.enabled=false

Without dataset_dir, the dataset the checkpoints were trained on is evaluated. Writes report.md, report.json, results.csv and plots into out_dir (default: the Hydra run folder). See
configs/evaluate.yaml and docs/evaluation.md.
"""

import logging

import hydra
from hydra.core.hydra_config import HydraConfig


@hydra.main(version_base="1.3", config_path="../configs", config_name="evaluate")
def main(cfg) -> None:
    from crossmodal.launch import user_errors

    # user errors: one `error:` line, exit code 2 (CROSSMODAL_DEBUG=1: traceback); SIGTERM acts as Ctrl-C; the
    # run's log and summary.json record what ended it
    with user_errors(run_dir=HydraConfig.get().runtime.output_dir):
        _main(cfg)


def _main(cfg) -> None:
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from crossmodal.evaluation import evaluate_checkpoints
    from crossmodal.evaluation.checkpoints import trained_dataset
    from preprocessing.io import record_run

    logging.getLogger().setLevel(cfg.log_level)
    out_dir = cfg.out_dir or HydraConfig.get().runtime.output_dir
    models = OmegaConf.to_container(cfg.models, resolve=True) or {}
    if not models:
        raise SystemExit("no models given: python scripts/evaluate.py 'models={student: path/to/best.pt}' "
                         "(or +models.student=path/to/best.pt)")
    if cfg.threads:
        import faiss
        import torch

        torch.set_num_threads(int(cfg.threads))
        faiss.omp_set_num_threads(int(cfg.threads))
    dataset_dir = cfg.dataset_dir or trained_dataset(list(models.values()))
    record_run(out_dir, cfg)
    require = cfg.require if isinstance(cfg.require, str) else list(cfg.require)
    summary = evaluate_checkpoints(
        models, dataset_dir, out_dir, device=cfg.device, metric=cfg.metric, index=instantiate(cfg.index),
        batch_size=cfg.batch_size, num_workers=cfg.num_workers, latency=instantiate(cfg.latency), plots=cfg.plots,
        progress=cfg.progress, require=require, validate_clouds=cfg.validate_clouds, per_query_k=cfg.per_query_k, examples=cfg.examples)
    print(f"report: {out_dir}/report.md")
    for label, m in summary["models"].items():
        print(f"{label:>20s} ({m['role']}): R@1 {m['r1']:.2f}  R@5 {m['r5']:.2f}  R@10 {m['r10']:.2f}  "
              f"R@1% {m['r1p']:.2f}")


if __name__ == "__main__":
    main()
