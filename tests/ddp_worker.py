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

    sums = distributed.all_reduce_sums({"a": r + 1.0, "b": 2.0})
    res["all_reduce_sums"] = abs(sums["a"] - 3.0) + abs(sums["b"] - 4.0)
    res["broadcast"] = float(distributed.broadcast_object(["rank", r])[1] != 0)
    distributed.barrier()
    if r == 0:
        with open(out, "w") as fh:
            json.dump(res, fh, indent=2)
    distributed.teardown()


if __name__ == "__main__":
    main(os.environ.get("OUT") or sys.argv[1])
