#!/usr/bin/env python
"""Scaling efficiency of the student step from 1 to N data-parallel processes (torchrun + DDP), same global batch.

    python scripts/bench_scaling.py                               # CPU: 1 vs 2 processes x 1 thread, + 1 x 2 threads
    python scripts/bench_scaling.py --global-batch 64 --steps 12 --rounds 3
    python scripts/bench_scaling.py --device cuda --procs 1 2 4 --threads 4   # on a machine with GPUs

Each configuration is a real ``torchrun --standalone --nproc_per_node=N`` launch of this script (``--worker``);
method in crossmodal/training/bench_scaling.py. Efficiency = speed-up / cores used (against 1 process x 1 thread):
samples/s(N x 1) / (N x samples/s(1 x 1)).
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
    p.add_argument("--distill", default="feature_l2")
    p.add_argument("--global-batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--procs", nargs="+", type=int, default=[1, 2])
    p.add_argument("--threads", type=int, default=1, help="threads per process")
    p.add_argument("--also-one-process-threads", type=int, default=None,
                   help="also time 1 process with this many threads (default: max(procs) x threads on CPU)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--sync-batchnorm", action="store_true")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()

    if args.worker:
        from crossmodal.training.bench_scaling import worker

        res = worker(args.dataset_dir, args.distill, args.global_batch, args.steps, args.warmup, args.threads,
                     args.device, args.sync_batchnorm)
        if res is not None:
            Path(args.out).write_text(json.dumps(res))
        return

    from crossmodal.machine import device_name, load_average
    from crossmodal.training.bench_scaling import run_all
    from crossmodal.training.bench_steps import dataset_or_fake

    dataset = dataset_or_fake(args.dataset_dir)

    configs = [(n, args.threads) for n in args.procs]
    extra = args.also_one_process_threads
    if extra is None and args.device == "cpu":
        extra = max(args.procs) * args.threads
    if extra and (1, extra) not in configs:
        configs.append((1, extra))
    worker_args = ["--dataset-dir", str(dataset), "--distill", args.distill, "--global-batch", str(args.global_batch),
                   "--steps", str(args.steps), "--warmup", str(args.warmup), "--device", args.device]
    if args.sync_batchnorm:
        worker_args.append("--sync-batchnorm")
    load_before = load_average()
    rows = run_all(__file__, configs, worker_args, rounds=args.rounds)
    print(f"machine: {device_name(args.device)}; load average before: {load_before}")
    print(f"student step (distill={args.distill}), global batch {rows[0]['global_batch']}, dataset {dataset}, "
          f"median of {args.steps} steps per launch, median of {args.rounds} rounds")
    print()
    base = min(rows, key=lambda r: (r["procs"] * r["threads"], r["procs"]))
    print(f"| processes | threads / process | ms / step | samples / s | speed-up vs {base['procs']} x "
          f"{base['threads']} | efficiency (per core) |")
    print("|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        sp = "-" if r["speedup"] is None else f"{r['speedup']:.2f}"
        ef = "-" if r["efficiency"] is None else f"{100 * r['efficiency']:.0f} %"
        print(f"| {r['procs']} | {r['threads']} | {r['ms_per_step']:.0f} (rounds {r['rounds_ms']}) | "
              f"{r['samples_per_s']:.1f} | {sp} | {ef} |")
    print()
    print(f"load average after: {load_average()}")


if __name__ == "__main__":
    main()
