"""Data-parallel scaling of the student step (``scripts/bench_scaling.py``).

**What is timed**: the distilled student's training step as :func:`~crossmodal.training.trainer.fit` runs it
(:class:`~crossmodal.training.step.StepRunner`: the rank's share of the global batch through the student, the
embeddings gathered, the objective on the global batch, backward, DDP's gradient all-reduce, Adam), with the
teacher's outputs looked up in a teacher cache (random values of the fusion teacher's sizes: the lookup is what the
step pays). Every configuration steps **the same global batches** (real collated training images of the
dataset, loaded and moved to the device before the clock starts), so 1 process and N processes do the same work.

**How**: :func:`worker` runs in every process of a ``torchrun --standalone --nproc_per_node=N`` launch (N = 1 is a
plain process); after ``warmup`` steps, each of ``steps`` steps is timed between barriers (rank 0's clock; CUDA
synchronised) and the median is kept. ``samples/s = global batch / median step time``; speed-up against one
process with the fewest threads; scaling efficiency = speed-up / (cores used relative to that one), i.e. for N
processes of 1 thread ``samples/s(N) / (N x samples/s(1 process, 1 thread))``. :func:`run_all` launches the
configurations one after another, ``rounds`` times (interleaved, so that drifting machine load hits all alike),
and reports the median over rounds.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from . import distributed
from .bench_steps import student_step, timed_steps


def worker(dataset_dir: str, distill: str = "feature_l2", global_batch: int = 32, steps: int = 8, warmup: int = 2,
           threads: int = 1, device: str = "cpu", sync_batchnorm: bool = False,
           overrides: Sequence[str] = ()) -> dict[str, Any] | None:
    """One process of a launch; returns the figures on rank 0 (None elsewhere)."""
    torch.set_num_threads(int(threads))
    bench = student_step(dataset_dir, distill, global_batch, device, sync_batchnorm=sync_batchnorm,
                         overrides=overrides)
    timing = timed_steps(bench, steps, warmup)
    result = None
    if distributed.info().is_main:
        step_s = timing["step_s"]
        result = {"procs": distributed.info().world_size, "threads": int(threads), "device": str(device),
                  "distill": distill, "global_batch": bench.global_batch, "ms_per_step": 1000 * step_s,
                  "samples_per_s": bench.global_batch / step_s, "steps": steps, "sync_batchnorm": sync_batchnorm}
    distributed.teardown()
    return result


def launch(procs: int | None, script: str | Path, args: Sequence[str], timeout: float = 1800) -> dict[str, Any]:
    """Run ``script --worker <args>`` under ``torchrun --standalone --nproc_per_node=procs`` (``procs=None``: a
    plain process); the figures rank 0 wrote to ``--out``."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        torchrun = [] if procs is None else ["-m", "torch.distributed.run", "--standalone",
                                            f"--nproc_per_node={procs}"]
        cmd = [sys.executable, *torchrun, str(script), "--worker", "--out", str(out), *args]
        env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, check=False)
        if proc.returncode != 0 or not out.is_file():
            raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
        return json.loads(out.read_text())


def run_all(script: str | Path, configs: Sequence[tuple[int, int]], args: Sequence[str], rounds: int = 2
            ) -> list[dict[str, Any]]:
    """Every ``(procs, threads per process)`` configuration, ``rounds`` interleaved times; median per config."""
    runs: dict[tuple[int, int], list[dict[str, Any]]] = {c: [] for c in configs}
    for _ in range(rounds):
        for procs, threads in configs:
            runs[(procs, threads)].append(launch(procs, script, [*args, "--threads", str(threads)]))
    rows = []
    for (procs, threads), results in runs.items():
        row = dict(results[0])
        row["ms_per_step"] = statistics.median(r["ms_per_step"] for r in results)
        row["samples_per_s"] = statistics.median(r["samples_per_s"] for r in results)
        row["rounds_ms"] = [round(r["ms_per_step"], 1) for r in results]
        rows.append(row)
    base = min(rows, key=lambda r: (r["procs"] * r["threads"], r["procs"]))  # 1 process x fewest threads
    cores0 = base["procs"] * base["threads"]
    for row in rows:
        row["speedup"] = row["samples_per_s"] / base["samples_per_s"]
        row["efficiency"] = row["speedup"] / (row["procs"] * row["threads"] / cores0)
    return rows
