"""Worker for tests/test_distributed.py, started by ``torchrun --nproc_per_node=2``: checks the collectives of
:mod:`crossmodal.training.distributed` and :mod:`crossmodal.training.sync_batchnorm` against single-process
references computed on every rank, and writes the largest deviations to ``$OUT`` (rank 0)."""

from __future__ import annotations

import json
import os
import sys

import torch
from torch import nn

from crossmodal.training import distributed
from crossmodal.training.sync_batchnorm import convert_sync_batchnorm


def main(out: str) -> None:
    torch.set_num_threads(1)
    info = distributed.init_from_env("cpu")
    assert info.world_size == 2, info
    r, w = info.rank, info.world_size
    gen = torch.Generator().manual_seed(0)
    res: dict[str, float] = {}

    # gather_rows: forward = concatenation in rank order (unequal lengths); backward = W x own rows' gradient
    full = torch.randn(7, 5, generator=gen, dtype=torch.float64)
    start, stop = distributed.shard_range(7)
    mine = full[start:stop].clone().requires_grad_(True)
    gathered = distributed.gather_rows(mine)
    res["gather_forward"] = float((gathered - full).abs().max())
    weights = torch.randn(7, 5, generator=gen, dtype=torch.float64)
    (gathered * weights).pow(2).sum().backward()
    ref = full.clone().requires_grad_(True)
    (ref * weights).pow(2).sum().backward()
    res["gather_backward"] = float((mine.grad - w * ref.grad[start:stop]).abs().max())

    # SyncBatchNorm on the shards == BatchNorm on the whole batch (outputs, input / weight gradients, running stats)
    for dims, bn_cls in ((2, nn.BatchNorm1d), (4, nn.BatchNorm2d)):
        shape = (10, 3) if dims == 2 else (6, 3, 4, 5)
        x = (torch.randn(*shape, generator=gen, dtype=torch.float64) * 3 + 2)
        g = torch.randn(*shape, generator=gen, dtype=torch.float64)
        ref_bn = bn_cls(3).double()
        with torch.no_grad():
            ref_bn.weight.uniform_(0.5, 1.5, generator=gen)
            ref_bn.bias.uniform_(-0.5, 0.5, generator=gen)
        sync_bn = convert_sync_batchnorm(nn.Sequential(bn_cls(3).double()), "cpu")[0][0]
        sync_bn.load_state_dict(ref_bn.state_dict())
        xr = x.clone().requires_grad_(True)
        ref_out = ref_bn(xr)
        (ref_out * g).sum().backward()
        s0, s1 = distributed.shard_range(shape[0])
        xs = x[s0:s1].clone().requires_grad_(True)
        ys = sync_bn(xs)
        (ys * g[s0:s1]).sum().backward()
        key = f"syncbn{dims}d"
        res[f"{key}_out"] = float((ys.detach() - ref_out.detach()[s0:s1]).abs().max())
        res[f"{key}_grad_input"] = float((xs.grad - xr.grad[s0:s1]).abs().max())
        wgrad = distributed.all_reduce_sum_autograd(sync_bn.weight.grad.detach())
        res[f"{key}_grad_weight"] = float((wgrad - ref_bn.weight.grad).abs().max())
        res[f"{key}_running_mean"] = float((sync_bn.running_mean - ref_bn.running_mean).abs().max())
        res[f"{key}_running_var"] = float((sync_bn.running_var - ref_bn.running_var).abs().max())

    res.update(_step_runner_checks(gen, r, w))

    sums = distributed.all_reduce_sums({"a": r + 1.0, "b": 2.0})
    res["all_reduce_sums"] = abs(sums["a"] - 3.0) + abs(sums["b"] - 4.0)
    res["broadcast"] = float(distributed.broadcast_object(["rank", r])[1] != 0)
    distributed.barrier()
    if r == 0:
        with open(out, "w") as fh:
            json.dump(res, fh, indent=2)
    distributed.teardown()


class _Tuples:
    """Positives: items whose index differs by one (a line of places)."""

    def masks(self, indices):
        idx = torch.as_tensor(indices)
        d = (idx[:, None] - idx[None, :]).abs()
        return d == 1, d > 2


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 4))

    def forward(self, batch):
        return {"descriptor": self.body(batch["images"])}


def _loss(out, pos, neg):
    d = torch.cdist(out["descriptor"], out["descriptor"])
    loss = (d * pos).sum() / pos.sum() - (d * neg).sum() / neg.sum() + (out["descriptor"] ** 2).mean()
    return loss, {"loss": float(loss.detach())}


def _step_runner_checks(gen, r, w):
    """StepRunner's DDP step (shards, gathered global-batch loss, multi-stage chunks with no_sync, DDP average)
    against one full-batch backward of the same loss (no BatchNorm: chunking does not change the function)."""
    from crossmodal.training.step import StepRunner

    x = torch.randn(11, 5, generator=gen, dtype=torch.float64)
    indices = torch.tensor([3, 4, 8, 9, 0, 1, 6, 7, 12, 13, 2])
    torch.manual_seed(1)
    ref = _Net().double()
    torch.manual_seed(1)
    net = _Net().double()
    loss, _ = _loss(ref({"images": x}), *_Tuples().masks(indices))
    loss.backward()
    s0, s1 = distributed.shard_range(len(x))
    out = {}
    for max_chunk in (None, 2):
        for p in net.parameters():
            p.grad = None
        runner = StepRunner(net, torch.device("cpu"), tuples=_Tuples(), max_chunk=max_chunk)
        batch = runner.prepare({"images": x[s0:s1], "indices": indices[s0:s1], "sample_ids": indices[s0:s1] + 100})
        got, stats = runner.forward_backward(batch, _loss, ("descriptor",))
        key = f"step_chunks{max_chunk}"
        out[f"{key}_loss"] = abs(float(got) - float(loss))
        out[f"{key}_grads"] = max(float((p.grad - q.grad).abs().max()) for p, q in zip(net.parameters(),
                                                                                      ref.parameters()))
        out[f"{key}_ids"] = float((batch["global_sample_ids"] != indices + 100).sum())
        if max_chunk:
            out[f"{key}_count"] = abs(stats["chunks"] - 3.0)  # ceil(ceil(11 / 2) / 2) = 3 on every rank
    return out


if __name__ == "__main__":
    main(os.environ.get("OUT") or sys.argv[1])
