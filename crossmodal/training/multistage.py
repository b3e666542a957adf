"""One training step, optionally with multi-stage backpropagation (MinkLoc3Dv2).

A batch of B items larger than ``max_chunk`` is processed in chunks of at most ``max_chunk`` items:

1. every chunk is embedded without autograd (activations are freed at once), the outputs are concatenated;
2. the loss is computed on the concatenated outputs made leaf tensors (``requires_grad``), and backpropagated to
   get ``dL/d output``;
3. every chunk is embedded again with autograd and ``backward(chunk's slice of dL/d output)`` accumulates the
   parameter gradients.

The parameter gradients equal those of one full-batch backward when the model's output for an item depends
only on that item: true for the teachers in eval mode. **BatchNorm caveat**: in training mode BN normalises with
the statistics of the batch it sees, i.e. of the chunk, so chunked outputs (and gradients) differ from the
full-batch ones, exactly as MinkLoc3Dv2 accepts; the chunk size then acts like a smaller BN batch. Pass 1 and pass
2 see the same chunks, so they compute the same function and the gradient is exact for *that* function. BN running
statistics would be updated twice per chunk (passes 1 and 2); they are saved before pass 1 and restored after it,
so they are updated once, by pass 2. Peak activation memory is that of one chunk (plus B cached embeddings).
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

SPARSE_KEYS = ("coords", "feats")


def batch_size_of(batch: Mapping[str, Any]) -> int:
    for key in ("indices", "images"):
        if key in batch:
            return int(batch[key].shape[0])
    if "coords" in batch:
        return int(batch["coords"][:, 0].max()) + 1 if len(batch["coords"]) else 0
    raise KeyError("cannot tell the batch size: no 'indices', 'images' or 'coords' entry")


def split_batch(batch: Mapping[str, Any], start: int, stop: int) -> dict[str, Any]:
    """Items ``start:stop`` of a collated batch: per-item tensors / lists sliced, sparse rows of those items kept
    with their batch index shifted to start at 0, ``[B, B]`` masks cut to the block; other entries shared."""
    b = batch_size_of(batch)
    out: dict[str, Any] = {}
    if "coords" in batch:
        coords = batch["coords"]
        rows = (coords[:, 0] >= start) & (coords[:, 0] < stop)
        c = coords[rows].clone()
        c[:, 0] -= start
        out["coords"] = c
        out["feats"] = batch["feats"][rows]
    for key, value in batch.items():
        if key in SPARSE_KEYS:
            continue
        if key.endswith("_mask") and isinstance(value, Tensor) and value.dim() == 2 and value.shape == (b, b):
            out[key] = value[start:stop, start:stop]
        elif isinstance(value, Tensor) and value.dim() >= 1 and value.shape[0] == b or isinstance(value, list) and len(value) == b:
            out[key] = value[start:stop]
        else:
            out[key] = value
    return out


def move_batch(batch: Mapping[str, Any], device: torch.device | str) -> dict[str, Any]:
    """Tensors of a batch on ``device`` (non-blocking); other entries as they are."""
    device = torch.device(device)
    return {k: (v.to(device, non_blocking=True) if isinstance(v, Tensor) else v) for k, v in batch.items()}


def _bn_buffers(model: nn.Module) -> list[tuple[nn.modules.batchnorm._BatchNorm, dict[str, Tensor]]]:
    saved = []
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training and m.track_running_stats:
            saved.append((m, {k: getattr(m, k).detach().clone() for k in ("running_mean", "running_var",
                                                                           "num_batches_tracked")
                              if getattr(m, k, None) is not None}))
    return saved


def _restore(saved) -> None:
    with torch.no_grad():
        for m, bufs in saved:
            for k, v in bufs.items():
                getattr(m, k).copy_(v)


LossFn = Callable[[Mapping[str, Tensor], Tensor, Tensor], tuple[Tensor, dict[str, float]]]


def _upcast(t: Tensor) -> Tensor:
    """Half / bfloat16 outputs (autocast) as float32 for the loss; other dtypes as they are."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def _bounds(b: int, max_chunk: int | None, chunks: int | None) -> list[tuple[int, int]]:
    """Chunk boundaries: ``chunks`` near-equal parts when given (DDP: the same count on every rank), else parts of
    ``max_chunk`` items."""
    if chunks is not None and chunks > 1:
        if chunks > b:
            raise ValueError(f"cannot cut a batch of {b} items into {chunks} chunks")
        base, extra = divmod(b, chunks)
        starts = [i * base + min(i, extra) for i in range(chunks + 1)]
        return list(itertools.pairwise(starts))
    if chunks is not None or max_chunk is None or max_chunk <= 0 or b <= max_chunk:
        return [(0, b)]
    return [(s, min(s + max_chunk, b)) for s in range(0, b, max_chunk)]


def forward_backward(model: nn.Module, batch: Mapping[str, Any], loss_fn: LossFn, outputs: tuple[str, ...],
                     max_chunk: int | None = None, *, chunks: int | None = None,
                     autocast: Callable[[], contextlib.AbstractContextManager] | None = None,
                     scale: Callable[[Tensor], Tensor] | None = None,
                     no_sync: Callable[[], contextlib.AbstractContextManager] | None = None,
                     ) -> tuple[Tensor, dict[str, float]]:
    """Forward + loss + backward of one batch (gradients accumulate into ``.grad``; the caller zeroes them and
    steps). ``outputs``: the model outputs the loss reads. With ``max_chunk`` and a larger batch: multi-stage
    backprop (module doc). Returns the detached loss and the loss's stats (plus ``chunks``).

    Keyword options (the training loop's, :class:`~crossmodal.training.step.StepRunner`): ``chunks`` forces that
    many near-equal chunks (1: none); ``autocast`` a context-manager factory around the model's forward passes
    (mixed precision; the loss runs on float32 copies of half / bfloat16 ``outputs``); ``scale`` maps the loss
    to what is backpropagated (fp16 loss scaling); ``no_sync`` a context-manager factory (DDP's ``no_sync``)
    entered for every chunk's backward but the last, so gradients are reduced once.
    """
    pos, neg = batch["positives_mask"], batch["negatives_mask"]
    b = batch_size_of(batch)
    amp = autocast or contextlib.nullcontext
    scale = scale or (lambda t: t)
    bounds = _bounds(b, max_chunk, chunks)
    if len(bounds) == 1:
        with amp():
            out = model(batch)
        out = {k: (_upcast(v) if k in outputs else v) for k, v in out.items()}
        loss, stats = loss_fn(out, pos, neg)
        scale(loss).backward()
        stats["chunks"] = 1.0
        return loss.detach(), stats

    saved = _bn_buffers(model)
    with torch.no_grad(), amp():
        parts = [model(split_batch(batch, s, e)) for s, e in bounds]
    _restore(saved)
    cached = {k: _upcast(torch.cat([p[k] for p in parts]).detach()).requires_grad_(True) for k in outputs}
    del parts
    loss, stats = loss_fn(cached, pos, neg)
    scale(loss).backward()
    grads = {k: (v.grad if v.grad is not None else torch.zeros_like(v)) for k, v in cached.items()}
    for i, (s, e) in enumerate(bounds):
        sync = contextlib.nullcontext if no_sync is None or i == len(bounds) - 1 else no_sync
        with sync():
            with amp():
                out = model(split_batch(batch, s, e))
            torch.autograd.backward([out[k] for k in outputs], [grads[k][s:e].to(out[k].dtype) for k in outputs])
    stats["chunks"] = float(len(bounds))
    return loss.detach(), stats
