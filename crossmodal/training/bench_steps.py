"""The training steps that the step benchmarks time, set up as :func:`~crossmodal.training.trainer.fit` runs
them (``scripts/bench_scaling.py``, ``scripts/bench_precision.py``).

:func:`student_step` and :func:`teacher_step` build the model, the loss, the optimiser and a
:class:`~crossmodal.training.step.StepRunner` (DDP under torchrun, ``precision``, ``compile``) and collate a few
full training batches of the dataset before any clock starts (real images and clouds, the sampler's positive
pairs, the training augmentation; under DDP each rank's share of the same global batches); they return a
:class:`BenchStep` whose ``step(batch)`` runs one training step and returns its loss. The student's teacher
outputs come from a teacher cache of random values with the fusion teacher's sizes (the lookup is what the step
pays; the values do not change the cost). :func:`timed_steps` times the first (cold) step apart: it holds
``torch.compile``'s compilation and cuDNN's autotuning.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from . import distributed
from .bench_distill import compose, random_cache
from .objective import StepLoss
from .step import StepRunner
from .testing import compose_train_teacher


def dataset_or_fake(path: str | Path) -> Path:
    """``path`` when it holds a preprocessed dataset; otherwise a fake one (4 runs, 160x120 images, clouds) in a
    temporary folder, with a printed notice."""
    root = Path(path)
    if (root / "manifest.parquet").is_file():
        return root
    import tempfile

    from crossmodal.data.fake import write_fake_manifest

    fake = Path(tempfile.mkdtemp(prefix="crossmodal_bench_")) / "fake"
    write_fake_manifest(fake, runs=4, train_per_run=60, eval_per_run=4, image_size=(120, 160))
    print(f"{root} holds no dataset: using a fake one with 160x120 images ({fake})")
    return fake


@dataclass
class BenchStep:
    """One benchmarked training step: ``step(batch) -> loss`` over the prepared ``batches``."""

    step: Callable[[dict[str, Any]], float]
    batches: list[dict[str, Any]]
    model: torch.nn.Module
    device: torch.device

    @property
    def global_batch(self) -> int:
        return int(self.batches[0]["global_batch_size"])


def _device(device: str) -> torch.device:
    info = distributed.init_from_env(device)
    dev = torch.device(device)
    if dev.type == "cuda" and info.enabled:
        dev = torch.device("cuda", info.local_rank)
    return dev


def _full_batches(loader, runner: StepRunner, global_batch: int, n: int, where: str) -> list[dict[str, Any]]:
    """The first ``n`` full global batches of ``loader``, prepared (and moved) by ``runner``."""
    sizes = [len(b) for b in loader.batch_sampler.global_batches()]
    out = []
    for size, batch in zip(sizes, loader):
        if size < global_batch:
            continue  # a short last batch (the same decision on every rank): keep the global batch size fixed
        out.append(runner.prepare(batch))
        if len(out) >= n:
            break
    if not out:
        raise ValueError(f"{where}: no full training batch of {global_batch}")
    return out


def _loader(dm):
    info = distributed.info()
    if info.enabled:
        return dm.train_loader(num_replicas=info.world_size, rank=info.rank, partition="shards")
    return dm.train_loader()


def student_step(dataset_dir: str, distill: str = "feature_l2", global_batch: int = 32, device: str = "cpu", *,
                 precision: str = "fp32", compile: bool = False, compile_mode: str | None = None,
                 sync_batchnorm: bool = False, overrides: Sequence[str] = (), n_batches: int = 4) -> BenchStep:
    """The distilled student's step (``configs/distill.yaml`` with ``distill``), image-only data."""
    from hydra.utils import instantiate

    dev = _device(device)
    cfg = compose(distill, dataset_dir, [f"data.batch_size={global_batch}", "data.num_workers=0",
                                         "data.require=[image]", *overrides])
    dm = instantiate(cfg.data, modalities=["image"])
    torch.manual_seed(0)
    model = instantiate(cfg.student).to(dev).train()
    objective = instantiate(cfg.distill.objective).to(dev)
    train = dm.dataset("train")
    runner = StepRunner(model, dev, tuples=train.tuples, sync_batchnorm=sync_batchnorm, precision=precision,
                        compile=compile, compile_mode=compile_mode, extra_params=list(objective.parameters()))
    optimizer = torch.optim.Adam(list(model.parameters()) + list(objective.parameters()), lr=1e-4)
    cache = random_cache(train.sample_ids)
    batches = _full_batches(_loader(dm), runner, global_batch, n_batches, dataset_dir)

    def step(batch: dict[str, Any]) -> float:
        teacher = None
        if objective.cache_outputs:
            ids = batch["global_sample_ids"]
            teacher = objective.teacher_input(lambda out: cache.lookup(ids, out, device=dev))
        optimizer.zero_grad(set_to_none=True)
        loss, _ = runner.forward_backward(batch, StepLoss(objective, teacher), (objective.output,))
        runner.optimizer_step(optimizer)
        return float(loss)

    return BenchStep(step, batches, model, dev)


def teacher_step(dataset_dir: str, teacher: str = "fusion", global_batch: int = 32, device: str = "cpu", *,
                 precision: str = "fp32", compile: bool = False, compile_mode: str | None = None,
                 sync_batchnorm: bool = False, overrides: Sequence[str] = (), n_batches: int = 4) -> BenchStep:
    """A teacher's step (``configs/train_teacher.yaml`` with ``teacher``: its loss and optimiser)."""
    from hydra.utils import instantiate

    from .trainer import model_modalities

    dev = _device(device)
    cfg = compose_train_teacher([f"teacher={teacher}", f"dataset_dir={dataset_dir}",
                                 f"data.batch_size={global_batch}", "data.num_workers=0", *overrides])
    torch.manual_seed(0)
    model = instantiate(cfg.teacher).to(dev).train()
    dm = instantiate(cfg.data, modalities=list(model_modalities(model)))
    loss_fn = instantiate(cfg.teacher_loss)
    optimizer, _ = instantiate(cfg.optimizer, _convert_="all").build(model)
    runner = StepRunner(model, dev, tuples=dm.dataset("train").tuples, sync_batchnorm=sync_batchnorm,
                        precision=precision, compile=compile, compile_mode=compile_mode)
    batches = _full_batches(_loader(dm), runner, global_batch, n_batches, dataset_dir)

    def step(batch: dict[str, Any]) -> float:
        optimizer.zero_grad(set_to_none=True)
        loss, _ = runner.forward_backward(batch, loss_fn, loss_fn.outputs)
        runner.optimizer_step(optimizer)
        return float(loss)

    return BenchStep(step, batches, model, dev)


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work and for every rank."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    distributed.barrier()


def timed_steps(bench: BenchStep, steps: int, warmup: int = 1) -> dict[str, Any]:
    """Run ``warmup`` untimed steps (the first one timed apart: ``first_step_s``) then ``steps`` timed ones,
    cycling over the batches; each step is timed between :func:`synchronize` calls. Returns ``first_step_s``,
    ``step_s`` (the median), ``times_s`` and ``losses`` (every step's loss, warm-up included, in order)."""
    losses, times = [], []
    first = None
    n = len(bench.batches)
    for i in range(max(1, warmup) + steps):
        synchronize(bench.device)
        t0 = time.perf_counter()
        losses.append(bench.step(bench.batches[i % n]))
        synchronize(bench.device)
        dt = time.perf_counter() - t0
        if i == 0:
            first = dt
        if i >= max(1, warmup):
            times.append(dt)
    return {"first_step_s": first, "step_s": statistics.median(times), "times_s": times, "losses": losses}
