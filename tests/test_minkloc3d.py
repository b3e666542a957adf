"""MinkLoc3D LiDAR branch on the built-in backend: shapes, gradients, ME checkpoint loading."""

import pytest
import torch

from crossmodal.models import MinkLoc3D, load_minkowski_state_dict
from crossmodal.sparse import sparse_quantize

pytestmark = pytest.mark.usefixtures("single_thread")

def small_batch(num_clouds: int = 3, points: int = 400, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    clouds = [torch.rand(points, 3, generator=g) * 2 - 1 for _ in range(num_clouds)]
    coords, feats = sparse_quantize(clouds, 0.05)
    return {"coords": coords, "feats": feats}


def test_descriptor_shape_and_gradient_flow():
    torch.manual_seed(0)
    model = MinkLoc3D(backend="torch")
    out = model(small_batch())
    assert out["descriptor"].shape == (3, 128)
    assert out["local_features"].num_channels == 128 and out["local_features"].stride == 4
    out["descriptor"].sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name
    assert model.pooling.p.item() == 3.0


def test_plain_constructor_arguments():
    model = MinkLoc3D(in_channels=1, feature_size=64, planes=[16, 32, 32], layers=[1, 1, 1], num_top_down=1,
                      conv0_kernel_size=3, block="BasicBlock", pooling="MAC", backend="torch")
    assert model(small_batch(2, 200))["descriptor"].shape == (2, 64)
    with pytest.raises(ValueError, match="pooling"):
        MinkLoc3D(pooling="NetVLAD")
    with pytest.raises(ValueError, match="block"):
        MinkLoc3D(block="Bottleneck")


def minkowski_style_state_dict(model: MinkLoc3D, prefix: str) -> dict:
    """What a MinkowskiEngine MinkLoc++ checkpoint holds for this branch: 1×1 stride-1 kernels as [in, out],
    GeM's p under the PoolingWrapper (``pooling.pooling.p``), everything under ``prefix``; random values."""
    g = torch.Generator().manual_seed(1)
    state = {}
    for name, value in model.state_dict().items():
        new = torch.rand(value.shape, generator=g) + 0.5 if value.is_floating_point() else value.clone()
        if name.endswith(".kernel") and value.shape[0] == 1:
            new = new[0]
        if name == "pooling.p":
            name = "pooling.pooling.p"
        state[prefix + name] = new
    state["image_fe.conv.weight"] = torch.zeros(1)  # another branch of the checkpoint, outside the prefix
    return state


def test_load_minkowski_state_dict_gives_the_same_model_as_setting_weights():
    torch.manual_seed(0)
    loaded = MinkLoc3D(backend="torch")
    state = minkowski_style_state_dict(loaded, "cloud_fe.")
    assert state["cloud_fe.backbone.conv1x1.0.kernel"].shape == (64, 128)
    assert state["cloud_fe.backbone.convs.0.kernel"].shape == (8, 32, 32)
    load_minkowski_state_dict(loaded, state, prefix="cloud_fe.")

    direct = MinkLoc3D(backend="torch")
    with torch.no_grad():
        params = dict(direct.named_parameters()) | dict(direct.named_buffers())
        for name, value in state.items():
            if not name.startswith("cloud_fe."):
                continue
            own = name.removeprefix("cloud_fe.").replace("pooling.pooling.", "pooling.")
            params[own].copy_(value.reshape(params[own].shape))
    loaded.eval()
    direct.eval()
    batch = small_batch()
    torch.testing.assert_close(loaded(batch)["descriptor"], direct(batch)["descriptor"])


def test_load_minkowski_state_dict_rejects_bad_checkpoints():
    model = MinkLoc3D(backend="torch")
    before = {k: v.clone() for k, v in model.state_dict().items()}

    state = minkowski_style_state_dict(model, "")
    state["backbone.extra.kernel"] = torch.zeros(1)
    with pytest.raises(ValueError, match=r"unexpected keys \(2\): .*backbone.extra.kernel"):
        load_minkowski_state_dict(model, state)

    state = minkowski_style_state_dict(model, "")
    del state["backbone.conv0.kernel"]
    state["backbone.tconvs.0.kernel"] = torch.zeros(27, 128, 128)
    with pytest.raises(ValueError) as err:
        load_minkowski_state_dict(model, state, prefix="")
    assert "missing keys (1): backbone.conv0.kernel" in str(err.value)
    assert "backbone.tconvs.0.kernel: checkpoint (27, 128, 128) vs model (8, 128, 128)" in str(err.value)

    with pytest.raises(ValueError, match="missing keys"):
        load_minkowski_state_dict(model, minkowski_style_state_dict(model, "cloud_fe."), prefix="wrong.")
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name]), f"{name} changed by a failed load"
