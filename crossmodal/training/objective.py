"""The student's training objective: task loss + distillation loss against cached teacher outputs.

``loss = task_weight · triplet(S) + weight · distill(S, T, positives_mask, negatives_mask)``

- ``task``: batch-hard triplet on the student's descriptor (:class:`~crossmodal.losses.BatchHardTripletLoss`;
  DistilVPR: weight 0.5, margin 0.2, Euclidean on unnormalised descriptors);
- ``distill``: any distillation loss of :mod:`crossmodal.losses` (``None``: the student alone);
- ``teachers``: what the distillation loss receives: one cache output name (``"descriptor"``: a ``[B, D]``
  tensor) or a mapping ``{teacher name: cache output}`` (multi-teacher: a mapping of tensors).

Configured by ``configs/distill/<name>.yaml`` (``crossmodal.training.objective.DistillObjective``). The objective
is an ``nn.Module``: learnable parts of the distillation loss (a learnable curvature) are optimised with the
student (optimizer group ``loss``).
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor, nn

from crossmodal.config import to_plain
from crossmodal.losses import BatchHardTripletLoss


class DistillObjective(nn.Module):
    """``objective(outputs, teacher, positives_mask, negatives_mask)`` → ``(loss, stats)``.

    Args:
        task: the task loss (default: batch-hard triplet, margin 0.2, swap, Euclidean).
        task_weight: its weight (DistilVPR 0.5; 1 for the student alone).
        loss: the distillation loss, or None (the student alone).
        weight: the distillation loss's weight.
        teachers: cache output name, or ``{name: output}`` for losses taking several teachers.
        output: the student output the losses read.
    """

    def __init__(self, task: nn.Module | None = None, task_weight: float = 1.0, loss: nn.Module | None = None,
                 weight: float = 1.0, teachers: str | Mapping[str, str] = "descriptor", output: str = "descriptor"):
        super().__init__()
        self.task = task if task is not None else BatchHardTripletLoss()
        self.task_weight, self.weight = float(task_weight), float(weight)
        self.loss = loss
        teachers = to_plain(teachers)
        self.teachers: str | dict[str, str] = teachers if isinstance(teachers, str) else dict(teachers)
        if not isinstance(self.teachers, str) and not self.teachers:
            raise ValueError("distill.teachers must name at least one cache output")
        self.output = output

    @property
    def cache_outputs(self) -> tuple[str, ...]:
        """The teacher cache outputs the objective reads (none for the student alone)."""
        if self.loss is None:
            return ()
        return (self.teachers,) if isinstance(self.teachers, str) else tuple(dict.fromkeys(self.teachers.values()))

    def teacher_input(self, lookup) -> Tensor | dict[str, Tensor]:
        """What the distillation loss receives, from ``lookup(output) -> [B, D]``."""
        if isinstance(self.teachers, str):
            return lookup(self.teachers)
        return {name: lookup(out) for name, out in self.teachers.items()}

    def forward(self, outputs: Mapping[str, Tensor], teacher: Tensor | Mapping[str, Tensor] | None,
                positives_mask: Tensor, negatives_mask: Tensor) -> tuple[Tensor, dict[str, float]]:
        s = outputs[self.output]
        task = self.task(s, positives_mask, negatives_mask)
        total = self.task_weight * task.loss
        stats = {k: float(v) for k, v in task.stats.items()}
        stats["task"] = float(task.loss.detach())
        if self.loss is not None and self.weight:
            if teacher is None:
                raise ValueError("the distillation loss needs teacher outputs (the teacher cache)")
            d = self.loss(s, teacher, positives_mask=positives_mask, negatives_mask=negatives_mask)
            total = total + self.weight * d
            stats["distill"] = float(d.detach())
            for k, v in (getattr(self.loss, "components", None) or {}).items():
                stats[f"distill/{k}"] = float(v)
        stats["loss"] = float(total.detach())
        return total, stats

    def extra_repr(self) -> str:
        return f"task_weight={self.task_weight:g}, weight={self.weight:g}, teachers={self.teachers!r}"


class StepLoss:
    """Adapter to :func:`~crossmodal.training.multistage.forward_backward`'s ``loss_fn(outputs, pos, neg)`` for
    one batch's teacher outputs."""

    def __init__(self, objective: DistillObjective, teacher: Tensor | Mapping[str, Tensor] | None):
        self.objective, self.teacher = objective, teacher

    def __call__(self, outputs: Mapping[str, Tensor], pos: Tensor, neg: Tensor) -> tuple[Tensor, dict[str, float]]:
        return self.objective(outputs, self.teacher, pos, neg)

