#!/usr/bin/env python
"""Mixed precision (trainer.precision) and torch.compile (trainer.compile) against fp32 eager, per training step.

    python scripts/bench_precision.py                                  # CPU: fp32, bf16, each with and without compile
    python scripts/bench_precision.py --device cuda --threads 8        # GPU: fp32, bf16, fp16, each +compile
    python scripts/bench_precision.py --roles student --configs fp32 bf16 --batch-size 128 --rounds 3
    python scripts/bench_precision.py --compile-mode max-autotune --configs fp32 fp32+compile

Teacher (fusion by default) and distilled student (feature_l2 by default) steps as training runs them, each
configuration in a fresh process, interleaved rounds; speed-ups and loss deviations are against fp32 eager of the
same role measured in the same run. Method: crossmodal/training/bench_precision.py (module doc).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset-dir", default=os.path.join(os.environ.get("CROSSMODAL_DATA", "data"),
                                                         "synthetic-default"),
                   help="a preprocessed dataset (default: the synthetic default); absent: a fake one is written")
    p.add_argument("--roles", nargs="+", default=["teacher", "student"], choices=["teacher", "student"])
    p.add_argument("--configs", nargs="+", default=None,
                   help="<precision>[+compile], precision fp32|bf16|fp16 (default: all on CUDA, no fp16 on CPU)")
    p.add_argument("--teacher", default="fusion")
    p.add_argument("--distill", default="feature_l2")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--warmup", type=int, default=2, help="untimed steps, the first one (compilation) timed apart")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--threads", type=int, default=None, help="torch threads per process (default: torch's)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--compile-mode", default=None, help="torch.compile mode (default, reduce-overhead, max-autotune)")
    p.add_argument("--override", action="append", default=[], help="extra config override for both roles")
    p.add_argument("--json", default=None, help="also write the rows here")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--role", default=None, help=argparse.SUPPRESS)
    p.add_argument("--config", default=None, help=argparse.SUPPRESS)
    p.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()

    if args.worker:
        from crossmodal.training.bench_precision import worker

        res = worker(args.role, args.dataset_dir, args.config, args.batch_size, args.steps, args.warmup,
                     args.threads, args.device, args.teacher, args.distill, args.compile_mode,
                     [f"trainer.device={args.device}", *args.override])
        Path(args.out).write_text(json.dumps(res))
        return

    from crossmodal.machine import device_name, load_average
    from crossmodal.training.bench_precision import default_configs, run_all, table
    from crossmodal.training.bench_steps import dataset_or_fake

    dataset = dataset_or_fake(args.dataset_dir)
    configs = args.configs or default_configs(args.device)
    worker_args = ["--dataset-dir", str(dataset), "--teacher", args.teacher, "--distill", args.distill,
                   "--batch-size", str(args.batch_size), "--steps", str(args.steps), "--warmup", str(args.warmup),
                   "--device", args.device]
    for o in args.override:
        worker_args += ["--override", o]
    if args.threads:
        worker_args += ["--threads", str(args.threads)]
    if args.compile_mode:
        worker_args += ["--compile-mode", args.compile_mode]
    load_before = load_average()
    rows = run_all(__file__, args.roles, configs, worker_args, rounds=args.rounds)
    import torch

    print(f"machine: {device_name(args.device)}; torch {torch.__version__}; load average before: {load_before}, "
          f"after: {load_average()}")
    print(f"dataset {dataset}; median of {args.steps} steps per process (after {args.warmup} untimed), median of "
          f"{args.rounds} rounds; teacher={args.teacher}, distill={args.distill}, compile mode {args.compile_mode}")
    print()
    print(table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
