"""Optimiser and learning-rate schedule of teacher training: Adam (weight decay) with one learning rate per
branch, chosen by parameter-name prefix, and MultiStepLR.

MinkLoc++ trains its LiDAR branch at 1e-3 and its image branch at 1e-4 (``distillation.md``). Parameter names of the
teachers start with the branch attribute (``cloud.``, ``image.``), so ``branch_lr: {image: 1e-4, cloud: 1e-3}``
puts every parameter into the group of the longest prefix it matches (``name == prefix`` or
``name.startswith(prefix + ".")``); parameters matching no prefix take ``lr``. Prefixes matching nothing (e.g.
``cloud`` for an image-only teacher) are simply absent from the optimiser.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn

OPTIMIZERS = ("adam", "adamw", "sgd")


def _matches(name: str, prefix: str) -> bool:
    return prefix == "" or name == prefix or name.startswith(prefix + ".")


def param_groups(named_parameters: Iterable[tuple[str, nn.Parameter]], branch_lr: Mapping[str, float],
                 lr: float | None) -> list[dict[str, Any]]:
    """Parameter groups ``{"name", "params", "lr", "param_names"}`` by longest matching name prefix.

    Parameters with ``requires_grad`` false are left out. With ``lr`` None, a parameter matching no prefix is
    an error naming it (so a renamed branch cannot silently train at the wrong rate).
    """
    prefixes = sorted(branch_lr, key=len, reverse=True)
    groups: dict[str, dict[str, Any]] = {}
    unmatched: list[str] = []
    for name, p in named_parameters:
        if not p.requires_grad:
            continue
        prefix = next((q for q in prefixes if _matches(name, q)), None)
        if prefix is None:
            if lr is None:
                unmatched.append(name)
                continue
            key, group_lr = "default", float(lr)
        else:
            key, group_lr = prefix, float(branch_lr[prefix])
        g = groups.setdefault(key, {"name": key, "params": [], "lr": group_lr, "param_names": []})
        g["params"].append(p)
        g["param_names"].append(name)
    if unmatched:
        raise ValueError(f"{len(unmatched)} parameter(s) match no prefix of optimizer.branch_lr "
                         f"{sorted(branch_lr)} and optimizer.lr is null: {unmatched[:10]}")
    order = {k: i for i, k in enumerate(list(branch_lr) + ["default"])}
    return sorted(groups.values(), key=lambda g: order[g["name"]])


@dataclasses.dataclass
class OptimizerConfig:
    """``configs/optimizer/*.yaml``: ``build(model)`` → ``(optimizer, scheduler)``.

    Attributes:
        name: ``adam`` (MinkLoc++), ``adamw`` or ``sgd`` (momentum 0.9).
        lr: learning rate of parameters matching no ``branch_lr`` prefix (null: such parameters are an error).
        weight_decay: L2 penalty (Adam's, coupled, as upstream).
        branch_lr: parameter-name prefix → learning rate.
        milestones, gamma: MultiStepLR (epochs at which every group's lr is multiplied by ``gamma``).
    """

    name: str = "adam"
    lr: float | None = 1e-3
    weight_decay: float = 1e-4
    branch_lr: dict[str, float] = dataclasses.field(default_factory=lambda: {"image": 1e-4, "cloud": 1e-3})
    milestones: list[int] = dataclasses.field(default_factory=lambda: [40])
    gamma: float = 0.1

    def __post_init__(self) -> None:
        if self.name not in OPTIMIZERS:
            raise ValueError(f"optimizer.name must be one of {OPTIMIZERS}, got {self.name!r}")
        self.branch_lr = {str(k): float(v) for k, v in dict(self.branch_lr or {}).items()}
        self.milestones = sorted(int(m) for m in (self.milestones or []))
        self.lr = None if self.lr is None else float(self.lr)

    def groups(self, model: nn.Module) -> list[dict[str, Any]]:
        return param_groups(model.named_parameters(), self.branch_lr, self.lr)

    def build(self, model: nn.Module) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.MultiStepLR]:
        groups = [{k: v for k, v in g.items() if k != "param_names"} for g in self.groups(model)]
        if not groups:
            raise ValueError("the model has no trainable parameters")
        default_lr = groups[0]["lr"]
        if self.name == "adam":
            opt = torch.optim.Adam(groups, lr=default_lr, weight_decay=self.weight_decay)
        elif self.name == "adamw":
            opt = torch.optim.AdamW(groups, lr=default_lr, weight_decay=self.weight_decay)
        else:
            opt = torch.optim.SGD(groups, lr=default_lr, momentum=0.9, weight_decay=self.weight_decay)
        sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=self.milestones, gamma=self.gamma)
        return opt, sched


def group_lrs(optimizer: torch.optim.Optimizer) -> dict[str, float]:
    """Current learning rate per named group (``lr_<name>``)."""
    return {f"lr_{g.get('name', i)}": float(g["lr"]) for i, g in enumerate(optimizer.param_groups)}
