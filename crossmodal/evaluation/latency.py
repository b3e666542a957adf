"""Latency as TSCM reports it: descriptor extraction ms/image at batch 1 and batched, matching ms/query against
10k and 100k databases, with the machine named.

- Extraction: the model's forward on an already collated batch (decoding, resizing and cloud quantisation are
  data loading, not counted), under ``torch.inference_mode``; untimed warm-up calls until a call is no longer
  20 % faster than the previous one (at least ``warmup``, at most 10: the first calls at a new batch shape can
  be 10-50x slower), then the median of ``repeats`` timed calls (CUDA synchronised), divided by the batch size.
- Matching: a faiss index of ``n`` random descriptors of the model's size (the search cost does not depend on
  the values for an exact index), searched for the top 25: ``single`` = one query per call (mean over
  ``single_queries`` calls), ``batched`` = ``batched_queries`` queries in one call, per query.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from ..machine import cpu_model


@dataclasses.dataclass
class LatencyConfig:
    """What :func:`crossmodal.evaluation.evaluate_checkpoints` measures (``latency=True`` uses these defaults)."""

    enabled: bool = True
    batch_size: int | None = None  #: batched extraction size (None: the evaluation batch size)
    repeats: int = 5
    warmup: int = 1
    db_sizes: Sequence[int] = (10_000, 100_000)
    k: int = 25
    single_queries: int = 50
    batched_queries: int = 1000
    seed: int = 0

    def __post_init__(self):
        self.db_sizes = tuple(int(n) for n in self.db_sizes)
        if self.repeats < 1 or self.warmup < 0:
            raise ValueError(f"latency repeats must be >= 1 and warmup >= 0, got {self.repeats}, {self.warmup}")
        if any(n < 1 for n in self.db_sizes):
            raise ValueError(f"latency db_sizes must be positive, got {self.db_sizes}")

    @classmethod
    def parse(cls, value: bool | Mapping[str, Any] | LatencyConfig | None) -> LatencyConfig:
        if isinstance(value, LatencyConfig):
            return value
        if value is None or isinstance(value, bool):
            return cls(enabled=bool(value))
        if isinstance(value, Mapping):
            fields = {f.name for f in dataclasses.fields(cls)}
            unknown = sorted(set(value) - fields - {"_target_"})
            if unknown:
                raise ValueError(f"unknown latency option(s) {unknown}; known: {sorted(fields)}")
            return cls(**{k: v for k, v in value.items() if k in fields})
        raise TypeError(f"latency must be a bool, a mapping or a LatencyConfig, got {type(value).__name__}")


def machine_info(device: str = "cpu") -> dict[str, Any]:
    """The machine a measurement ran on: CPU model, cores, torch / faiss / onnxruntime versions and threads."""
    import torch

    info: dict[str, Any] = {
        "cpu": cpu_model(), "cores": os.cpu_count(), "host": platform.node(), "python": platform.python_version(),
        "torch": torch.__version__.split("+")[0], "torch_threads": torch.get_num_threads(), "device": str(device),
        "os": f"{platform.system()} {platform.release()}",
    }
    try:
        with open("/proc/loadavg", encoding="utf-8") as fh:
            info["load_average_1min"] = float(fh.read().split()[0])
    except (OSError, ValueError, IndexError):
        pass
    try:
        import faiss

        info["faiss"] = faiss.__version__
        info["faiss_threads"] = faiss.omp_get_max_threads()
    except ImportError:  # pragma: no cover - faiss is a dependency
        pass
    if str(device).startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info


def _threads(n: Any) -> str:
    return f"{n} thread" + ("" if n == 1 else "s")


def machine_line(info: Mapping[str, Any]) -> str:
    """One line naming the machine, e.g. ``AMD EPYC (2 cores), torch 2.15.0 on 2 threads, faiss 1.15.1 on 2
    threads, device cpu``."""
    parts = [f"{info.get('cpu', '?')} ({info.get('cores', '?')} cores)",
             f"torch {info.get('torch', '?')} on {_threads(info.get('torch_threads'))}"]
    if "faiss" in info:
        parts.append(f"faiss {info['faiss']} on {_threads(info.get('faiss_threads'))}")
    dev = f"device {info.get('device', 'cpu')}"
    if info.get("gpu"):
        dev += f" ({info['gpu']})"
    parts.append(dev)
    if "load_average_1min" in info:
        parts.append(f"load average {info['load_average_1min']:.1f} at start")
    return ", ".join(parts)


def timed(fn: Callable[[], Any], repeats: int = 5, warmup: int = 1, sync: Callable[[], None] | None = None,
          max_warmup: int = 10) -> float:
    """Median wall time (seconds) of ``repeats`` calls of ``fn`` after the warm-up: at least ``warmup`` untimed
    calls (0: none), continued (up to ``max_warmup``) while a call is still over 20 % faster than the one before;
    the first calls at a new input shape can be many times slower (allocator, oneDNN primitive caches)."""

    def once() -> float:
        t0 = time.perf_counter()
        fn()
        if sync:
            sync()
        return time.perf_counter() - t0

    prev = None
    for i in range(max(warmup, max_warmup) if warmup > 0 else 0):
        took = once()
        if i + 1 >= warmup and prev is not None and took > 0.8 * prev:
            break
        prev = took
    return statistics.median(once() for _ in range(repeats))


def extraction_latency(model, batch: Mapping[str, Any], device: str = "cpu", repeats: int = 5,
                       warmup: int = 1) -> dict[str, Any]:
    """``{"batch_1_ms", "batched_ms", "batch_size"}``: ms per image of ``model``'s forward on the first item of
    ``batch`` and on the whole batch (a collated batch dict, any modalities)."""
    import torch

    from crossmodal.training.multistage import batch_size_of, move_batch, split_batch

    size = batch_size_of(batch)
    dev = torch.device(device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else None
    was_training = model.training
    model.eval()
    out: dict[str, Any] = {"batch_size": int(size)}
    try:
        with torch.inference_mode():
            for key, n in (("batch_1_ms", 1), ("batched_ms", size)):
                part = move_batch(split_batch(batch, 0, n), dev)
                seconds = timed(lambda p=part: model(p), repeats, warmup, sync)
                out[key] = seconds / n * 1000.0
    finally:
        model.train(was_training)
    return out


def matching_latency(dim: int, metric: str = "euclidean", index: Any = "flat",
                     db_sizes: Sequence[int] = (10_000, 100_000), k: int = 25, single_queries: int = 50,
                     batched_queries: int = 1000, seed: int = 0, repeats: int = 3,
                     progress: bool = False) -> dict[str, dict[str, float]]:
    """Per database size: ``{"single_ms", "batched_ms", "build_s"}`` (ms per query)."""
    from tqdm import tqdm

    from .search import IndexSpec, SearchIndex

    spec = IndexSpec.parse(index)
    if spec.kind == "numpy":
        spec = IndexSpec("flat")
    rng = np.random.default_rng(seed)
    out = {}
    for n in tqdm(list(db_sizes), desc="matching latency", leave=False, disable=not progress):
        db = rng.standard_normal((int(n), int(dim)), dtype=np.float32)
        q = rng.standard_normal((max(batched_queries, single_queries), int(dim)), dtype=np.float32)
        t0 = time.perf_counter()
        index_ = SearchIndex(dim, metric, spec).add(db)
        build = time.perf_counter() - t0
        del db
        singles = q[:single_queries]

        def run_single(index_=index_, singles=singles):
            for row in singles:
                index_.search(row[None], k)

        single = timed(run_single, repeats, 1) / max(len(singles), 1) * 1000.0
        batch = q[:batched_queries]
        batched = timed(lambda index_=index_, batch=batch: index_.search(batch, k), repeats, 1) / len(batch) * 1000.0
        out[str(int(n))] = {"single_ms": single, "batched_ms": batched, "build_s": build,
                            "queries_batched": int(batched_queries)}
    return out
