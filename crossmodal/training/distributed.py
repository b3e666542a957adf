"""torch.distributed for the training loops: process-group setup from ``torchrun``'s environment and the few
collectives the loops need. Nothing happens at import.

``torchrun --nproc_per_node=N scripts/train_teacher.py ...`` starts N processes with ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` set; :func:`init_from_env` joins them into one process group
(``gloo`` on CPU; ``cpu:gloo,cuda:nccl`` when CUDA is used, so CUDA tensors go through NCCL and the small CPU
tensors of the bookkeeping through gloo) and, on CUDA, binds each process to GPU ``LOCAL_RANK``. Without those
variables (or with ``WORLD_SIZE=1``) everything here is a no-op for one process, so the same code runs alone.

Collectives (every rank must call them, in the same order):

- :func:`barrier`; :func:`broadcast_object` (rank 0's Python object to every rank);
- :func:`all_reduce_sums` (float64 sums of a dict of metrics);
- :func:`gather_rows`: variable-length all-gather along dim 0 **with autograd**: every rank gets the rows of
  every rank in rank order; the backward pass sums the incoming gradients over the ranks and returns a rank's
  own rows. Used to compute a batch loss on the global batch (see :mod:`crossmodal.training.trainer`);
- :func:`all_reduce_sum_autograd`: a SUM all-reduce whose backward is a SUM all-reduce (synchronised BatchNorm on
  CPU, :mod:`crossmodal.training.sync_batchnorm`).

Entry points (``scripts/train_teacher.py``, ``scripts/distill.py``) add
:func:`crossmodal.launch.hydra_rank_overrides` to the command line of ranks > 0 (rank 0 alone owns the Hydra run
folder and its log) and use rank 0's run folder (:func:`broadcast_object`).
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import os
from collections.abc import Mapping
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

log = logging.getLogger(__name__)

#: torchrun's variables (all must be present to join a group).
ENV_KEYS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
#: Collective timeout (rank 0 alone writes checkpoints and reports while the others wait at a barrier):
#: ``CROSSMODAL_DIST_TIMEOUT_MIN`` minutes, default 60.
TIMEOUT_ENV = "CROSSMODAL_DIST_TIMEOUT_MIN"


@dataclasses.dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def env_world_size() -> int:
    """``WORLD_SIZE`` of torchrun's environment (1 when absent)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


def launched_by_torchrun() -> bool:
    return all(k in os.environ for k in ENV_KEYS) and env_world_size() > 1


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def info() -> DistInfo:
    """This process's rank, world size and local rank (one process when no group is initialised)."""
    if not is_initialized():
        return DistInfo()
    return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def rank() -> int:
    return info().rank


def world_size() -> int:
    return info().world_size


def is_main() -> bool:
    return info().is_main


def _backend() -> str:
    """gloo for CPU tensors, plus NCCL for CUDA tensors where CUDA exists (NCCL starts on first use only)."""
    return "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"


def init_from_env(device: str | torch.device | None = None) -> DistInfo:
    """Join torchrun's process group when launched by torchrun with more than one process (idempotent); returns
    :func:`info`. ``device``: the training device (``cuda`` adds NCCL and sets the process's GPU to
    ``LOCAL_RANK``). Launched without torchrun: nothing happens."""
    if not launched_by_torchrun():
        return info()
    if not dist.is_available():  # pragma: no cover - torch built without distributed
        raise RuntimeError("launched by torchrun but this torch build has no torch.distributed")
    local = int(os.environ["LOCAL_RANK"])
    if device is not None and torch.device(device).type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(f"trainer.device={device} but CUDA is not available in this process")
        if local >= torch.cuda.device_count():
            raise RuntimeError(f"LOCAL_RANK {local} but only {torch.cuda.device_count()} GPU(s) are visible; "
                               f"use --nproc_per_node <= the number of GPUs")
        torch.cuda.set_device(local)
    if not is_initialized():
        minutes = float(os.environ.get(TIMEOUT_ENV, "60"))
        dist.init_process_group(_backend(), timeout=datetime.timedelta(minutes=minutes))
        log.info("torch.distributed: rank %d of %d (local %d), backend %s", dist.get_rank(), dist.get_world_size(),
                 local, dist.get_backend())
    elif device is not None and torch.device(device).type == "cuda" and "nccl" not in str(dist.get_backend()):
        raise RuntimeError(f"the process group was initialised with backend {dist.get_backend()!r}, which cannot "
                           f"reduce CUDA tensors; initialise it with init_from_env('cuda')")
    return info()


def teardown() -> None:
    """Leave the process group (no-op when none is initialised)."""
    if is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """``obj`` of rank ``src`` on every rank (a picklable object)."""
    if not is_initialized() or dist.get_world_size() == 1:
        return obj
    box = [obj if dist.get_rank() == src else None]
    dist.broadcast_object_list(box, src=src, device=torch.device("cpu"))
    return box[0]


def all_reduce_sums(values: Mapping[str, float]) -> dict[str, float]:
    """Sums over the ranks of a dict of numbers (every rank passes the same keys), in float64."""
    keys = sorted(values)
    if not is_initialized() or dist.get_world_size() == 1:
        return {k: float(values[k]) for k in keys}
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return {k: float(v) for k, v in zip(keys, t.tolist())}


def _comm_device(t: Tensor) -> torch.device:
    """Where a collective on ``t`` runs: CUDA tensors stay on their GPU (NCCL), others on the CPU (gloo)."""
    return t.device if t.device.type == "cuda" else torch.device("cpu")


def _gather_padded(t: Tensor) -> tuple[list[Tensor], list[int]]:
    """All ranks' ``t`` (same trailing shape, any length) via a padded all_gather; returns (parts, lengths)."""
    world = dist.get_world_size()
    dev = _comm_device(t)
    n = torch.tensor([t.shape[0]], dtype=torch.int64, device=dev)
    sizes = [torch.zeros_like(n) for _ in range(world)]
    dist.all_gather(sizes, n)
    lengths = [int(s.item()) for s in sizes]
    longest = max(lengths)
    src = t.to(dev).contiguous()
    if src.shape[0] < longest:
        pad = torch.zeros((longest - src.shape[0], *src.shape[1:]), dtype=src.dtype, device=dev)
        src = torch.cat([src, pad])
    parts = [torch.empty_like(src) for _ in range(world)]
    dist.all_gather(parts, src)
    return [p[:k].to(t.device) for p, k in zip(parts, lengths)], lengths


class _GatherRows(torch.autograd.Function):
    @staticmethod
    def forward(ctx, t: Tensor) -> Tensor:
        parts, lengths = _gather_padded(t)
        r = dist.get_rank()
        ctx.start, ctx.stop = sum(lengths[:r]), sum(lengths[:r + 1])
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        dev = _comm_device(grad)
        g = grad.to(dev).contiguous().clone()
        dist.all_reduce(g, op=dist.ReduceOp.SUM)
        return g[ctx.start:ctx.stop].to(grad.device)


def gather_rows(t: Tensor) -> Tensor:
    """Rows of ``t`` of every rank, concatenated in rank order (lengths may differ); differentiable: the
    gradient of a rank's rows is the sum over the ranks of the gradients their copies received. One process:
    ``t`` itself."""
    if not is_initialized() or dist.get_world_size() == 1:
        return t
    if t.requires_grad and torch.is_grad_enabled():
        return _GatherRows.apply(t)
    with torch.no_grad():
        return torch.cat(_gather_padded(t)[0])


class _AllReduceSum(torch.autograd.Function):
    @staticmethod
    def forward(ctx, t: Tensor) -> Tensor:
        out = t.to(_comm_device(t)).contiguous().clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out.to(t.device)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        g = grad.to(_comm_device(grad)).contiguous().clone()
        dist.all_reduce(g, op=dist.ReduceOp.SUM)
        return g.to(grad.device)


def all_reduce_sum_autograd(t: Tensor) -> Tensor:
    """SUM over the ranks, differentiable (the gradient is summed over the ranks too). One process: ``t``."""
    if not is_initialized() or dist.get_world_size() == 1:
        return t
    return _AllReduceSum.apply(t)


def shard_range(n: int, rank_: int | None = None, world: int | None = None) -> tuple[int, int]:
    """``[start, stop)`` of rank ``rank_``'s contiguous share of ``n`` items (sizes differ by at most one)."""
    rank_ = rank() if rank_ is None else int(rank_)
    world = world_size() if world is None else int(world)
    base, extra = divmod(int(n), world)
    start = rank_ * base + min(rank_, extra)
    return start, start + base + (1 if rank_ < extra else 0)

