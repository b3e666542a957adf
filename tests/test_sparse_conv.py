"""Built-in sparse convolutions against dense torch conv3d / conv_transpose3d references (outputs and gradients)."""

import pytest
import torch
import torch.nn.functional as F

from crossmodal.sparse import (
    SparseConv3d,
    SparseConvTranspose3d,
    kernel_offsets,
    sparse_tensor,
)

B, D = 2, 6  # batch items, dense grid side


def random_coords(n: int, seed: int, scale: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    c = torch.cat([torch.randint(0, B, (n, 1), generator=g), torch.randint(0, D, (n, 3), generator=g)], 1)
    return torch.unique(c, dim=0).int() * torch.tensor([1, scale, scale, scale], dtype=torch.int32)


def to_dense(coords: torch.Tensor, feats: torch.Tensor, scale: int, size: int = D) -> torch.Tensor:
    """Differentiable scatter of sparse features onto a dense [B, C, size, size, size] grid (coords / scale)."""
    c = coords.long()
    c[:, 1:] //= scale
    rows = ((c[:, 0] * size + c[:, 1]) * size + c[:, 2]) * size + c[:, 3]
    flat = feats.new_zeros(B * size ** 3, feats.shape[1]).index_put((rows,), feats)
    return flat.reshape(B, size, size, size, -1).permute(0, 4, 1, 2, 3)


def gather_dense(dense: torch.Tensor, coords: torch.Tensor, scale: int) -> torch.Tensor:
    c = coords.long()
    c[:, 1:] //= scale
    return dense[c[:, 0], :, c[:, 1], c[:, 2], c[:, 3]]


def dense_weight(kernel: torch.Tensor, k: int, transposed: bool) -> torch.Tensor:
    """ME layout [k³ (x fastest), in, out] → conv3d [out, in, kx, ky, kz] / conv_transpose3d [in, out, ...]."""
    w = kernel.reshape(k, k, k, kernel.shape[1], kernel.shape[2])  # [kz, ky, kx, in, out]
    return w.permute(3, 4, 2, 1, 0) if transposed else w.permute(4, 3, 2, 1, 0)


def test_kernel_offsets_follow_minkowski_order():
    # MinkowskiEngine src/kernel_region.hpp, kernel_region::coordinate_at: x varies fastest; even kernels span
    # 0..k-1, odd kernels -k//2..k//2.
    assert kernel_offsets(2).tolist() == [[0, 0, 0], [1, 0, 0], [0, 1, 0], [1, 1, 0],
                                          [0, 0, 1], [1, 0, 1], [0, 1, 1], [1, 1, 1]]
    k3 = kernel_offsets(3)
    assert k3[:4].tolist() == [[-1, -1, -1], [0, -1, -1], [1, -1, -1], [-1, 0, -1]]
    assert k3[9].tolist() == [-1, -1, 0] and k3[13].tolist() == [0, 0, 0] and k3[26].tolist() == [1, 1, 1]
    assert kernel_offsets(1).tolist() == [[0, 0, 0]]
    assert kernel_offsets(5)[0].tolist() == [-2, -2, -2] and kernel_offsets(5)[1].tolist() == [-1, -2, -2]


@pytest.mark.parametrize("scale", [1, 2])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("k", [1, 2, 3, 5])
def test_conv_matches_dense(k, stride, scale):
    """Output coordinates, features and gradients (features and weights) equal dense conv3d; ``scale`` 2 runs
    the same problem at input tensor stride 2 (offsets scaled by the stride)."""
    coords = random_coords(150, seed=10 * k + stride, scale=scale)
    feats = torch.randn(coords.shape[0], 3, dtype=torch.float64, requires_grad=True)
    x = sparse_tensor(coords, feats, backend="torch", stride=scale)
    conv = SparseConv3d(3, 4, k, stride=stride, bias=True).double()
    y = conv(x)

    step = scale * stride
    parents = torch.cat([coords[:, :1].long(), torch.div(coords[:, 1:].long(), step, rounding_mode="floor") * step], 1)
    assert torch.equal(y.coords.long(), torch.unique(parents, dim=0))

    dense_in = to_dense(coords, feats, scale)
    pad = k // 2 if k % 2 else 0
    if k % 2 == 0:
        dense_in = F.pad(dense_in, (0, k - 1) * 3)
    ref = F.conv3d(dense_in, dense_weight(conv.kernel, k, False), conv.bias, stride=stride, padding=pad)
    ref = gather_dense(ref, y.coords, scale * stride)
    torch.testing.assert_close(y.feats, ref, atol=1e-12, rtol=1e-10)

    grad = torch.randn_like(ref)
    g_sparse = torch.autograd.grad(y.feats, (feats, conv.kernel, conv.bias), grad)
    g_dense = torch.autograd.grad(ref, (feats, conv.kernel, conv.bias), grad)
    for a, b in zip(g_sparse, g_dense):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-10)


@pytest.mark.parametrize("k,stride", [(2, 2), (3, 2), (3, 1), (1, 1)])
def test_conv_transpose_matches_dense(k, stride):
    """Transposed conv onto the finer tensor's coordinates equals conv_transpose3d read at those coordinates."""
    fine_coords = random_coords(200, seed=k + 7 * stride)
    fine = sparse_tensor(fine_coords, torch.zeros(fine_coords.shape[0], 1, dtype=torch.float64), backend="torch")
    coarse = SparseConv3d(1, 1, 2, stride=stride).double()(fine) if stride > 1 else fine
    cfeats = torch.randn(coarse.feats.shape[0], 3, dtype=torch.float64, requires_grad=True)
    coarse = coarse.replace(cfeats)
    tconv = SparseConvTranspose3d(3, 4, k, stride=stride).double()
    y = tconv(coarse, fine)
    assert torch.equal(y.coords, fine.coords)

    size = D // stride
    dense_in = to_dense(coarse.coords, cfeats, stride, size)
    pad = k // 2 if k % 2 else 0
    extra = D - ((size - 1) * stride - 2 * pad + k)  # output_padding reaches the last fine cells
    ref = F.conv_transpose3d(dense_in, dense_weight(tconv.kernel, k, True), stride=stride, padding=pad,
                             output_padding=extra)
    ref = gather_dense(ref, fine.coords, 1)
    torch.testing.assert_close(y.feats, ref, atol=1e-12, rtol=1e-10)

    grad = torch.randn_like(ref)
    for a, b in zip(torch.autograd.grad(y.feats, (cfeats, tconv.kernel), grad),
                    torch.autograd.grad(ref, (cfeats, tconv.kernel), grad)):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-10)


def test_unsorted_input_rows_are_permuted_consistently():
    coords = random_coords(100, seed=3)
    perm = torch.randperm(coords.shape[0], generator=torch.Generator().manual_seed(0))
    feats = torch.randn(coords.shape[0], 2, dtype=torch.float64)
    conv = SparseConv3d(2, 2, 3).double()
    a = conv(sparse_tensor(coords, feats, backend="torch"))
    b = conv(sparse_tensor(coords[perm], feats[perm], backend="torch"))
    assert torch.equal(a.coords, b.coords)
    torch.testing.assert_close(a.feats, b.feats)


def test_kernel_maps_are_cached_and_timed():
    coords = random_coords(100, seed=4)
    x = sparse_tensor(coords, torch.ones(coords.shape[0], 1), backend="torch")
    conv = SparseConv3d(1, 2, 3)
    conv(x)
    built = x.backend.map_seconds
    assert built > 0
    manager = x.backend.manager
    first = manager.kernel_map(x.key, x.key, 3)
    conv(x)
    assert manager.kernel_map(x.key, x.key, 3) is first
    assert x.backend.map_seconds == built


def test_invalid_inputs_raise_clear_errors():
    coords = torch.tensor([[0, 1, 0, 0], [0, 0, 0, 0], [0, 1, 0, 0]], dtype=torch.int32)
    with pytest.raises(ValueError, match="unique"):
        sparse_tensor(coords, torch.ones(3, 1), backend="torch")
    with pytest.raises(ValueError, match=r"\[N, 4\]"):
        sparse_tensor(torch.zeros(2, 3, dtype=torch.int32), torch.ones(2, 1), backend="torch")
    with pytest.raises(ValueError, match="multiples"):
        sparse_tensor(torch.tensor([[0, 1, 0, 0]], dtype=torch.int32), torch.ones(1, 1), backend="torch", stride=2)
    with pytest.raises(ValueError, match="unknown sparse backend"):
        sparse_tensor(coords[:1], torch.ones(1, 1), backend="spconv")
    x = sparse_tensor(coords[:1], torch.ones(1, 1), backend="torch")
    with pytest.raises(ValueError, match="input channels"):
        SparseConv3d(2, 2, 3)(x)
    with pytest.raises(ValueError, match="same coordinate set"):
        x + SparseConv3d(1, 1, 2, stride=2)(x)


def test_conv_transpose_with_pre_1x1_equals_composition():
    coords = random_coords(150, seed=11)
    fine = sparse_tensor(coords, torch.randn(coords.shape[0], 3, dtype=torch.float64), backend="torch")
    coarse = SparseConv3d(3, 3, 2, stride=2).double()(fine)
    pre = SparseConv3d(3, 5, 1).double()
    tconv = SparseConvTranspose3d(5, 4, 2).double()
    fused = tconv(coarse, fine, pre=pre)
    composed = tconv(pre(coarse), fine)
    torch.testing.assert_close(fused.feats, composed.feats)
    grad = torch.randn_like(fused.feats)
    for a, b in zip(torch.autograd.grad(fused.feats, (pre.kernel, tconv.kernel), grad),
                    torch.autograd.grad(composed.feats, (pre.kernel, tconv.kernel), grad)):
        torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match="pre must be"):
        tconv(coarse, fine, pre=SparseConv3d(3, 5, 1, bias=True).double())
