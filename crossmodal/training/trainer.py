"""Teacher training loop (``scripts/train_teacher.py``; config ``configs/train_teacher.yaml``).

:func:`train_teacher(cfg, run_dir)` builds the teacher (``cfg.teacher``), the data (``cfg.data``; the modalities
the teacher reads), the loss (``cfg.teacher_loss``), the optimiser and schedule (``cfg.optimizer``) and trains for
``cfg.trainer.epochs`` epochs:

- batches of mutual-positive pairs (:class:`~crossmodal.data.PositivePairBatchSampler`); one optimiser step per
  batch, through :func:`~crossmodal.training.multistage.forward_backward` (multi-stage backprop for batches larger
  than ``trainer.max_chunk``);
- batch expansion (MinkLoc3D): after an epoch whose share of non-zero triplets (summed over its batches) is below
  ``trainer.batch_expansion_th``, the sampler's batch grows by ``batch_expansion_rate`` up to
  ``batch_size_limit``;
- MultiStepLR stepped once per epoch;
- validation Recall@1 / @1% on the validation sets every ``val_every`` epochs (and after the last one), used to
  keep ``best.pt``; ``last.pt`` every epoch; the CSV log ``metrics.csv`` rewritten every epoch;
- at the end, the best checkpoint is evaluated once on the evaluation (test) sets, and ``summary.json`` written.

Resume (``resume: auto``, the default of ``configs/train_teacher.yaml``: the newest sibling run folder of the same
config when it is unfinished; ``resume=true``: the newest ``last.pt`` among the sibling run folders of the same
teacher; or ``trainer.resume=<last.pt or run folder>``) restores model, optimiser, scheduler, batch size, RNG states, best
figures and history, after checking the model class, state-dict layout and config
(:func:`~crossmodal.training.checkpoint.check_compatible`); on CPU with the same seed it ends with the same metrics
as an uninterrupted run. The resumed run writes into its own run folder (history and ``best.pt`` carried over).

Under ``torchrun`` the loop runs data-parallel (:mod:`crossmodal.training.step`, ``docs/scaling.md``).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import logging
import math
import os
import random
import shutil
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

import crossmodal
from preprocessing.io import atomic_path, atomic_write_json, atomic_write_text

from . import distributed
from .checkpoint import (
    FORMAT,
    RESUME_IGNORED,
    CheckpointMismatchError,
    check_compatible,
    class_name,
    config_differences,
    fingerprint,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from .optim import group_lrs
from .step import StepRunner
from .validation import evaluate, load_eval_sets

log = logging.getLogger(__name__)

#: Environment for bit-reproducible CPU training (read by MKL when it loads; set before importing torch).
DETERMINISTIC_ENV = {"MKL_CBWR": "COMPATIBLE", "MKL_ENABLE_INSTRUCTIONS": "SSE4_2"}

CSV_COLUMNS = ("epoch", "loss", "non_zero_fraction", "num_triplets", "batch_size", "steps", "samples", "val_r1",
               "val_r1p", "train_time_s", "val_time_s", "epoch_time_s")
#: Per-epoch means of the task loss's collapse diagnostics (crossmodal.losses.BatchHardTripletLoss stats)
DIAGNOSTICS = ("spread", "pos_neg_gap")
#: Below this epoch-mean spread the descriptors are taken as collapsed (a warning in the log)
COLLAPSE_SPREAD = 0.05


class NoTripletsError(RuntimeError):
    """A whole epoch in which no batch formed a triplet: the task loss had nothing to learn from."""


@dataclasses.dataclass
class TrainerConfig:
    """``configs/trainer/*.yaml``.

    Attributes:
        epochs: length of the schedule (MultiStepLR milestones count in epochs).
        max_epochs: stop once this many epochs are completed (time-boxing or a deliberate interruption; a
            resumed run continues up to ``epochs``); null: no limit.
        seed: torch / numpy / python seed (model initialisation); the data order and augmentation use
            ``data.seed``.
        device: ``cpu`` or ``cuda``; threads: ``torch.set_num_threads`` (null: torch's default).
        max_chunk: multi-stage backprop above this many items per batch (null: never).
        batch_expansion_th, batch_expansion_rate, batch_size_limit: batch expansion (th null: off).
        val_every: validate every n epochs (always after the last one).
        eval_test: evaluate the best checkpoint on the evaluation sets at the end.
        max_steps_per_epoch: cut epochs short (smoke tests, benchmarks); null: full epochs.
        progress: tqdm bars.
        resume: ``last.pt`` (or a run folder holding one) to continue from; see also the top-level ``resume``.
        deterministic: bit-reproducible CPU runs (and so resumes): one thread, and MKL pinned to one code path
            (:data:`DETERMINISTIC_ENV`, which ``scripts/train_teacher.py`` sets before torch loads). Without it the
            sparse convolutions' kernel gradients differ between processes by ~1e-6 (relative; MKL's GEMM depends
            on memory alignment, and results also vary with 2 threads), so two runs, or a run and its
            resumption, drift apart slowly. Much slower (one thread); meant for tests and audits. On CUDA it
            also asks cuDNN and PyTorch for deterministic algorithms (``docs/scaling.md``).
        sync_batchnorm: under DDP (torchrun), BatchNorm statistics over the global batch instead of each rank's
            share (:mod:`crossmodal.training.sync_batchnorm`); no effect on one process.
        precision: ``fp32`` (default), ``bf16`` or ``fp16`` autocast of the forward passes (fp16 with a
            GradScaler); see :mod:`crossmodal.training.step`.
        compile: ``torch.compile`` the training forward (``compile_backend``, ``compile_mode``).
    """

    epochs: int = 60
    max_epochs: int | None = None
    seed: int = 0
    device: str = "cpu"
    threads: int | None = None
    max_chunk: int | None = None
    batch_expansion_th: float | None = None
    batch_expansion_rate: float = 1.4
    batch_size_limit: int | None = None
    val_every: int = 1
    eval_test: bool = True
    max_steps_per_epoch: int | None = None
    progress: bool = True
    resume: str | None = None
    deterministic: bool = False
    sync_batchnorm: bool = False
    precision: str = "fp32"
    compile: bool = False
    compile_backend: str = "inductor"
    compile_mode: str | None = None

    def __post_init__(self) -> None:
        from .step import PRECISIONS

        if self.epochs < 1:
            raise ValueError(f"trainer.epochs must be at least 1, got {self.epochs}")
        if self.val_every < 1:
            raise ValueError(f"trainer.val_every must be at least 1, got {self.val_every}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"trainer.precision must be one of {sorted(PRECISIONS)}, got {self.precision!r}")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def model_modalities(model: nn.Module) -> tuple[str, ...]:
    """What a teacher reads: ``image`` if it has an ``image`` branch, ``cloud`` if a ``cloud`` branch."""
    mods = tuple(m for m in ("image", "cloud") if isinstance(getattr(model, m, None), nn.Module))
    if not mods:
        raise ValueError(f"{class_name(model)} has neither an 'image' nor a 'cloud' branch; set `modalities` "
                         f"in the config explicitly")
    return mods


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _config_dict(cfg: Any) -> dict[str, Any]:
    from omegaconf import OmegaConf

    if OmegaConf.is_config(cfg):
        return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
    return dict(cfg)


def _resume_mode(cfg: Any) -> str:
    value = cfg.get("resume", False)
    if value in (None, False) or str(value).lower() in ("false", "no", "off", "0"):
        return "off"
    if value is True or str(value).lower() in ("true", "yes", "on", "1"):
        return "newest"
    if str(value).lower() == "auto":
        return "auto"
    raise ValueError(f"resume must be true, false or auto, got {value!r}")


def _run_state(run: Path, config: Mapping[str, Any], role: str) -> str | None:
    """``"finished"`` / ``"unfinished"`` for a sibling run folder holding ``last.pt`` that was made by this config
    (``config.yaml`` written at its start, else its checkpoint's; run-control keys aside), None for another
    config or an unreadable folder."""
    import yaml

    recorded = ckpt = None
    if (run / "config.yaml").is_file():
        try:
            recorded = yaml.safe_load((run / "config.yaml").read_text())
        except yaml.YAMLError:
            recorded = None
    try:
        if recorded is None:
            ckpt = load_checkpoint(run / "last.pt", expect_role=role)
            recorded = ckpt.get("config") or {}
    except (CheckpointMismatchError, FileNotFoundError):
        return None
    if not isinstance(recorded, Mapping) or config_differences(recorded, config, RESUME_IGNORED):
        return None
    summary = run / "summary.json"
    if summary.is_file():
        try:
            return "finished" if json.loads(summary.read_text()).get("finished") else "unfinished"
        except ValueError:
            pass
    return "unfinished"


def find_resume_checkpoint(cfg: Any, run_dir: Path, tcfg: TrainerConfig, role: str = "teacher") -> Path | None:
    """The checkpoint a run continues from: ``trainer.resume`` (a file or a run folder); else, among the
    ``last.pt`` files of ``run_dir``'s sibling folders (``run_dir`` included), with ``resume: true`` the newest,
    with ``resume: auto`` the newest of a run of the same config when that run is unfinished (killed, or stopped
    by ``trainer.max_epochs``); no such run, or a finished one: a fresh start."""
    if tcfg.resume:
        p = Path(str(tcfg.resume))
        p = p / "last.pt" if p.is_dir() else p
        if not p.is_file():
            raise FileNotFoundError(f"trainer.resume={tcfg.resume}: no checkpoint at {p}")
        return p
    mode = _resume_mode(cfg)
    if mode == "off":
        return None
    candidates = sorted((p for p in run_dir.parent.glob("*/last.pt") if p.is_file()),
                        key=lambda p: (p.stat().st_mtime_ns, str(p)), reverse=True)
    if mode == "auto":
        config = _config_dict(cfg)
        for p in candidates:
            state = _run_state(p.parent, config, role)
            if state is not None:
                return p if state == "unfinished" else None
        return None
    if not candidates:
        raise FileNotFoundError(f"resume=true but no run folder under {run_dir.parent} holds a last.pt; start "
                                f"without resume, or give trainer.resume=<path to last.pt>")
    return candidates[0]


def _copy_atomic(src: Path, dst: Path) -> None:
    if src.resolve() == dst.resolve():
        return
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)


def _write_csv(path: Path, history: list[dict[str, Any]]) -> None:
    lr = sorted({k for row in history for k in row if k not in CSV_COLUMNS and k.startswith("lr_")})
    parts = sorted({k for row in history for k in row if k.startswith("loss_")})
    diag = [k for k in DIAGNOSTICS if any(k in row for row in history)]
    columns = list(CSV_COLUMNS[:2]) + parts + list(CSV_COLUMNS[2:3]) + diag + list(CSV_COLUMNS[3:5]) + lr + \
        list(CSV_COLUMNS[5:])
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in history:
        writer.writerow({k: _fmt(row.get(k)) for k in columns})
    atomic_write_text(path, buf.getvalue())


def _fmt(v: Any) -> Any:
    if isinstance(v, float):
        return "" if math.isnan(v) else f"{v:.6g}"
    return "" if v is None else v


def _dropped(datasets: Mapping[str, Any]) -> dict[str, dict[str, int]]:
    return {split: dict(ds.skipped) for split, ds in datasets.items()}


def setup_run(tcfg: TrainerConfig) -> torch.device:
    """Process group (under torchrun), threads, determinism settings and seeds of a run; returns its device
    (``cuda:<LOCAL_RANK>`` for CUDA under torchrun)."""
    info = distributed.init_from_env(tcfg.device)
    device = torch.device(tcfg.device)
    if device.type == "cuda" and info.enabled:
        device = torch.device("cuda", info.local_rank)
    if tcfg.deterministic and device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
        torch.use_deterministic_algorithms(True, warn_only=True)
    if tcfg.deterministic:
        wrong = {k: os.environ.get(k) for k, v in DETERMINISTIC_ENV.items() if os.environ.get(k) != v}
        if wrong:
            log.warning("trainer.deterministic: environment %s differs from %s; set it before Python starts "
                        "(the scripts do) for bit-reproducible runs", wrong, DETERMINISTIC_ENV)
        torch.set_num_threads(1)
    elif tcfg.threads:
        torch.set_num_threads(int(tcfg.threads))
    seed_everything(tcfg.seed)
    return device


def train_teacher(cfg: Any, run_dir: str | Path, name: str | None = None) -> dict[str, Any]:
    """Train the teacher of ``cfg`` (composed ``configs/train_teacher.yaml``) writing into ``run_dir``; returns
    the summary (also written to ``run_dir/summary.json``)."""
    from hydra.utils import instantiate

    tcfg: TrainerConfig = instantiate(cfg.trainer, _convert_="all")
    device = setup_run(tcfg)
    model: nn.Module = instantiate(cfg.teacher).to(device)
    modalities = cfg.get("modalities", "auto")
    modalities = model_modalities(model) if modalities in (None, "auto") else tuple(modalities)
    dm = instantiate(cfg.data, modalities=list(modalities))
    loss_fn = instantiate(cfg.teacher_loss)

    def step(runner: StepRunner, batch: dict[str, Any], epoch: int) -> dict[str, float]:
        return runner.forward_backward(batch, loss_fn, loss_fn.outputs)[1]

    log.info("teacher %s: modalities %s; loss %s", name or type(model).__name__, list(modalities),
             loss_fn.extra_repr())
    return fit(cfg, run_dir, role="teacher", model=model, dm=dm, step=step, tcfg=tcfg, device=device, name=name,
               extra_summary={"modalities": list(modalities)})


def initialise_heads(model: nn.Module, dm, seed: int, max_images: int = 1000) -> None:
    """Before the first epoch of a new run: image heads that start from the data (NetVLAD's k-means centroids)
    are initialised from up to ``max_images`` unaugmented training images, seeded (every rank alike)."""
    branches = [m for m in model.modules() if callable(getattr(m, "initialise_head", None))]
    if not any(hasattr(getattr(b, "head", None), "init_from_features") for b in branches):
        return
    import itertools

    loader = dm.eval_loader("train", masks=False)
    limit = max(1, -(-max_images // max(1, loader.batch_size or 1)))
    for branch in branches:
        t0 = time.perf_counter()
        used = branch.initialise_head(itertools.islice(loader, limit), seed=seed)
        if used:
            log.info("%s head initialised from %d local features of the training images (seed %d, %.1f s)",
                     type(branch.head).__name__, used, seed, time.perf_counter() - t0)


def fit(cfg: Any, run_dir: str | Path, *, role: str, model: nn.Module, dm, step, tcfg: TrainerConfig,
        device: torch.device, objective: nn.Module | None = None, name: str | None = None,
        extra_summary: Mapping[str, Any] | None = None,
        resume_ignored: Sequence[str] = RESUME_IGNORED) -> dict[str, Any]:
    """The training loop shared by teachers and students (module doc).

    Args:
        role: ``teacher`` / ``student`` (recorded in the checkpoints).
        model: the model trained, validated, checkpointed and tested.
        dm: its :class:`~crossmodal.data.PlaceDataModule`.
        step: ``step(runner, batch, epoch) -> stats`` runs forward + backward of one batch through
            ``runner.forward_backward(batch, loss_fn, outputs)`` (:class:`~crossmodal.training.step.StepRunner`:
            DDP, mixed precision, compile, multi-stage backprop); ``fit`` zeroes the gradients and steps the
            optimiser. ``stats`` holds at least ``loss``, ``num_triplets``, ``num_non_zero_triplets`` and
            ``non_zero_fraction``. Under DDP ``batch["global_sample_ids"]`` lists the global batch's samples in
            the order of the loss's rows.
        objective: a loss module with parameters of its own (learnable curvature): optimised with the model
            (optimizer prefix ``loss``; the model's parameters then have the prefix ``model``) and checkpointed.
        resume_ignored: config keys allowed to differ from a resumed checkpoint's.

    Under torchrun (several processes) every rank trains on its share of each global batch; only rank 0 writes
    (checkpoints, CSV, summary); validation and test embeddings are computed in shards; every rank returns the
    same summary.
    """
    from hydra.utils import instantiate

    run_dir = Path(run_dir)
    dinfo = distributed.info()
    main = dinfo.is_main
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
    config = _config_dict(cfg)
    name = name or type(model).__name__
    trainable: nn.Module = model
    if objective is not None and any(p.requires_grad for p in objective.parameters()):
        trainable = nn.ModuleDict({"model": model, "loss": objective})
    opt_cfg = instantiate(cfg.optimizer, _convert_="all")
    optimizer, scheduler = opt_cfg.build(trainable)
    groups = {g["name"]: (g["lr"], len(g["param_names"])) for g in opt_cfg.groups(trainable)}
    log.info("%s %s (%s): %.2f M parameters; lr groups %s", role, name, class_name(model),
             count_parameters(model) / 1e6, {k: f"{lr:g} ({n} tensors)" for k, (lr, n) in groups.items()})

    if dinfo.enabled:
        train_loader = dm.train_loader(num_replicas=dinfo.world_size, rank=dinfo.rank, partition="shards")
    else:
        train_loader = dm.train_loader()
    sampler = train_loader.batch_sampler
    val_ds = dm.dataset("val", augment=False)
    val_loader = dm.eval_loader("val", masks=False)
    val_sets = load_eval_sets(val_ds, "val")
    datasets = {"train": dm.dataset("train"), "val": val_ds}
    runner = StepRunner(model, device, tuples=datasets["train"].tuples, max_chunk=tcfg.max_chunk,
                        precision=tcfg.precision, compile=tcfg.compile, compile_backend=tcfg.compile_backend,
                        compile_mode=tcfg.compile_mode, sync_batchnorm=tcfg.sync_batchnorm,
                        extra_params=list(objective.parameters()) if trainable is not model else ())
    log.info("data %s: train %d rows (%d batches of %d%s), val %d rows (%d queries over %d runs)", dm.root,
             len(datasets["train"]), len(sampler), sampler.batch_size,
             f", {dinfo.world_size} ranks" if dinfo.enabled else "", len(val_ds), val_sets.num_queries,
             len(val_sets.query_rows))
    for split, skipped in _dropped(datasets).items():
        total = sum(skipped.values())
        (log.warning if total else log.info)("dropped rows in %s: %d %s", split, total, skipped or "")

    history: list[dict[str, Any]] = []
    best: dict[str, Any] | None = None
    start_epoch = 0
    resumed_from = find_resume_checkpoint(cfg, run_dir, tcfg, role) if main else None
    resumed_from = distributed.broadcast_object(resumed_from)
    if resumed_from is not None:
        ckpt = load_checkpoint(resumed_from, map_location=device, expect_role=role)
        check_compatible(ckpt, model, config, source=str(resumed_from), ignored=resume_ignored)
        model.load_state_dict(ckpt["model"])
        if objective is not None and ckpt.get("objective"):
            objective.load_state_dict(ckpt["objective"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        runner.load_state_dict(ckpt.get("step"))
        sampler.set_batch_size(int(ckpt["sampler"]["batch_size"]))
        set_rng_state(ckpt["rng"])
        history = list(ckpt.get("history", []))
        best = ckpt.get("best")
        start_epoch = int(ckpt["epoch"])
        old_best = resumed_from.parent / "best.pt"
        if main and old_best.is_file():
            _copy_atomic(old_best, run_dir / "best.pt")
        log.info("resumed from %s after epoch %d (batch size %d, best val R@1 %s)", resumed_from, start_epoch,
                 sampler.batch_size, None if best is None else f"{best['val_r1']:.2f}")

    if resumed_from is None:
        initialise_heads(model, dm, tcfg.seed)

    from tqdm import tqdm

    stopped_early = False
    t_run = time.perf_counter()
    for epoch in range(start_epoch, tcfg.epochs):
        if tcfg.max_epochs is not None and epoch >= tcfg.max_epochs:
            stopped_early = True
            log.info("stopping after %d epochs (trainer.max_epochs); continue with resume=true", epoch)
            break
        dm.set_epoch(epoch)
        model.train()
        lrs = group_lrs(optimizer)
        bs = sampler.batch_size
        t0 = time.perf_counter()
        sums = {"loss": 0.0, "num_triplets": 0.0, "num_non_zero_triplets": 0.0}
        extra_sums: dict[str, float] = {}
        diag_sums: dict[str, float] = {}  # collapse diagnostics of the task loss (DIAGNOSTICS)
        steps = samples = 0
        total_steps = len(sampler) if tcfg.max_steps_per_epoch is None else min(len(sampler),
                                                                               tcfg.max_steps_per_epoch)
        bar = tqdm(train_loader, total=total_steps, desc=f"{role} epoch {epoch + 1}/{tcfg.epochs}", leave=False,
                   disable=not tcfg.progress or not main, dynamic_ncols=True)
        for batch in bar:
            if steps >= total_steps:
                break
            batch = runner.prepare(batch)
            optimizer.zero_grad(set_to_none=True)
            stats = step(runner, batch, epoch)
            runner.optimizer_step(optimizer)
            if not math.isfinite(stats["loss"]):
                raise FloatingPointError(f"epoch {epoch + 1} step {steps + 1}: loss is {stats['loss']}")
            steps += 1
            samples += int(batch["indices"].shape[0])
            for k in sums:
                sums[k] += stats[k]
            for k in ("task", "distill"):
                if k in stats:
                    extra_sums[k] = extra_sums.get(k, 0.0) + stats[k]
            for k in DIAGNOSTICS:
                if k in stats:
                    diag_sums[k] = diag_sums.get(k, 0.0) + stats[k]
            bar.set_postfix(loss=f"{stats['loss']:.3f}", nz=f"{stats['non_zero_fraction']:.2f}", bs=bs)
        bar.close()
        scheduler.step()
        if dinfo.enabled:  # the losses are global-batch figures (equal on every rank): average; samples: sum
            red = distributed.all_reduce_sums({**{f"s.{k}": v for k, v in sums.items()},
                                               **{f"e.{k}": v for k, v in extra_sums.items()},
                                               **{f"d.{k}": v for k, v in diag_sums.items()}, "samples": samples})
            sums = {k: red[f"s.{k}"] / dinfo.world_size for k in sums}
            extra_sums = {k: red[f"e.{k}"] / dinfo.world_size for k in extra_sums}
            diag_sums = {k: red[f"d.{k}"] / dinfo.world_size for k in diag_sums}
            samples = round(red["samples"])
        train_time = time.perf_counter() - t0
        if steps and not sums["num_triplets"]:
            raise NoTripletsError(
                f"{role} epoch {epoch + 1}: none of its {steps} batches formed a triplet (the task loss had no "
                f"active terms, so nothing was learned); every batch needs two places with a positive each: raise "
                f"data.batch_size (now {bs}) or check the dataset's positives (the manifest's positives column)")
        nz_frac = sums["num_non_zero_triplets"] / sums["num_triplets"] if sums["num_triplets"] else 0.0

        last_epoch = epoch + 1 == tcfg.epochs or (tcfg.max_epochs is not None and epoch + 1 >= tcfg.max_epochs)
        val = None
        t1 = time.perf_counter()
        if (epoch + 1) % tcfg.val_every == 0 or last_epoch:
            val = evaluate(model, val_loader, val_sets, device=device, progress=tcfg.progress and main,
                           desc="validation", distributed=dinfo.enabled)
        val_time = time.perf_counter() - t1

        new_bs = bs
        if tcfg.batch_expansion_th is not None and steps and nz_frac < tcfg.batch_expansion_th:
            new_bs = sampler.expand_batch(tcfg.batch_expansion_rate, tcfg.batch_size_limit)
            if new_bs != bs:
                log.info("non-zero triplets %.3f < %.3f: batch size %d -> %d", nz_frac,
                         tcfg.batch_expansion_th, bs, new_bs)

        row = {"epoch": epoch + 1, "loss": sums["loss"] / max(steps, 1), "non_zero_fraction": nz_frac,
               "num_triplets": sums["num_triplets"] / max(steps, 1), "batch_size": bs, **lrs, "steps": steps,
               "samples": samples, "val_r1": val["r1"] if val else float("nan"),
               "val_r1p": val["r1p"] if val else float("nan"), "train_time_s": train_time, "val_time_s": val_time,
               "epoch_time_s": time.perf_counter() - t0}
        row.update({f"loss_{k}": v / max(steps, 1) for k, v in extra_sums.items()})
        row.update({k: v / max(steps, 1) for k, v in diag_sums.items()})
        if "spread" in row and steps and row["spread"] < COLLAPSE_SPREAD:
            log.warning("epoch %d: descriptors collapsed (spread %.4f < %g: they all point one way); lower the "
                        "learning rate or L2-normalise in the task loss", epoch + 1, row["spread"], COLLAPSE_SPREAD)
        history.append(row)
        improved = val is not None and (best is None or val["r1"] > best["val_r1"])
        if improved:
            best = {"epoch": epoch + 1, "val_r1": val["r1"], "val_r1p": val["r1p"], "val": val}
        if main:
            payload = {"format": FORMAT, "role": role, "version": crossmodal.__version__,
                       "model_class": class_name(model), "fingerprint": fingerprint(model.state_dict()),
                       "config": config, "name": name, "epoch": epoch + 1, "model": model.state_dict(),
                       "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                       "sampler": {"batch_size": sampler.batch_size, "epoch": epoch + 1, "seed": sampler.seed},
                       "rng": rng_state(), "metrics": row, "best": best, "history": history,
                       "input": input_spec(dm), "step": runner.state_dict(),
                       "world_size": dinfo.world_size}
            if objective is not None:
                payload["objective"] = objective.state_dict()
            if improved:
                save_checkpoint(run_dir / "best.pt", payload)
            save_checkpoint(run_dir / "last.pt", payload)
            _write_csv(run_dir / "metrics.csv", history)
        log.info("epoch %d/%d: loss %.4f%s, non-zero %.3f%s, batch %d, %s, val R@1 %s R@1%% %s, %.1f s (+%.1f s val)%s",
                 epoch + 1, tcfg.epochs, row["loss"],
                 "".join(f", {k} {row[f'loss_{k}']:.4f}" for k in extra_sums), nz_frac,
                 "".join(f", {k} {row[k]:.3f}" for k in DIAGNOSTICS if k in row), bs,
                 ", ".join(f"{k} {v:g}" for k, v in lrs.items()),
                 f"{row['val_r1']:.2f}" if val else "-", f"{row['val_r1p']:.2f}" if val else "-", train_time,
                 val_time, " *best*" if improved else "")

    distributed.barrier()  # rank 0's best.pt is on disk before anyone reads it
    completed = history[-1]["epoch"] if history else 0
    test = None
    has_best = distributed.broadcast_object((run_dir / "best.pt").is_file() if main else None)
    if tcfg.eval_test and not stopped_early and has_best:
        test = evaluate_checkpoint_on_test(run_dir / "best.pt", model, dm, device, tcfg.progress and main,
                                           distributed=dinfo.enabled)
        if test is not None:
            log.info("test (evaluation sets), best checkpoint (epoch %d): R@1 %.2f, R@1%% %.2f over %d run pairs",
                     best["epoch"] if best else -1, test["r1"], test["r1p"], test["pairs"])
    train_times = [r["train_time_s"] for r in history]
    summary = {
        "name": name, "role": role, "model_class": class_name(model), "parameters": count_parameters(model),
        **dict(extra_summary or {}), "version": crossmodal.__version__, "run_dir": str(run_dir),
        "epochs_completed": completed, "epochs": tcfg.epochs, "finished": completed >= tcfg.epochs,
        "best": None if best is None else {k: v for k, v in best.items() if k != "val"},
        "best_val": None if best is None else best["val"],
        "last": history[-1] if history else None, "test_best_checkpoint": test,
        "final_batch_size": sampler.batch_size, "dropped_rows": _dropped(datasets),
        "validation_missing": val_sets.missing,
        "train_rows": len(datasets["train"]), "val_rows": len(val_ds),
        "mean_epoch_train_time_s": float(np.mean(train_times)) if train_times else None,
        "train_samples_per_s": (sum(r["samples"] for r in history) / sum(train_times)) if train_times and sum(
            train_times) > 0 else None,
        "wall_time_this_invocation_s": time.perf_counter() - t_run,
        "resumed_from": None if resumed_from is None else str(resumed_from),
        "world_size": dinfo.world_size, "precision": tcfg.precision,
    }
    if main:
        atomic_write_json(run_dir / "summary.json", summary)
    summary = distributed.broadcast_object(summary)
    distributed.barrier()
    return summary


def input_spec(dm) -> dict[str, Any]:
    """What a deployed model expects: the image size (None: the dataset files' size) and normalisation."""
    from crossmodal.data.augment import IMAGENET_MEAN, IMAGENET_STD

    size = dm.image_size
    if size is None:
        try:
            ds = dm.dataset("val", augment=False)
            if len(ds) and ds.image_paths[0] is not None:
                from PIL import Image

                with Image.open(ds.image_paths[0]) as im:
                    size = (im.height, im.width)
        except Exception:  # noqa: BLE001 - informative only; an unreadable first image is reported elsewhere
            size = None
    return {"image_size": None if size is None else [int(size[0]), int(size[1])], "mean": list(IMAGENET_MEAN),
            "std": list(IMAGENET_STD), "mode": "RGB"}


def evaluate_checkpoint_on_test(path: Path, model: nn.Module, dm, device: torch.device,
                                progress: bool = False, distributed: bool = False) -> dict[str, Any] | None:
    """Recall of the checkpoint's weights on the evaluation sets (``split == "eval"``); None when the dataset
    has no evaluation pickles."""
    from preprocessing.errors import InputError

    ckpt = load_checkpoint(path, map_location=device)
    check_compatible(ckpt, model, None, source=str(path))
    model.load_state_dict(ckpt["model"])
    ds = dm.dataset("eval", augment=False)
    try:
        sets = load_eval_sets(ds, "eval")
    except InputError as exc:
        log.warning("no test figures: %s", exc)
        return None
    skipped = sum(ds.skipped.values())
    if skipped:
        log.warning("dropped rows in eval: %d %s", skipped, ds.skipped)
    res = evaluate(model, dm.eval_loader("eval", masks=False), sets, device=device, progress=progress,
                   desc="test", distributed=distributed)
    res["epoch"] = int(ckpt["epoch"])
    res["dropped_rows"] = dict(ds.skipped)
    res["missing"] = sets.missing
    return res
