"""How :func:`~crossmodal.training.trainer.fit` runs one training step: DDP, mixed precision, ``torch.compile``.

:class:`StepRunner` owns the module the steps call (``net``: the model, wrapped in ``DistributedDataParallel``
under torchrun, compiled with ``trainer.compile``) and the step's plumbing; the teacher and student step functions
call :meth:`StepRunner.forward_backward` with their loss.

**DDP with the single-process batch.** Each rank's loader yields its contiguous share of every global batch
(:class:`~crossmodal.data.PositivePairBatchSampler` ``partition="shards"``). :meth:`prepare` gathers the shares'
dataset indices and sample ids and builds the ``[B, B]`` positive / negative masks of the *global* batch;
:meth:`forward_backward` embeds the rank's share, gathers every rank's embeddings
(:func:`~crossmodal.training.distributed.gather_rows`, differentiable) and evaluates the loss on the global batch,
so batch-hard mining, relation matrices and distillation losses see exactly the batch a single process would.
Every rank computes the same loss; the gather's backward sums the ranks' (identical) gradients, so each rank's
parameter gradient is ``world_size`` times the part flowing through its rows, and DDP's gradient *average* is the
single-process gradient. Parameters outside the model (a learnable curvature of the objective) get the same
gradient on every rank and are averaged explicitly. BatchNorm: per rank (the rank's share is its BN batch)
unless ``trainer.sync_batchnorm`` (:mod:`crossmodal.training.sync_batchnorm`), which makes training-mode
BatchNorm use the global batch's statistics, as one process does.

**Mixed precision** (``trainer.precision``): ``bf16`` / ``fp16`` autocast around the model's forward passes
(CUDA; ``bf16`` also on CPU), losses in float32; ``fp16`` scales the loss with ``torch.amp.GradScaler`` (its
state is checkpointed). **Compile** (``trainer.compile``): ``torch.compile`` of the training forward (after
the DDP wrap); validation and checkpoints use the plain model.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from . import distributed
from .multistage import forward_backward, move_batch

log = logging.getLogger(__name__)

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class StepRunner:
    """The step plumbing of one training run (module doc).

    Args:
        model: the trained model (its parameters are DDP's; it stays the module validated and checkpointed).
        device: the run's device.
        tuples: the training dataset's :class:`~crossmodal.data.dataset.PlaceTuples` (global masks under DDP).
        max_chunk: multi-stage backprop above this many items per rank.
        precision: ``fp32``, ``bf16`` or ``fp16``.
        compile: ``torch.compile`` the training forward; ``compile_backend`` / ``compile_mode``: its options.
        sync_batchnorm: synchronise BatchNorm over the ranks (no effect on one process).
        extra_params: parameters trained besides the model's (averaged over the ranks after backward).
    """

    def __init__(self, model: nn.Module, device: torch.device, tuples: Any = None, max_chunk: int | None = None,
                 precision: str = "fp32", compile: bool = False, compile_backend: str = "inductor",
                 compile_mode: str | None = None, sync_batchnorm: bool = False,
                 extra_params: Sequence[nn.Parameter] = ()):
        if precision not in PRECISIONS:
            raise ValueError(f"trainer.precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
        self.model, self.device, self.tuples = model, torch.device(device), tuples
        self.max_chunk = max_chunk
        self.dist = distributed.info()
        self.precision = precision
        self.dtype = PRECISIONS[precision]
        if self.dtype is torch.float16 and self.device.type != "cuda":
            log.warning("trainer.precision=fp16 on %s: autocast float16 on the CPU is slow and rarely useful; "
                        "prefer bf16", self.device)
        self.scaler = torch.amp.GradScaler(self.device.type) if self.dtype is torch.float16 else None
        self.extra_params = [p for p in extra_params if p.requires_grad]
        if self.dist.enabled and sync_batchnorm:
            from .sync_batchnorm import convert_sync_batchnorm

            _, n = convert_sync_batchnorm(model, self.device)
            log.info("sync_batchnorm: %d BatchNorm layer(s) synchronised over %d ranks", n, self.dist.world_size)
        net: nn.Module = model
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [self.device.index] if self.device.type == "cuda" else None
            # buffers (BatchNorm statistics) follow rank 0 at every forward unless they are synchronised anyway
            sync_buffers = {"forward_sync_buffers" if "forward_sync_buffers" in _ddp_parameters() else
                            "broadcast_buffers": not sync_batchnorm}
            net = DDP(model, device_ids=ids, **sync_buffers)
            log.info("DDP: rank %d of %d on %s; each rank embeds 1/%d of every global batch", self.dist.rank,
                     self.dist.world_size, self.device, self.dist.world_size)
        if compile:
            net = torch.compile(net, backend=compile_backend, mode=compile_mode)
            log.info("torch.compile: backend %s, mode %s", compile_backend, compile_mode)
        self.net = net

    # --------------------------------------------------------------------------------------------------------
    def prepare(self, batch: dict[str, Any]) -> dict[str, Any]:
        """The batch on the device, with ``global_sample_ids`` / ``global_batch_size`` and, under DDP, the
        global batch's masks."""
        if self.dist.enabled:
            indices = distributed.gather_rows(batch["indices"].to(torch.int64))
            batch = dict(batch)
            batch["global_sample_ids"] = distributed.gather_rows(batch["sample_ids"].to(torch.int64))
            batch["global_batch_size"] = int(indices.shape[0])
            if self.tuples is None:
                raise ValueError("StepRunner needs the training tuples to build the global masks under DDP")
            batch["positives_mask"], batch["negatives_mask"] = self.tuples.masks(indices.numpy())
        else:
            batch = dict(batch)
            batch["global_sample_ids"] = batch["sample_ids"]
            batch["global_batch_size"] = int(batch["indices"].shape[0])
        return move_batch(batch, self.device)

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def forward_backward(self, batch: Mapping[str, Any], loss_fn, outputs: tuple[str, ...]
                         ) -> tuple[Tensor, dict[str, float]]:
        """Forward (this rank's share), loss (on the global batch), backward; see
        :func:`~crossmodal.training.multistage.forward_backward`."""
        chunks = None
        if self.dist.enabled:
            inner = loss_fn

            def loss_fn(out, pos, neg):  # the global-batch loss
                return inner({k: (distributed.gather_rows(v) if k in outputs else v) for k, v in out.items()},
                             pos, neg)

            if self.max_chunk:
                per_rank = math.ceil(int(batch["global_batch_size"]) / self.dist.world_size)
                chunks = max(1, math.ceil(per_rank / self.max_chunk))
        no_sync = getattr(self.net, "no_sync", None) if self.dist.enabled else None
        scale = self.scaler.scale if self.scaler is not None else None
        autocast = self.autocast if self.dtype is not None else None
        return forward_backward(self.net, batch, loss_fn, outputs, self.max_chunk, chunks=chunks,
                                autocast=autocast, scale=scale, no_sync=no_sync)

    def optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Average the extra parameters' gradients over the ranks, then step (through the fp16 scaler)."""
        if self.dist.enabled and self.extra_params:
            for p in self.extra_params:
                if p.grad is not None:
                    p.grad.copy_(distributed.all_reduce_sum_autograd(p.grad.detach()) / self.dist.world_size)
        if self.scaler is not None:
            self.scaler.step(optimizer)
            self.scaler.update()
        else:
            optimizer.step()

    def state_dict(self) -> dict[str, Any]:
        return {"scaler": None if self.scaler is None else self.scaler.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any] | None) -> None:
        if self.scaler is not None and state and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])


def _ddp_parameters() -> set[str]:
    """Keyword arguments of this torch's ``DistributedDataParallel`` (``forward_sync_buffers`` replaces the
    deprecated ``broadcast_buffers`` in recent versions)."""
    import inspect

    from torch.nn.parallel import DistributedDataParallel

    return set(inspect.signature(DistributedDataParallel.__init__).parameters)
