"""Global pooling, broadcast, element-wise ops, quantisation and collation of crossmodal.sparse."""

import math

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from crossmodal.sparse import (
    GeM,
    GlobalAvgPool,
    GlobalMaxPool,
    GridGeM,
    SparseBatchNorm,
    SparseCollate,
    SparseReLU,
    broadcast_mul,
    resolve_backend,
    sparse_quantize,
    sparse_tensor,
)


def shuffled_batch(seed: int, batches=(0, 1, 3, 4)):
    """Unique coordinates of several batch items (index 2 absent), rows shuffled, float64 features."""
    g = torch.Generator().manual_seed(seed)
    parts = [torch.cat([torch.full((40, 1), b), torch.randint(-5, 5, (40, 3), generator=g)], 1) for b in batches]
    coords = torch.unique(torch.cat(parts), dim=0)
    coords = coords[torch.randperm(len(coords), generator=g)].int()
    return coords, torch.randn(len(coords), 5, dtype=torch.float64, generator=g)


def naive_pool(coords, feats, reduce):
    return torch.stack([reduce(feats[coords[:, 0] == b]) for b in sorted(set(coords[:, 0].tolist()))])


@pytest.mark.parametrize("seed", range(3))
def test_global_pooling_matches_per_batch_loops(seed):
    coords, feats = shuffled_batch(seed)
    x = sparse_tensor(coords, feats, backend="torch")
    c, f = x.coords, x.feats
    torch.testing.assert_close(GlobalAvgPool()(x), naive_pool(c, f, lambda v: v.mean(0)))
    torch.testing.assert_close(GlobalMaxPool()(x), naive_pool(c, f, lambda v: v.max(0).values))
    gem = GeM(p=3.0).double()
    ref = naive_pool(c, f, lambda v: v.clamp(min=1e-6).pow(3).mean(0).pow(1 / 3))
    torch.testing.assert_close(gem(x), ref)


def naive_grid_gem(coords, feats, cells, p, eps=1e-6):
    """Loops: each batch item's x-y bounding box cut into cells × cells slices, GeM per cell (eps**1 if empty)."""
    rows = []
    for b in sorted(set(coords[:, 0].tolist())):
        c, f = coords[coords[:, 0] == b], feats[coords[:, 0] == b]
        lo = c[:, 1:3].min(0).values.double()
        span = c[:, 1:3].max(0).values.double() - lo + 1.0  # stride 1
        out = []
        for i in range(cells):
            for j in range(cells):
                ij = torch.floor((c[:, 1:3].double() - lo) / span * cells).long()
                m = (ij[:, 0] == i) & (ij[:, 1] == j)
                out.append(f[m].clamp(min=eps).pow(p).mean(0).pow(1 / p) if m.any()
                           else torch.full((f.shape[1],), eps, dtype=f.dtype))
        rows.append(torch.cat(out))
    return torch.stack(rows)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("cells", [1, 2, 3])
def test_grid_gem_matches_per_cell_loops(seed, cells):
    coords, feats = shuffled_batch(seed)
    x = sparse_tensor(coords, feats, backend="torch")
    pool = GridGeM(cells, p=3.0).double()
    out = pool(x)
    assert out.shape == (4, cells * cells * 5)
    torch.testing.assert_close(out, naive_grid_gem(x.coords, x.feats, cells, 3.0))
    if cells == 1:  # one cell = global GeM
        torch.testing.assert_close(out, GeM(p=3.0).double()(x))


def test_grid_gem_keeps_layout_and_has_finite_gradients():
    """Two items with the same points in mirrored x order: global GeM cannot tell them apart, GridGeM can."""
    pts = torch.tensor([[0, 0, 0], [0, 1, 0], [5, 0, 0], [5, 1, 0]])
    feats = torch.tensor([[1.0], [1.0], [4.0], [4.0]], dtype=torch.float64)
    coords = torch.cat([torch.cat([torch.zeros(4, 1, dtype=torch.long), pts], 1),
                        torch.cat([torch.ones(4, 1, dtype=torch.long), pts], 1)]).int()
    f = torch.cat([feats, feats.flip(0)]).requires_grad_(True)
    x = sparse_tensor(coords, f, backend="torch")
    glob = GeM(p=3.0).double()(x)
    torch.testing.assert_close(glob[0], glob[1])
    grid = GridGeM(2, p=3.0).double()
    out = grid(x)
    assert not torch.allclose(out[0], out[1])
    out.sum().backward()
    assert torch.isfinite(f.grad).all() and torch.isfinite(grid.p.grad).all()


def test_pooling_gradients_reach_their_own_batch_item():
    coords, feats = shuffled_batch(5)
    feats.requires_grad_(True)
    x = sparse_tensor(coords, feats, backend="torch")
    weights = torch.arange(1.0, 5.0, dtype=torch.float64)[:, None]
    (GlobalAvgPool()(x) * weights).sum().backward()
    batches = sorted(set(coords[:, 0].tolist()))
    for row, b in enumerate(batches):
        mask = coords[:, 0] == b
        torch.testing.assert_close(feats.grad[mask], torch.full_like(feats[mask], row + 1.0) / int(mask.sum()))


def test_gem_p_is_learnable():
    coords, feats = shuffled_batch(1)
    gem = GeM(p=3.0).double()
    gem(sparse_tensor(coords, feats.abs(), backend="torch")).sum().backward()
    assert gem.p.grad is not None and gem.p.grad.abs().item() > 0


def test_broadcast_mul_batchnorm_relu_and_add():
    coords, feats = shuffled_batch(2)
    x = sparse_tensor(coords, feats, backend="torch")
    scale = torch.randn(4, 5, dtype=torch.float64)
    y = broadcast_mul(x, scale)
    batch_row = {b: i for i, b in enumerate(sorted(set(coords[:, 0].tolist())))}
    rows = torch.tensor([batch_row[b] for b in x.coords[:, 0].tolist()])
    torch.testing.assert_close(y.feats, x.feats * scale[rows])
    with pytest.raises(ValueError, match="rows"):
        broadcast_mul(x, scale[:3])

    bn = SparseBatchNorm(5).double()
    torch.testing.assert_close(bn(x).feats, torch.nn.functional.batch_norm(
        x.feats, None, None, bn.bn.weight, bn.bn.bias, training=True))
    torch.testing.assert_close(SparseReLU()(x).feats, x.feats.clamp(min=0))
    torch.testing.assert_close((x + y).feats, x.feats + y.feats)


def naive_quantize(clouds, q):
    voxels = set()
    for b, cloud in enumerate(clouds):
        for p in cloud:
            voxels.add((b, *(math.floor(v) for v in (p / np.float32(q)).tolist())))
    return sorted(voxels)


def test_sparse_quantize_matches_set_reference():
    rng = np.random.default_rng(0)
    clouds = [rng.uniform(-1, 1, (300, 3)).astype(np.float32) for _ in range(3)]
    clouds[1][:50] = clouds[1][50:100]  # duplicate points
    coords, feats = sparse_quantize(clouds, 0.1)
    assert coords.dtype == torch.int32 and feats.dtype == torch.float32
    assert [tuple(r) for r in coords.tolist()] == naive_quantize(clouds, 0.1)
    assert torch.equal(feats, torch.ones(len(coords), 1))


def test_sparse_quantize_averages_given_features():
    cloud = torch.tensor([[0.01, 0.01, 0.01], [0.02, 0.02, 0.02], [0.5, 0.5, 0.5]])
    coords, feats = sparse_quantize([cloud], 0.1, features=[torch.tensor([[1.0], [3.0], [5.0]])])
    assert coords.tolist() == [[0, 0, 0, 0], [0, 5, 5, 5]]
    assert feats.tolist() == [[2.0], [5.0]]
    with pytest.raises(ValueError, match=r"\[N, 3\]"):
        sparse_quantize([torch.zeros(4, 2)], 0.1)
    with pytest.raises(ValueError, match="coarser"):
        sparse_quantize([torch.tensor([[1000.0, 0.0, 0.0]])], 0.01)


class _Clouds(Dataset):
    def __len__(self):
        return 6

    def __getitem__(self, i):
        g = torch.Generator().manual_seed(i)
        return {"cloud": torch.rand(100, 3, generator=g) * 2 - 1, "index": i}


def test_collate_runs_in_dataloader_workers():
    collate = SparseCollate(quantization_size=0.05)
    loader = DataLoader(_Clouds(), batch_size=3, num_workers=2, collate_fn=collate)
    batches = list(loader)
    assert [b["index"].tolist() for b in batches] == [[0, 1, 2], [3, 4, 5]]
    clouds = [_Clouds()[i]["cloud"] for i in range(3)]
    coords, feats = sparse_quantize(clouds, 0.05)
    assert torch.equal(batches[0]["coords"], coords) and torch.equal(batches[0]["feats"], feats)


def test_backend_resolution():
    assert resolve_backend("torch") == "torch"
    assert resolve_backend("auto") in ("torch", "minkowski")
    with pytest.raises(ValueError, match="unknown"):
        resolve_backend("dense")
