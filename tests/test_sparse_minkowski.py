"""MinkowskiEngine backend: agreement with the built-in backend, and ME's CPU global pooling after our fixes."""

import pytest
import torch

from crossmodal.models import MinkLoc3D
from crossmodal.sparse import (
    SparseConv3d,
    SparseConvTranspose3d,
    minkowski_available,
    sparse_quantize,
    sparse_tensor,
)

pytestmark = [
    pytest.mark.minkowski,
    pytest.mark.usefixtures("single_thread"),
    pytest.mark.skipif(not minkowski_available(), reason="MinkowskiEngine is not installed "
                                                         "(scripts/install_minkowskiengine.sh builds it)"),
]



def random_batch(seed: int, n: int = 300, batches: int = 3, extent: int = 8):
    g = torch.Generator().manual_seed(seed)
    c = torch.cat([torch.randint(0, batches, (n, 1), generator=g), torch.randint(-extent, extent, (n, 3), generator=g)], 1)
    c = torch.unique(c, dim=0).int()
    return c, torch.randn(len(c), 3, dtype=torch.float64, generator=g)


def by_coords(x):
    """(coords, feats) of a sparse tensor with rows sorted lexicographically."""
    c = x.coords.long()
    key = ((c[:, 0] * 64 + c[:, 1] + 32) * 64 + c[:, 2] + 32) * 64 + c[:, 3] + 32
    order = torch.argsort(key)
    return c[order], x.feats[order]


@pytest.mark.parametrize("k,stride", [(1, 1), (2, 2), (3, 1), (3, 2), (5, 1)])
def test_conv_agrees_between_backends(k, stride):
    coords, feats = random_batch(k + stride)
    conv = SparseConv3d(3, 4, k, stride=stride).double()
    torch_c, torch_f = by_coords(conv(sparse_tensor(coords, feats, backend="torch")))
    me_c, me_f = by_coords(conv(sparse_tensor(coords, feats, backend="minkowski")))
    assert torch.equal(torch_c, me_c)
    torch.testing.assert_close(torch_f, me_f)


@pytest.mark.parametrize("k", [2, 3])
def test_conv_transpose_agrees_between_backends(k):
    coords, feats = random_batch(20 + k)
    down = SparseConv3d(3, 3, 2, stride=2).double()
    up = SparseConvTranspose3d(3, 2, k, stride=2).double()
    results = []
    for backend in ("torch", "minkowski"):
        x = sparse_tensor(coords, feats, backend=backend)
        results.append(by_coords(up(down(x), x)))
    assert torch.equal(results[0][0], results[1][0])
    torch.testing.assert_close(results[0][1], results[1][1])


def test_lidar_branch_agrees_between_backends():
    g = torch.Generator().manual_seed(0)
    clouds = [torch.rand(512, 3, generator=g) * 2 - 1 for _ in range(4)]
    batch = dict(zip(("coords", "feats"), sparse_quantize(clouds, 0.05)))
    torch.manual_seed(0)
    models = {b: MinkLoc3D(backend=b).double() for b in ("torch", "minkowski")}
    models["minkowski"].load_state_dict(models["torch"].state_dict())
    outs, grads = {}, {}
    for name, model in models.items():
        feats = batch["feats"].double()
        outs[name] = model({"coords": batch["coords"], "feats": feats})["descriptor"]
        outs[name].square().sum().backward()
        grads[name] = {n: p.grad for n, p in model.named_parameters()}
    assert outs["torch"].shape == (4, 128)
    torch.testing.assert_close(outs["torch"], outs["minkowski"])
    for name in grads["torch"]:
        torch.testing.assert_close(grads["torch"][name], grads["minkowski"][name], msg=name)


@pytest.mark.parametrize("trial", range(8))
def test_minkowski_cpu_global_pooling_is_batch_ordered(trial):
    """ME's own CPU global pooling: outputs row b = batch item b and gradients go to the right points (both were
    wrong in the unpatched 0.5.4: src/global_pooling_cpu.cpp, src/coordinate_map_cpu.hpp)."""
    import MinkowskiEngine as ME

    g = torch.Generator().manual_seed(trial)
    coords = torch.cat([torch.randint(0, 4, (200, 1), generator=g), torch.randint(0, 10, (200, 3), generator=g)], 1)
    coords = torch.unique(coords, dim=0)
    coords = coords[torch.randperm(len(coords), generator=g)].int()
    feats = torch.randn(len(coords), 3, dtype=torch.float64, generator=g, requires_grad=True)
    pools = {
        "avg": (ME.MinkowskiGlobalAvgPooling(), lambda v: v.mean(0)),
        "sum": (ME.MinkowskiGlobalSumPooling(), lambda v: v.sum(0)),
        "max": (ME.MinkowskiGlobalMaxPooling(), lambda v: v.max(0).values),
    }
    for name, (pool, reduce) in pools.items():
        x = ME.SparseTensor(feats, coordinates=coords)
        out = pool(x)
        assert out.C[:, 0].tolist() == [0, 1, 2, 3], name
        rows = x.C[:, 0].long()
        expected = torch.stack([reduce(x.F[rows == b]) for b in range(4)])
        torch.testing.assert_close(out.F, expected, msg=name)
        if name == "avg":
            weights = torch.arange(1.0, 5.0, dtype=torch.float64)[:, None]
            (grad,) = torch.autograd.grad((out.F * weights).sum(), feats)
            counts = torch.bincount(coords[:, 0].long(), minlength=4).double()
            expected_grad = (weights[:, 0] / counts)[coords[:, 0].long()][:, None].expand_as(feats)
            torch.testing.assert_close(grad, expected_grad, msg=name)
