#!/usr/bin/env python
"""Distillation costs: the student step with each distillation objective vs the student alone (teacher cache on),
and every distillation loss alone, forward + backward, at B = 128 and 512, D = 384 (ms and peak memory).

    python scripts/bench_distill.py                              # CPU, 2 threads, synthetic default dataset
    python scripts/bench_distill.py --distills distilvpr rkd --batch-size 32 --rounds 7
    python scripts/bench_distill.py --device cuda --threads 8    # on a GPU machine

Method: crossmodal/training/bench_distill.py (module doc). Target (issue): distilled step / student-alone step
<= 1.10 with the cache on.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "distill"


def main() -> None:
    every = sorted(p.stem for p in CONFIGS.glob("*.yaml") if p.stem != "none")
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset-dir", default=os.path.join(os.environ.get("CROSSMODAL_DATA", "data"),
                                                         "synthetic-default"))
    p.add_argument("--distills", nargs="+", default=every)
    p.add_argument("--batch-size", type=int, default=32, help="student step batch")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--loss-batch-sizes", nargs="+", type=int, default=[128, 512])
    p.add_argument("--dim", type=int, default=384)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--skip", nargs="*", default=[], choices=["step", "losses", "memory", "step-memory"])
    p.add_argument("--step-memory", nargs="+", default=["none", "distilvpr"], metavar="DISTILL",
                   help="objectives whose student step at --step-memory-batch is measured for peak memory")
    p.add_argument("--step-memory-batch", type=int, default=512)
    p.add_argument("--max-chunk", type=int, default=None, help="multi-stage backprop chunk for the step memory")
    args = p.parse_args()

    import torch

    from crossmodal.machine import device_name
    from crossmodal.training.bench_distill import (
        loss_memory_subprocess,
        loss_time,
        step_ratio,
        student_step_memory_subprocess,
    )

    torch.set_num_threads(args.threads)
    print(f"machine: {device_name(args.device)}; device {args.device}, {args.threads} threads")
    if "step" not in args.skip:
        rows = step_ratio(args.distills, args.dataset_dir, args.batch_size, rounds=args.rounds, device=args.device,
                          overrides=[f"trainer.device={args.device}"])
        print(f"\nstudent training step, batch {rows[0]['batch_size']}, images {rows[0]['image_hw']} (H, W), "
              f"median of {args.rounds} interleaved rounds")
        print("| distill | ms/step | ratio vs student alone |")
        print("|---|---:|---:|")
        for r in rows:
            print(f"| {r['distill']} | {r['step_ms']:.1f} | {r['ratio']:.3f} |", flush=True)
    if "losses" not in args.skip:
        print(f"\ndistillation losses alone, forward + backward, D = {args.dim}"
              + ("" if "memory" in args.skip else "; peak memory in a fresh process"))
        head = "| loss | " + " | ".join(f"B={b} ms" for b in args.loss_batch_sizes)
        if "memory" not in args.skip:
            head += " | " + " | ".join(f"B={b} peak MB" for b in args.loss_batch_sizes)
        print(head + " |")
        print("|---|" + "---:|" * (len(args.loss_batch_sizes) * (1 if "memory" in args.skip else 2)))
        for d in args.distills:
            ms = [loss_time(d, b, args.dim, args.repeats, args.device, args.dataset_dir) for b in args.loss_batch_sizes]
            cells = [f"{m:.1f}" for m in ms]
            if "memory" not in args.skip:
                for b in args.loss_batch_sizes:
                    m = loss_memory_subprocess(d, b, args.dim, args.device, args.threads, args.dataset_dir)
                    cells.append("-" if m["peak_mb"] is None else f"{m['peak_mb']:.0f}")
            print(f"| {d} | " + " | ".join(cells) + " |", flush=True)
    if "step-memory" not in args.skip:
        print(f"\nstudent training step at batch {args.step_memory_batch} (max_chunk {args.max_chunk}), fresh process")
        print("| distill | RSS before step (MB) | peak during step (MB) |")
        print("|---|---:|---:|")
        for d in args.step_memory:
            m = student_step_memory_subprocess(d, args.step_memory_batch, args.dataset_dir, args.device,
                                               args.max_chunk, args.threads)
            if "peak_mb" in m:
                print(f"| {d} | - | {m['peak_mb']:.0f} (CUDA) |", flush=True)
            else:
                peak = "-" if m["peak_rss_mb"] is None else f"{m['peak_rss_mb']:.0f}"
                print(f"| {d} | {m['rss_before_mb']:.0f} | {peak} |", flush=True)


if __name__ == "__main__":
    main()
