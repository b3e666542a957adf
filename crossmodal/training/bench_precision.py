"""Mixed precision and ``torch.compile`` benchmark of the training steps (``scripts/bench_precision.py``).

**What is timed**: the teacher's and the distilled student's training step as
:func:`~crossmodal.training.trainer.fit` runs them (:mod:`crossmodal.training.bench_steps`: forward under the
step's autocast, loss in float32, backward, the fp16 loss scaler where it applies, the optimiser step), for each
configuration ``precision[+compile]`` (``trainer.precision`` in ``fp32`` / ``bf16`` / ``fp16``, ``trainer.compile``
on or off), on the same real collated training batches from the same initial weights.

**How**: every configuration runs in a fresh process (:func:`worker`; a compiled graph, cuDNN's autotuning or the
allocator's cache never carries over), ``rounds`` times, interleaved with the others so that drifting machine load
hits them alike. In each process the first step is timed apart (``first step``: compilation, autotuning, lazy
initialisation), then ``warmup - 1`` more untimed steps, then ``steps`` steps timed between device
synchronisations; the figure is the median step, then the median over rounds. **Speed-up** = the ``fp32``
(eager) step time of the same role measured in the same run / the configuration's. **Loss deviation**: the
losses of the first and of the last step, relative to the fp32 eager run's at the same step (same batches, same
weights at the start), i.e. how far the reduced precision moved the numbers. On CUDA also the peak memory
allocated during the timed steps (``torch.cuda.max_memory_allocated``).
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from .bench_scaling import launch
from .bench_steps import student_step, teacher_step, timed_steps
from .step import PRECISIONS

ROLES = ("teacher", "student")


def parse_config(text: str) -> tuple[str, bool]:
    """``"bf16+compile"`` -> ``("bf16", True)``; ``"fp32"`` -> ``("fp32", False)``."""
    precision, _, rest = text.partition("+")
    if precision not in PRECISIONS or rest not in ("", "compile"):
        raise ValueError(f"configuration {text!r}: expected <precision>[+compile] with precision one of "
                         f"{sorted(PRECISIONS)}")
    return precision, rest == "compile"


def default_configs(device: str) -> list[str]:
    """All six on CUDA; on the CPU fp16 is left out (autocast float16 there is emulated and slow)."""
    precisions = ["fp32", "bf16", "fp16"] if torch.device(device).type == "cuda" else ["fp32", "bf16"]
    return precisions + [f"{p}+compile" for p in precisions]


def worker(role: str, dataset_dir: str, config: str, batch_size: int = 32, steps: int = 6, warmup: int = 2,
           threads: int | None = None, device: str = "cpu", teacher: str = "fusion", distill: str = "feature_l2",
           compile_mode: str | None = None, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """One configuration of one role, timed in this process."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}, got {role!r}")
    if threads:
        torch.set_num_threads(int(threads))
    precision, compiled = parse_config(config)
    make, which = (teacher_step, teacher) if role == "teacher" else (student_step, distill)
    bench = make(dataset_dir, which, batch_size, device, precision=precision, compile=compiled,
                 compile_mode=compile_mode, overrides=overrides)
    cuda = bench.device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(bench.device)
    timing = timed_steps(bench, steps, warmup)
    return {"role": role, "model": which, "config": config, "precision": precision, "compile": compiled,
            "batch_size": bench.global_batch, "device": str(bench.device), "threads": torch.get_num_threads(),
            "ms_per_step": 1000 * timing["step_s"], "first_step_s": timing["first_step_s"],
            "losses": timing["losses"],
            "cuda_peak_mb": torch.cuda.max_memory_allocated(bench.device) / 2**20 if cuda else None}


def run_all(script: str | Path, roles: Sequence[str], configs: Sequence[str], args: Sequence[str],
            rounds: int = 2, timeout: float = 1800) -> list[dict[str, Any]]:
    """Every (role, configuration) in a fresh process (``script --worker``), ``rounds`` interleaved times; one row
    each with the median step time, speed-up and loss deviation against the role's ``fp32`` row. A configuration
    that fails (e.g. a compiler missing) gets a row with ``error`` instead of figures."""
    configs = list(configs)
    if "fp32" not in configs:
        configs.insert(0, "fp32")  # the baseline of the ratios
    for c in configs:
        parse_config(c)
    runs: dict[tuple[str, str], list[dict[str, Any]]] = {(r, c): [] for r in roles for c in configs}
    errors: dict[tuple[str, str], str] = {}
    for _ in range(rounds):
        for key, results in runs.items():
            if key in errors:
                continue
            role, config = key
            try:
                results.append(launch(None, script, [*args, "--role", role, "--config", config], timeout))
            except RuntimeError as exc:
                errors[key] = str(exc).strip().splitlines()[-1][:300]
    rows = []
    for (role, config), results in runs.items():
        if (role, config) in errors:
            rows.append({"role": role, "config": config, "error": errors[(role, config)]})
            continue
        row = dict(results[0])
        row["ms_per_step"] = statistics.median(r["ms_per_step"] for r in results)
        row["first_step_s"] = statistics.median(r["first_step_s"] for r in results)
        row["rounds_ms"] = [round(r["ms_per_step"], 1) for r in results]
        rows.append(row)
    for row in rows:
        base = next((b for b in rows if b["role"] == row["role"] and b["config"] == "fp32" and "error" not in b),
                    None)
        if base is None or "error" in row:
            continue
        row["speedup"] = base["ms_per_step"] / row["ms_per_step"]
        row["loss_dev_first"] = _rel(row["losses"][0], base["losses"][0])
        row["loss_dev_last"] = _rel(row["losses"][-1], base["losses"][-1])
    return rows


def _rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-12)


def table(rows: Sequence[dict[str, Any]]) -> str:
    """The rows as a Markdown table."""
    lines = [("| role | model | configuration | batch | ms / step | speed-up vs fp32 | first step (s) | "
              "loss deviation, first / last step | peak CUDA MB |"),
             "|---|---|---|---:|---:|---:|---:|---|---:|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['role']} | | {r['config']} | | failed: {r['error']} | | | | |")
            continue
        peak = "-" if r.get("cuda_peak_mb") is None else f"{r['cuda_peak_mb']:.0f}"
        dev = (f"{r['loss_dev_first']:.1e} / {r['loss_dev_last']:.1e}" if "loss_dev_first" in r else "-")
        speed = f"{r['speedup']:.2f}" if "speedup" in r else "-"
        lines.append(f"| {r['role']} | {r['model']} | {r['config']} | {r['batch_size']} | {r['ms_per_step']:.0f} "
                     f"(rounds {r['rounds_ms']}) | {speed} | {r['first_step_s']:.1f} | {dev} | {peak} |")
    return "\n".join(lines)
