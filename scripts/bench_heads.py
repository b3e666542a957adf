#!/usr/bin/env python
"""Aggregation heads against GeM on the same backbone (issue 12): parameters and descriptor extraction time at
batch 1 and batched, printed as ratios to GeM measured in the same run.

    python scripts/bench_heads.py                                   # default student backbone, CPU, 120x160
    python scripts/bench_heads.py --backbones image,resnet18 --batch 32 --repeats 5 --json heads.json
    python scripts/bench_heads.py --device cuda                     # on a GPU (synchronised timings)

Each (backbone, head) is composed as the user would (``student=<backbone> head@student.head=<head>``), with
random weights (speed does not depend on them) and the GeM exponent frozen as for deployment
(``freeze_for_inference``). Timings are interleaved over the heads of a backbone (GeM, NetVLAD, ..., GeM, ...)
the order rotating, and the best of ``--repeats`` is kept, so load changes on a shared machine hit every head alike; the load average
is printed at the start and the end. ``ratio`` = head time / GeM time (> 1: slower than GeM).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HEADS = ("gem", "netvlad", "convap", "cosplace", "mixvpr", "boq")


def build(backbone: str, head: str, size: tuple[int, int], device: str):
    """The student ``backbone`` with ``head`` (MixVPR sized to the backbone's feature map at ``size``)."""
    import torch
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.utils import instantiate

    from crossmodal.deploy.localizer import freeze_for_inference

    overrides = [f"student={backbone}", "student.pretrained=null"]
    if head != "gem":
        overrides.append(f"head@student.head={head}")
    if head == "mixvpr":
        fmap = build(backbone, "gem", size, "cpu").feature_map(torch.zeros(1, 3, *size))
        overrides += [f"student.head.in_h={fmap.shape[-2]}", f"student.head.in_w={fmap.shape[-1]}"]
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base=None):
        cfg = compose("distill", overrides=overrides)
    torch.manual_seed(0)
    return freeze_for_inference(instantiate(cfg.student)).to(device)


def best_times(models: dict, inputs: dict, repeats: int, device: str) -> dict:
    """Best seconds per forward of each model on each input, interleaved over the models."""
    import torch

    def run(model, x):
        with torch.inference_mode():
            model(x)
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    best = {(name, key): float("inf") for name in models for key in inputs}
    for model in models.values():  # warm-up
        for x in inputs.values():
            run(model, x)
    names = list(models)
    for r in range(repeats):
        for name in names[r % len(names):] + names[:r % len(names)]:  # each model leads in turn
            model = models[name]
            for key, x in inputs.items():
                t0 = time.perf_counter()
                run(model, x)
                best[name, key] = min(best[name, key], time.perf_counter() - t0)
    return best


def bench_backbone(backbone: str, heads: list[str], args) -> list[dict]:
    import torch

    size = tuple(args.image_size)
    models = {h: build(backbone, h, size, args.device) for h in heads}
    gen = torch.Generator().manual_seed(0)
    inputs = {1: torch.randn(1, 3, *size, generator=gen).to(args.device),
              args.batch: torch.randn(args.batch, 3, *size, generator=gen).to(args.device)}
    times = best_times(models, inputs, args.repeats, args.device)
    rows = []
    for h, model in models.items():
        params = sum(p.numel() for p in model.parameters())
        head_params = sum(p.numel() for p in model.head.parameters())
        row = {"backbone": backbone, "head": h, "descriptor_dim": int(model.descriptor_dim), "parameters": params,
               "head_parameters": head_params}
        for b in inputs:
            row[f"ms_per_image_b{b}"] = 1000 * times[h, b] / b
            row[f"ratio_b{b}"] = times[h, b] / times[heads[0], b]
        row["parameter_ratio"] = params / sum(p.numel() for p in models[heads[0]].parameters())
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backbones", default="image", help="student configs, comma-separated (default: image)")
    ap.add_argument("--heads", default=",".join(HEADS), help="heads, comma-separated; the first is the baseline")
    ap.add_argument("--image-size", type=int, nargs=2, default=(120, 160), metavar=("H", "W"))
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", default=None, help="also write the rows to this file")
    args = ap.parse_args(argv)
    heads = args.heads.split(",")
    if heads[0] != "gem":
        ap.error("the first head is the baseline and must be gem")
    unknown = sorted(set(heads) - set(HEADS))
    if unknown or args.batch < 2 or args.repeats < 1:
        ap.error(f"unknown heads {unknown}" if unknown else "--batch must be >= 2 and --repeats >= 1")
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        ap.error("--device cuda: no CUDA device here")
    print(f"device {args.device}, torch threads {torch.get_num_threads()}, images {args.image_size[0]}x"
          f"{args.image_size[1]}, batch {args.batch}, best of {args.repeats}; load average {os.getloadavg()}")
    rows = []
    for backbone in args.backbones.split(","):
        rows += bench_backbone(backbone, heads, args)
    print(f"\n| backbone | head | dim | parameters | head parameters | ms/image b1 | ratio b1 | ms/image b{args.batch} "
          f"| ratio b{args.batch} |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['backbone']} | {r['head']} | {r['descriptor_dim']} | {r['parameters']:,} | "
              f"{r['head_parameters']:,} | {r['ms_per_image_b1']:.2f} | {r['ratio_b1']:.2f} | "
              f"{r[f'ms_per_image_b{args.batch}']:.2f} | {r[f'ratio_b{args.batch}']:.2f} |")
    print(f"\nload average at the end {os.getloadavg()}")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
