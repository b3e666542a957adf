"""Distillation benchmarks (``scripts/bench_distill.py``).

**Step ratio**: the student's training step (forward, objective, backward, Adam step) with each distillation
objective vs the student alone (task loss only), on the same real collated training batches (images at the
dataset's size), with the teacher outputs looked up in a teacher cache (built in memory with the fusion teacher's
output sizes: the lookup is what the step pays; the values do not change the cost). The configurations are timed in
interleaved rounds (one step of each per round) so that machine load drifts affect them alike; the figure is the
median step time over rounds, and the ratio is against the student alone measured in the same rounds.

**Loss cost**: every distillation loss of ``configs/distill/`` alone, forward + backward on random ``[B, D]``
student / teacher descriptors (teacher outputs of the cache's sizes for multi-teacher), median milliseconds over
``repeats``; peak memory = the process's peak resident memory during one forward + backward (``VmHWM`` after
resetting the mark through ``/proc/self/clear_refs``) minus the resident memory before it.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from .bench import reset_peak_rss, status_mb
from .multistage import forward_backward, move_batch
from .objective import StepLoss
from .teacher_cache import TeacherCache

#: Output sizes of the fusion teacher (MinkLoc3D 128 + ResNet18 branch 256).
FUSION_DIMS = {"descriptor": 384, "cloud": 128, "image": 256}


def compose(distill: str, dataset_dir: str, overrides: Sequence[str] = ()):
    from crossmodal.pipelines.distill import compose_config

    return compose_config("distill", [f"distill={distill}", f"dataset_dir={dataset_dir}", *overrides])


def random_cache(sample_ids: np.ndarray, dims: dict[str, int] = FUSION_DIMS, seed: int = 0) -> TeacherCache:
    g = torch.Generator().manual_seed(seed)
    return TeacherCache(sample_ids, {k: torch.randn(1, len(sample_ids), d, generator=g) for k, d in dims.items()},
                        {"key": "random"})


def step_ratio(distills: Sequence[str], dataset_dir: str, batch_size: int = 32, batches: int = 4, rounds: int = 5,
               device: str = "cpu", overrides: Sequence[str] = ()) -> list[dict[str, Any]]:
    from hydra.utils import instantiate

    device_t = torch.device(device)
    base = compose("none", dataset_dir, [f"data.batch_size={batch_size}", "data.num_workers=0", "data.require=[image]",
                                         *overrides])
    dm = instantiate(base.data, modalities=["image"])
    loader = dm.train_loader()
    data = []
    for b in loader:
        data.append(move_batch(b, device_t))
        if len(data) >= batches:
            break
    cache = random_cache(dm.dataset("train").sample_ids)
    setups = []
    for name in ["none", *[d for d in distills if d != "none"]]:
        cfg = compose(name, dataset_dir, overrides)
        torch.manual_seed(0)
        model = instantiate(cfg.student).to(device_t).train()
        objective = instantiate(cfg.distill.objective).to(device_t)
        params = list(model.parameters()) + list(objective.parameters())
        opt = torch.optim.Adam(params, lr=1e-4)
        setups.append({"name": name, "model": model, "objective": objective, "opt": opt, "times": []})

    def one_step(s, batch) -> None:
        obj = s["objective"]
        teacher = None
        if obj.cache_outputs:
            ids = batch["sample_ids"]
            teacher = obj.teacher_input(lambda out: cache.lookup(ids, out, device=device_t))
        s["opt"].zero_grad(set_to_none=True)
        forward_backward(s["model"], batch, StepLoss(obj, teacher), (obj.output,))
        s["opt"].step()

    def sync() -> None:
        if device_t.type == "cuda":
            torch.cuda.synchronize()

    for s in setups:  # warm-up
        one_step(s, data[0])
    for r in range(rounds):
        for s in setups:
            batch = data[r % len(data)]
            sync()
            t0 = time.perf_counter()
            one_step(s, batch)
            sync()
            s["times"].append(time.perf_counter() - t0)
    base_t = statistics.median(setups[0]["times"])
    return [{"distill": s["name"], "step_ms": 1e3 * statistics.median(s["times"]),
             "ratio": statistics.median(s["times"]) / base_t, "batch_size": int(data[0]["indices"].shape[0]),
             "image_hw": list(data[0]["images"].shape[-2:])} for s in setups]


def _loss_inputs(distill: str, batch_size: int, dim: int, device: torch.device, dataset_dir: str):
    from hydra.utils import instantiate

    objective = instantiate(compose(distill, dataset_dir).distill.objective)
    loss = objective.loss
    if loss is None:
        raise ValueError(f"distill={distill} has no distillation loss")
    loss.to(device)
    g = torch.Generator().manual_seed(0)
    s = torch.randn(batch_size, dim, generator=g).to(device).requires_grad_(True)
    dims = dict(FUSION_DIMS, descriptor=dim)
    teacher = objective.teacher_input(lambda out: torch.randn(batch_size, dims[out], generator=g).to(device))
    # masks as the sampler makes them: pairs of mutual positives, the rest negatives
    pairs = torch.arange(batch_size) // 2
    pos = ((pairs[:, None] == pairs[None, :]) & ~torch.eye(batch_size, dtype=torch.bool)).to(device)
    neg = (pairs[:, None] != pairs[None, :]).to(device)

    def run() -> None:
        s.grad = None
        loss(s, teacher, positives_mask=pos, negatives_mask=neg).backward()

    return run


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def loss_time(distill: str, batch_size: int, dim: int = 384, repeats: int = 5, device: str = "cpu",
              dataset_dir: str = "data/synthetic-default") -> float:
    """Median milliseconds of one forward + backward of ``distill``'s loss (after one warm-up call)."""
    device_t = torch.device(device)
    run = _loss_inputs(distill, batch_size, dim, device_t, dataset_dir)
    run()
    times = []
    for _ in range(repeats):
        _sync(device_t)
        t0 = time.perf_counter()
        run()
        _sync(device_t)
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def loss_memory(distill: str, batch_size: int, dim: int = 384, device: str = "cpu",
                dataset_dir: str = "data/synthetic-default") -> dict[str, Any]:
    """Peak memory of the first forward + backward in this process (run it in a fresh one:
    :func:`loss_memory_subprocess`): CUDA ``max_memory_allocated`` above the inputs, or on CPU the peak resident
    memory (``VmHWM`` after a reset) above the resident memory before the call."""
    device_t = torch.device(device)
    run = _loss_inputs(distill, batch_size, dim, device_t, dataset_dir)
    if device_t.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        run()
        return {"peak_mb": (torch.cuda.max_memory_allocated() - before) / 2**20, "method": "cuda"}
    before = status_mb("VmRSS")
    ok = reset_peak_rss()
    run()
    peak = status_mb("VmHWM")
    if not ok or peak is None or before is None:
        return {"peak_mb": None, "method": "unavailable (no /proc)"}
    return {"peak_mb": max(peak - before, 0.0), "method": "VmHWM"}


def in_fresh_process(func: str, *args: Any, threads: int = 2) -> dict[str, Any]:
    """``func(*args)`` of this module run in a fresh Python process (so its peak memory is its own); returns the
    dict it returns (JSON)."""
    import json
    import subprocess
    import sys

    code = (f"import json, torch; torch.set_num_threads({threads}); "
            f"from crossmodal.training import bench_distill as b; "
            f"print(json.dumps(b.{func}(*{args!r})))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    if proc.returncode:
        raise RuntimeError(f"{func}{args} in a fresh process failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def loss_memory_subprocess(distill: str, batch_size: int, dim: int = 384, device: str = "cpu", threads: int = 2,
                           dataset_dir: str = "data/synthetic-default") -> dict[str, Any]:
    return in_fresh_process("loss_memory", distill, batch_size, dim, device, dataset_dir, threads=threads)


def student_step_memory(distill: str, batch_size: int, dataset_dir: str, device: str = "cpu",
                        max_chunk: int | None = None) -> dict[str, Any]:
    """Peak memory of one student training step (forward, objective, backward, Adam) at ``batch_size`` on real
    images, teacher outputs from a random in-memory cache; run it in a fresh process
    (:func:`student_step_memory_subprocess`). Resident memory before the step and the peak during it (CPU), or
    CUDA ``max_memory_allocated`` above what was allocated before."""
    from hydra.utils import instantiate

    device_t = torch.device(device)
    cfg = compose(distill, dataset_dir, [f"data.batch_size={batch_size}", "data.num_workers=0",
                                         "data.require=[image]"])
    dm = instantiate(cfg.data, modalities=["image"])
    batch = move_batch(next(iter(dm.train_loader())), device_t)
    cache = random_cache(dm.dataset("train").sample_ids)
    model = instantiate(cfg.student).to(device_t).train()
    objective = instantiate(cfg.distill.objective).to(device_t)
    opt = torch.optim.Adam(list(model.parameters()) + list(objective.parameters()), lr=1e-4)
    teacher = None
    if objective.cache_outputs:
        teacher = objective.teacher_input(lambda out: cache.lookup(batch["sample_ids"], out, device=device_t))
    out: dict[str, Any] = {"distill": distill, "batch_size": int(batch["indices"].shape[0]), "max_chunk": max_chunk}
    if device_t.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        before = status_mb("VmRSS")
        ok = reset_peak_rss()
    forward_backward(model, batch, StepLoss(objective, teacher), (objective.output,), max_chunk)
    opt.step()
    if device_t.type == "cuda":
        out.update(peak_mb=(torch.cuda.max_memory_allocated() - before) / 2**20, method="cuda")
    else:
        peak = status_mb("VmHWM")
        out.update(rss_before_mb=before, peak_rss_mb=peak if ok else None, method="VmHWM" if ok else "unavailable")
    return out


def student_step_memory_subprocess(distill: str, batch_size: int, dataset_dir: str, device: str = "cpu",
                                   max_chunk: int | None = None, threads: int = 2) -> dict[str, Any]:
    return in_fresh_process("student_step_memory", distill, batch_size, dataset_dir, device, max_chunk,
                            threads=threads)
