"""Synchronised BatchNorm for data-parallel training (``trainer.sync_batchnorm``), on CPU as well as on CUDA.

Under DDP every process normalises with the statistics of its own share of the batch unless the BatchNorm layers
are synchronised. ``torch.nn.SyncBatchNorm`` does that on GPUs only (it refuses CPU tensors), so
:func:`convert_sync_batchnorm` uses it on CUDA and :class:`SyncBatchNorm` (this module) elsewhere:

- training mode, several ranks: mean over the global batch from a SUM all-reduce of ``[Σx, count]``, then the
  biased variance from a SUM all-reduce of ``Σ(x - mean)²`` (two passes: no cancellation); both all-reduces are
  differentiable (:func:`~crossmodal.training.distributed.all_reduce_sum_autograd`), so the gradient is that of
  BatchNorm over the global batch; running statistics are updated with the unbiased global variance, as
  ``F.batch_norm`` does, identically on every rank;
- evaluation mode, or one process: plain ``F.batch_norm`` (exactly ``nn.BatchNorm*``).

Parameters and buffers keep their names, so checkpoints load into models with ordinary BatchNorm layers.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import distributed


class SyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm over ``[N, C, *]`` inputs whose training statistics are those of all ranks' rows together."""

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, input: Tensor) -> Tensor:
        self._check_input_dim(input)
        if not (self.training and distributed.world_size() > 1):
            return self._local(input)
        c = input.shape[1]
        dims = [0, *range(2, input.dim())]
        x = input.float() if input.dtype in (torch.float16, torch.bfloat16) else input  # statistics in >= fp32
        count = torch.tensor([x.numel() / max(c, 1)], dtype=x.dtype, device=x.device)
        first = distributed.all_reduce_sum_autograd(torch.cat([x.sum(dims), count]))
        n = first[c].detach()
        if float(n) < 2:
            raise ValueError(f"SyncBatchNorm needs more than one value per channel over all ranks, got {int(n)}")
        mean = first[:c] / n
        shape = [1, c] + [1] * (input.dim() - 2)
        centred = x - mean.view(shape)
        var = distributed.all_reduce_sum_autograd((centred * centred).sum(dims)) / n
        y = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        if self.track_running_stats and self.running_mean is not None:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                f = (1.0 / float(self.num_batches_tracked)) if self.momentum is None else self.momentum
                self.running_mean.mul_(1 - f).add_(mean.detach().to(self.running_mean.dtype), alpha=f)
                unbiased = var.detach() * (n / (n - 1))
                self.running_var.mul_(1 - f).add_(unbiased.to(self.running_var.dtype), alpha=f)
        return y.to(input.dtype)

    def _local(self, input: Tensor) -> Tensor:
        """``nn.BatchNorm*``'s forward."""
        factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            factor = (1.0 / float(self.num_batches_tracked)) if self.momentum is None else self.momentum
        use_batch = self.training or (self.running_mean is None and self.running_var is None)
        track = not self.training or self.track_running_stats
        return F.batch_norm(input, self.running_mean if track else None, self.running_var if track else None,
                            self.weight, self.bias, use_batch, factor, self.eps)


def _copy_into(new: nn.modules.batchnorm._BatchNorm, old: nn.modules.batchnorm._BatchNorm) -> None:
    if old.affine:
        with torch.no_grad():
            new.weight = old.weight
            new.bias = old.bias
    new.running_mean = old.running_mean
    new.running_var = old.running_var
    new.num_batches_tracked = old.num_batches_tracked
    new.train(old.training)


def convert_sync_batchnorm(module: nn.Module, device: torch.device | str = "cpu") -> tuple[nn.Module, int]:
    """Replace every ``nn.BatchNorm1d/2d/3d`` of ``module`` (in place; the root too) by a synchronised one:
    ``torch.nn.SyncBatchNorm`` on CUDA, :class:`SyncBatchNorm` otherwise. Returns (module, layers converted)."""
    cuda = torch.device(device).type == "cuda"
    cls = nn.SyncBatchNorm if cuda else SyncBatchNorm
    count = 0

    def convert(m: nn.Module) -> nn.Module:
        nonlocal count
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and not isinstance(m, (nn.SyncBatchNorm, SyncBatchNorm)):
            new = cls(m.num_features, m.eps, m.momentum, m.affine, m.track_running_stats)
            _copy_into(new, m)
            count += 1
            return new
        for name, child in m.named_children():
            m.add_module(name, convert(child))
        return m

    return convert(module), count
