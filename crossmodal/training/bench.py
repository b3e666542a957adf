"""Teacher training throughput and step memory (``scripts/bench_teacher.py``).

Throughput: ``steps`` training steps (forward, loss, backward, Adam step) of a teacher on real collated batches
of the dataset's training split (the sampler's pairs, the training augmentation, the dataset's image size),
collated before timing, after ``warmup`` untimed steps; samples/s = items / seconds. Data loading (reading,
augmenting and collating the same batches in the main process) is timed separately.

Memory (CPU): a fresh Python process per (teacher, batch size) builds the model and optimiser, collates one batch,
then resets the kernel's peak-RSS mark (``5`` written to ``/proc/self/clear_refs``), runs one training step and
reads ``VmHWM`` from ``/proc/self/status``: ``step_peak_rss_mb`` is the peak resident memory of the process during
the step (model, optimiser state, batch, activations, gradients, the allocator's cached blocks and the ~0.6 GB of
the imported libraries included), ``step_extra_mb`` that peak minus the resident memory just before the step.
``resource.getrusage(...).ru_maxrss`` is not used: a forked child inherits the parent's mark. Where ``/proc`` is
missing, ``ru_maxrss`` of the child is reported instead (an upper bound). On CUDA also
``torch.cuda.max_memory_allocated`` around the step (``cuda_step_peak_mb``, above what was allocated before).
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from .multistage import forward_backward, move_batch
from .testing import compose_train_teacher


def status_mb(field: str) -> float | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024.0  # kB
    except OSError:
        pass
    return None


def reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def build(teacher: str, dataset_dir: str, batch_size: int, overrides: list[str] = ()) -> tuple[Any, ...]:
    from hydra.utils import instantiate

    from .trainer import model_modalities

    cfg = compose_train_teacher([f"teacher={teacher}", f"dataset_dir={dataset_dir}", f"data.batch_size={batch_size}",
                                 "data.num_workers=0", *overrides])
    torch.manual_seed(0)
    model = instantiate(cfg.teacher)
    dm = instantiate(cfg.data, modalities=list(model_modalities(model)))
    loss_fn = instantiate(cfg.teacher_loss)
    opt, _ = instantiate(cfg.optimizer, _convert_="all").build(model)
    return cfg, model, dm, loss_fn, opt


def batches(dm, n: int, min_size: int) -> tuple[list[dict[str, Any]], float]:
    """``n`` full-size training batches (cycling epochs when needed) and the seconds spent loading them."""
    loader = dm.train_loader()
    out, t, epoch = [], 0.0, 0
    while len(out) < n:
        dm.set_epoch(epoch)
        t0 = time.perf_counter()
        for b in loader:
            if b["indices"].shape[0] >= min_size:
                out.append(b)
            if len(out) >= n:
                break
        t += time.perf_counter() - t0
        epoch += 1
        if epoch > 50:
            raise RuntimeError("the training split gives no batch of the requested size")
    return out, t


def throughput(teacher: str, dataset_dir: str, batch_size: int, steps: int = 3, warmup: int = 1,
               device: str = "cpu", max_chunk: int | None = None, overrides: list[str] = ()) -> dict[str, Any]:
    cfg, model, dm, loss_fn, opt = build(teacher, dataset_dir, batch_size, list(overrides))
    dev = torch.device(device)
    model.to(dev).train()
    data, load_s = batches(dm, steps + warmup, batch_size)
    items = sum(int(b["indices"].shape[0]) for b in data[warmup:])
    for i, b in enumerate(data):
        if i == warmup:
            if dev.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
        b = move_batch(b, dev)
        opt.zero_grad(set_to_none=True)
        forward_backward(model, b, loss_fn, loss_fn.outputs, max_chunk)
        opt.step()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    secs = time.perf_counter() - t0
    img = data[0].get("images")
    vox = [int(b["coords"].shape[0]) / int(b["indices"].shape[0]) for b in data if "coords" in b]
    return {"teacher": teacher, "batch_size": batch_size, "steps": steps, "samples_per_s": items / secs,
            "step_s": secs / steps, "load_samples_per_s": sum(int(b["indices"].shape[0]) for b in data) / load_s,
            "image_hw": None if img is None else list(img.shape[-2:]),
            "voxels_per_cloud": sum(vox) / len(vox) if vox else None,
            "quantization_size": float(cfg.data.quantization_size),
            "parameters_m": sum(p.numel() for p in model.parameters()) / 1e6, "threads": torch.get_num_threads(),
            "device": str(dev)}


def step_memory(teacher: str, dataset_dir: str, batch_size: int, device: str = "cpu",
                max_chunk: int | None = None, overrides: list[str] = ()) -> dict[str, Any]:
    """Run in a fresh process (see module doc)."""
    _, model, dm, loss_fn, opt = build(teacher, dataset_dir, batch_size, list(overrides))
    dev = torch.device(device)
    model.to(dev).train()
    (b,), _ = batches(dm, 1, batch_size)
    b = move_batch(b, dev)
    import gc

    gc.collect()
    before = status_mb("VmRSS")
    reset = reset_peak_rss()
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    opt.zero_grad(set_to_none=True)
    forward_backward(model, b, loss_fn, loss_fn.outputs, max_chunk)
    opt.step()
    peak = status_mb("VmHWM") if reset else None
    if peak is None or before is None:
        out = {"step_peak_rss_mb": _maxrss_mb(), "step_extra_mb": float("nan"), "method": "ru_maxrss"}
    else:
        out = {"step_peak_rss_mb": peak, "step_extra_mb": peak - before, "method": "VmHWM"}
    out.update({"teacher": teacher, "batch_size": batch_size, "rss_before_step_mb": before, "max_chunk": max_chunk})
    if dev.type == "cuda":
        torch.cuda.synchronize()
        out["cuda_step_peak_mb"] = (torch.cuda.max_memory_allocated() - base) / 2**20
    return out


def step_memory_subprocess(teacher: str, dataset_dir: str, batch_size: int, threads: int, device: str = "cpu",
                           max_chunk: int | None = None, overrides: list[str] = ()) -> dict[str, Any]:
    code = ("import json, sys, torch; from crossmodal.training.bench import step_memory; "
            f"torch.set_num_threads({int(threads)}); "
            f"print('@@' + json.dumps(step_memory({teacher!r}, {dataset_dir!r}, {int(batch_size)}, {device!r}, "
            f"{max_chunk!r}, {list(overrides)!r})))")
    root = Path(__file__).resolve().parents[2]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=root,
                          check=False)
    if proc.returncode:
        raise RuntimeError(f"memory probe failed (teacher {teacher}, batch {batch_size}):\n{proc.stderr[-3000:]}")
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("@@"))
    return json.loads(line[2:])
