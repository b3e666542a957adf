#!/usr/bin/env python
"""Benchmark the MinkLoc3D LiDAR branch on the sparse backends: forward + backward + optimiser step per batch.

Batch: ``--batch`` clouds of ``--points`` uniform points in [-1, 1]³, quantised at ``--quantization`` (done once,
outside the timing, as DataLoader workers do). Both backends run the same weights. Reported: median seconds per
batch of the forward (kernel maps included), of backward + step, their total, and the part of the forward spent
building coordinate/kernel maps (torch backend; MinkowskiEngine builds them inside its convolutions), plus the
ratio built-in / MinkowskiEngine when ME is installed.

    python scripts/bench_sparse.py [--device cuda] [--threads 2] [--iters 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from crossmodal.models import MinkLoc3D
from crossmodal.sparse import minkowski_available, sparse_quantize


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--batch", type=int, default=16, help="clouds per batch")
    p.add_argument("--points", type=int, default=4096, help="points per cloud")
    p.add_argument("--quantization", type=float, default=0.01, help="voxel size")
    p.add_argument("--iters", type=int, default=5, help="timed batches per backend")
    p.add_argument("--warmup", type=int, default=2, help="untimed batches per backend")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--backends", default="torch,minkowski", help="comma-separated; minkowski skipped if absent")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_backend(model: MinkLoc3D, batches: list[dict], device: torch.device, warmup: int) -> dict[str, float]:
    """Median forward, backward+step and map-building seconds over ``batches`` (after ``warmup`` of them)."""
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    fwd, bwd, maps = [], [], []
    for i, batch in enumerate(batches):
        sync(device)
        t0 = time.perf_counter()
        out = model(batch)
        loss = out["descriptor"].square().mean()
        sync(device)
        t1 = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        sync(device)
        t2 = time.perf_counter()
        if i >= warmup:
            fwd.append(t1 - t0)
            bwd.append(t2 - t1)
            maps.append(out["local_features"].backend.map_seconds)
    med = statistics.median
    return {"fwd": med(fwd), "bwd": med(bwd), "total": med(f + b for f, b in zip(fwd, bwd)), "maps": med(maps)}


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    gen = torch.Generator().manual_seed(args.seed)
    batches = []
    for _ in range(args.warmup + args.iters):
        clouds = [torch.rand(args.points, 3, generator=gen) * 2 - 1 for _ in range(args.batch)]
        coords, feats = sparse_quantize(clouds, args.quantization)
        batches.append({"coords": coords.to(device), "feats": feats.to(device)})
    voxels = statistics.mean(b["coords"].shape[0] for b in batches)

    torch.manual_seed(args.seed)
    reference = MinkLoc3D(backend="torch").to(device)
    rows = {}
    for name in args.backends.split(","):
        if name == "minkowski" and not minkowski_available(device):
            print(f"minkowski: skipped (MinkowskiEngine not installed or no {device.type} support)")
            continue
        model = MinkLoc3D(backend=name).to(device)
        model.load_state_dict(reference.state_dict())
        rows[name] = run_backend(model, batches, device, args.warmup)

    print(f"\nMinkLoc3D branch, {args.batch} clouds x {args.points} points, quantization {args.quantization} "
          f"(mean {voxels:.0f} voxels), device {device}, {torch.get_num_threads()} threads, "
          f"median of {args.iters} batches")
    print(f"{'backend':<10} {'forward s':>10} {'backward+step s':>16} {'total s':>8} {'maps s':>7}")
    for name, r in rows.items():
        maps = "n/a" if r["maps"] != r["maps"] else f"{r['maps']:.3f}"
        print(f"{name:<10} {r['fwd']:>10.3f} {r['bwd']:>16.3f} {r['total']:>8.3f} {maps:>7}")
    if "torch" in rows and "minkowski" in rows:
        print(f"ratio built-in / MinkowskiEngine (total): {rows['torch']['total'] / rows['minkowski']['total']:.2f}")


if __name__ == "__main__":
    main()
