#!/usr/bin/env python
"""Teacher training throughput (samples/s) and peak memory of one training step, per teacher and batch size.

    python scripts/bench_teacher.py                                   # CPU, 2 threads, synthetic default dataset
    python scripts/bench_teacher.py --teachers fusion --batch-sizes 32 128 --steps 3
    python scripts/bench_teacher.py --device cuda --threads 8         # on a GPU machine
    python scripts/bench_teacher.py --override data.quantization_size=0.02

Method: crossmodal/training/bench.py (module doc). The image size is the dataset's (data.image_size=null keeps the
files' size: 160x120 on the synthetic default).
"""

from __future__ import annotations

import argparse
import os


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset-dir", default=os.path.join(os.environ.get("CROSSMODAL_DATA", "data"),
                                                         "synthetic-default"))
    p.add_argument("--teachers", nargs="+", default=["fusion", "image", "lidar"])
    p.add_argument("--batch-sizes", nargs="+", type=int, default=[32, 128])
    p.add_argument("--memory-batch-sizes", nargs="+", type=int, default=[32, 128])
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--max-chunk", type=int, default=None, help="multi-stage backprop chunk size")
    p.add_argument("--override", action="append", default=[], help="extra train_teacher config override")
    p.add_argument("--no-memory", action="store_true")
    args = p.parse_args()

    import torch

    from crossmodal.training.bench import step_memory_subprocess, throughput

    torch.set_num_threads(args.threads)
    rows = []
    for teacher in args.teachers:
        for bs in args.batch_sizes:
            r = throughput(teacher, args.dataset_dir, bs, args.steps, args.warmup, args.device, args.max_chunk,
                           args.override)
            rows.append(r)
            print(f"  {teacher} batch {bs}: {r['samples_per_s']:.1f} samples/s", flush=True)
    mem = {}
    if not args.no_memory:
        for teacher in args.teachers:
            for bs in args.memory_batch_sizes:
                mem[(teacher, bs)] = step_memory_subprocess(teacher, args.dataset_dir, bs, args.threads, args.device,
                                                            args.max_chunk, args.override)
    first = rows[0]
    print(f"\ndataset {args.dataset_dir}: images {first['image_hw']} (H, W), device {args.device}, "
          f"{args.threads} threads, quantization {first['quantization_size']}, max_chunk {args.max_chunk}")
    print("| teacher | params (M) | batch | train samples/s | s/step | load samples/s | voxels/cloud |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        vox = "-" if r["voxels_per_cloud"] is None else f"{r['voxels_per_cloud']:.0f}"
        print(f"| {r['teacher']} | {r['parameters_m']:.2f} | {r['batch_size']} | {r['samples_per_s']:.1f} | "
              f"{r['step_s']:.2f} | {r['load_samples_per_s']:.0f} | {vox} |")
    if mem:
        cuda = any("cuda_step_peak_mb" in m for m in mem.values())
        print("\n| teacher | batch | RSS before step (MB) | peak RSS during step (MB) | step extra (MB) |"
              + (" CUDA step peak (MB) |" if cuda else ""))
        print("|---|---:|---:|---:|---:|" + ("---:|" if cuda else ""))
        for (teacher, bs), m in mem.items():
            extra = f" {m['cuda_step_peak_mb']:.0f} |" if cuda else ""
            before = "-" if m["rss_before_step_mb"] is None else f"{m['rss_before_step_mb']:.0f}"
            print(f"| {teacher} | {bs} | {before} | {m['step_peak_rss_mb']:.0f} | {m['step_extra_mb']:.0f} |{extra}"
                  + ("" if m["method"] == "VmHWM" else " (ru_maxrss)"))


if __name__ == "__main__":
    main()
