#!/usr/bin/env python
"""Benchmark the LiDAR branches (MinkLoc3D, MinkLoc3Dv2: ``configs/cloud_branch/``) on the sparse backends:
forward + backward + optimiser step per batch.

Batch: ``--batch`` clouds of ``--points`` uniform points in [-1, 1]³, quantised at ``--quantization`` (done once,
outside the timing, as DataLoader workers do). Both backends run the same weights. Reported: median seconds per
batch of the forward (kernel maps included), of backward + step, their total, and the part of the forward spent
building coordinate/kernel maps (torch backend; MinkowskiEngine builds them inside its convolutions), plus the
ratio built-in / MinkowskiEngine when ME is installed, and the ratio of each branch to the first one
(``--branches``, default ``minkloc3d,minkloc3dv2``: MinkLoc3Dv2 against MinkLoc3D) on the same backend. Branches and
backends alternate batch by batch.

    python scripts/bench_sparse.py [--device cuda] [--threads 2] [--iters 5] [--branches minkloc3d,minkloc3dv2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import torch

from crossmodal.models import MinkLoc3D
from crossmodal.sparse import minkowski_available, sparse_quantize

CLOUD_BRANCHES = Path(__file__).resolve().parents[1] / "configs" / "cloud_branch"


def build(branch: str, backend: str) -> MinkLoc3D:
    """The ``configs/cloud_branch/<branch>.yaml`` model on ``backend``."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    path = CLOUD_BRANCHES / f"{branch}.yaml"
    if not path.is_file():
        raise SystemExit(f"error: no cloud branch {branch!r} ({path} missing); choose from "
                         f"{sorted(p.stem for p in CLOUD_BRANCHES.glob('*.yaml'))}")
    return instantiate(OmegaConf.merge(OmegaConf.load(path), {"backend": backend}))


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
    p.add_argument("--branches", default="minkloc3d,minkloc3dv2",
                   help="configs/cloud_branch/ entries, comma-separated; ratios are against the first")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def step(model: MinkLoc3D, optimizer: torch.optim.Optimizer, batch: dict, device: torch.device) -> tuple:
    """One training step; returns (forward s, backward+step s, map-building s)."""
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
    return t1 - t0, time.perf_counter() - t1, out["local_features"].backend.map_seconds


def run(models: dict[str, MinkLoc3D], batches: list[dict], device: torch.device, warmup: int) -> dict:
    """Median forward, backward+step, total and map seconds per backend. The backends take turns on every
    batch, so load from other processes affects them alike."""
    optimizers = {name: torch.optim.Adam(m.parameters(), lr=1e-3) for name, m in models.items()}
    times: dict[str, list[tuple]] = {name: [] for name in models}
    for i, batch in enumerate(batches):
        for name, model in models.items():
            t = step(model, optimizers[name], batch, device)
            if i >= warmup:
                times[name].append(t)
    med = statistics.median
    return {name: {"fwd": med(t[0] for t in ts), "bwd": med(t[1] for t in ts), "total": med(t[0] + t[1] for t in ts),
                   "maps": med(t[2] for t in ts)} for name, ts in times.items()}


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

    models = {}
    backends = args.backends.split(",")
    if "minkowski" in backends and not minkowski_available(device):
        print(f"minkowski: skipped (MinkowskiEngine not installed or no {device.type} support)")
        backends.remove("minkowski")
    for branch in args.branches.split(","):
        torch.manual_seed(args.seed)
        reference = build(branch, "torch").to(device)
        for name in backends:
            models[f"{branch}/{name}"] = build(branch, name).to(device)
            models[f"{branch}/{name}"].load_state_dict(reference.state_dict())
    load_before = os.getloadavg()[0]
    rows = run(models, batches, device, args.warmup)
    load_after = os.getloadavg()[0]

    print(f"\nLiDAR branches, {args.batch} clouds x {args.points} points, quantization {args.quantization} "
          f"(mean {voxels:.0f} voxels), device {device}, {torch.get_num_threads()} threads, "
          f"median of {args.iters} batches")
    print(f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}, 1-min load average {load_before:.1f} before, "
          f"{load_after:.1f} after (this process adds up to {torch.get_num_threads()})")
    print(f"{'branch/backend':<22} {'params':>10} {'forward s':>10} {'backward+step s':>16} {'total s':>8} "
          f"{'maps s':>7} {'vs first branch':>16}")
    first = args.branches.split(",")[0]
    for name, r in rows.items():
        branch, backend = name.split("/")
        maps = "n/a" if r["maps"] != r["maps"] else f"{r['maps']:.3f}"
        params = sum(p.numel() for p in models[name].parameters())
        base = rows.get(f"{first}/{backend}")
        ratio = f"{r['total'] / base['total']:.2f}" if base else "n/a"
        print(f"{name:<22} {params:>10,} {r['fwd']:>10.3f} {r['bwd']:>16.3f} {r['total']:>8.3f} {maps:>7} {ratio:>16}")
    for branch in args.branches.split(","):
        if f"{branch}/torch" in rows and f"{branch}/minkowski" in rows:
            print(f"{branch}: ratio built-in / MinkowskiEngine (total): "
                  f"{rows[f'{branch}/torch']['total'] / rows[f'{branch}/minkowski']['total']:.2f}")


if __name__ == "__main__":
    main()
