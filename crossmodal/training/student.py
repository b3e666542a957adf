"""Student training: an image-only model trained on images, with the teacher's cached outputs as targets.

:func:`train_student(cfg, run_dir, cache)` builds the student (``cfg.student``), the image-only data
(``cfg.data``), the objective (``cfg.distill.objective``: task loss + distillation loss, see
:class:`~crossmodal.training.objective.DistillObjective`) and trains with the loop teachers use
(:func:`~crossmodal.training.trainer.fit`: positives-aware batches, validation Recall@1 for ``best.pt``, ``last.pt``
every epoch, resume, CSV log, test figures of ``best.pt`` at the end). The teacher never runs: its outputs come
from the :class:`~crossmodal.training.teacher_cache.TeacherCache` by sample id (``cfg.cache.select`` picks the
clean view, a random cached view per sample and epoch, or their mean).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import nn

from .checkpoint import RESUME_IGNORED
from .objective import DistillObjective, StepLoss
from .step import StepRunner
from .teacher_cache import TeacherCache
from .trainer import TrainerConfig, fit, setup_run

log = logging.getLogger(__name__)


def train_student(cfg: Any, run_dir: str | Path, cache: TeacherCache | None = None,
                  name: str | None = None, resume_ignored: Sequence[str] | None = None) -> dict[str, Any]:
    """Train the student of ``cfg`` (composed ``configs/distill.yaml``) into ``run_dir``; returns the summary.
    ``resume_ignored``: config keys allowed to differ from a resumed checkpoint's (default
    :data:`~crossmodal.training.checkpoint.RESUME_IGNORED`)."""
    from hydra.utils import instantiate

    tcfg: TrainerConfig = instantiate(cfg.trainer, _convert_="all")
    device = setup_run(tcfg)
    model: nn.Module = instantiate(cfg.student).to(device)
    dm = instantiate(cfg.data, modalities=["image"])
    objective: DistillObjective = instantiate(cfg.distill.objective).to(device)
    outputs = objective.cache_outputs
    select = str(cfg.cache.select)
    seed = int(cfg.data.seed)
    if outputs:
        if cache is None:
            raise ValueError(f"distill={cfg.distill.name} needs the teacher cache (outputs {list(outputs)})")
        missing = [o for o in outputs if o not in cache.outputs]
        if missing:
            raise KeyError(f"distill={cfg.distill.name} reads teacher outputs {missing}, the cache holds "
                           f"{list(cache.outputs)}")
        cache.check_covers(dm.dataset("train").sample_ids)
        log.info("distillation: %s; teacher outputs %s (dims %s) from the cache, view selection %r", objective.loss,
                 list(outputs), {o: cache.dims()[o] for o in outputs}, select)

    def step(runner: StepRunner, batch: dict[str, Any], epoch: int) -> dict[str, float]:
        teacher = None
        if outputs:
            ids = batch["global_sample_ids"]  # the loss's rows (under DDP: the global batch)
            teacher = objective.teacher_input(
                lambda out: cache.lookup(ids, out, select=select, epoch=epoch, seed=seed, device=device))
        loss_fn = StepLoss(objective, teacher)
        return runner.forward_backward(batch, loss_fn, (objective.output,))[1]

    extra = {"distill": str(cfg.distill.name), "teacher_outputs": list(outputs),
             "cache": None if cache is None or not outputs else cache.meta.get("key")}
    return fit(cfg, run_dir, role="student", model=model, dm=dm, step=step, tcfg=tcfg, device=device,
               objective=objective, name=name, extra_summary=extra,
               resume_ignored=RESUME_IGNORED if resume_ignored is None else tuple(resume_ignored))
