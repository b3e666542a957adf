"""MinkLoc3Dv2's LiDAR branch (MinkLoc3D with 4 stages, 2 top-down steps, 256-d GeM) on the built-in backend:
shapes, gradients, parameter count, loading an upstream-shaped MinkowskiEngine state_dict, backend parity."""

from __future__ import annotations

import pytest
import torch

from crossmodal.models import MinkLoc3D, load_minkowski_state_dict
from crossmodal.sparse import minkowski_available, sparse_quantize

pytestmark = pytest.mark.usefixtures("single_thread")

#: jac99/MinkLoc3Dv2 models/minkloc3dv2.txt
V2 = {"in_channels": 1, "feature_size": 256, "planes": (64, 128, 64, 32), "layers": (1, 1, 1, 1), "num_top_down": 2,
      "conv0_kernel_size": 5, "block": "ECABasicBlock", "pooling": "GeM"}
BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def small_batch(num_clouds: int = 3, points: int = 400, seed: int = 0, quantization: float = 0.05):
    g = torch.Generator().manual_seed(seed)
    clouds = [torch.rand(points, 3, generator=g) * 2 - 1 for _ in range(num_clouds)]
    coords, feats = sparse_quantize(clouds, quantization)
    return {"coords": coords, "feats": feats}


def eca_kernel(channels: int) -> int:
    """ECA's adaptive 1-D kernel size (gamma 2, b 1), as upstream ``ECALayer`` computes it."""
    import math

    t = int(abs((math.log2(channels) + 1) / 2))
    return t if t % 2 else t + 1


def upstream_shapes(in_channels=1, feature_size=256, planes=(64, 128, 64, 32), layers=(1, 1, 1, 1), num_top_down=2,
                    conv0_kernel_size=5, **_) -> dict[str, tuple[int, ...]]:
    """Every entry of ``MinkLoc(MinkFPN, PoolingWrapper('GeM')).state_dict()`` from upstream's model code, in
    MinkowskiEngine's shapes: a conv kernel is [volume, in, out], a 1×1 one [in, out]; no conv biases; BN under
    ``.bn``; ECA's ``conv`` a bias-free Conv1d; GeM's p under the wrapper."""
    shapes: dict[str, tuple[int, ...]] = {}

    def bn(name: str, c: int) -> None:
        shapes.update({f"{name}.bn.{k}": (c,) if k != "num_batches_tracked" else () for k in BN})

    shapes["backbone.conv0.kernel"] = (conv0_kernel_size ** 3, in_channels, planes[0])
    bn("backbone.bn0", planes[0])
    inplanes = planes[0]
    for i, (plane, layer) in enumerate(zip(planes, layers)):
        shapes[f"backbone.convs.{i}.kernel"] = (8, inplanes, inplanes)
        bn(f"backbone.bn.{i}", inplanes)
        for j in range(layer):
            block = f"backbone.blocks.{i}.{j}"
            shapes[f"{block}.conv1.kernel"] = (27, inplanes, plane)
            bn(f"{block}.norm1", plane)
            shapes[f"{block}.conv2.kernel"] = (27, plane, plane)
            bn(f"{block}.norm2", plane)
            shapes[f"{block}.eca.conv.weight"] = (1, 1, eca_kernel(plane))
            if j == 0 and inplanes != plane:
                shapes[f"{block}.downsample.0.kernel"] = (inplanes, plane)
                bn(f"{block}.downsample.1", plane)
            inplanes = plane
    for i in range(num_top_down):
        shapes[f"backbone.conv1x1.{i}.kernel"] = (planes[-1 - i], feature_size)
        shapes[f"backbone.tconvs.{i}.kernel"] = (8, feature_size, feature_size)
    lateral = planes[-1 - num_top_down] if num_top_down < len(planes) else planes[0]
    shapes[f"backbone.conv1x1.{num_top_down}.kernel"] = (lateral, feature_size)
    shapes["pooling.pooling.p"] = (1,)
    return shapes


def upstream_state_dict(prefix: str = "", seed: int = 1) -> dict[str, torch.Tensor]:
    """A synthetic MinkLoc3Dv2 checkpoint: :func:`upstream_shapes` filled with random values."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for name, shape in upstream_shapes(**V2).items():
        if name.endswith("num_batches_tracked"):
            state[prefix + name] = torch.tensor(7)
        elif name.endswith("running_var"):
            state[prefix + name] = torch.rand(shape, generator=g) + 0.5
        else:
            state[prefix + name] = (torch.rand(shape, generator=g) - 0.5) * 0.2
    state[prefix + "pooling.pooling.p"] = torch.tensor([2.5])
    return state


def test_v2_descriptor_shape_stride_and_gradient_flow():
    torch.manual_seed(0)
    model = MinkLoc3D(**V2, backend="torch")
    out = model(small_batch())
    assert out["descriptor"].shape == (3, 256)
    # conv0 at stride 1, four stride-2 stages (16), two top-down steps back to stride 4
    assert out["local_features"].num_channels == 256 and out["local_features"].stride == 4
    out["descriptor"].sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_v2_parameter_count_matches_the_upstream_model():
    model = MinkLoc3D(**V2, backend="torch")
    expected = sum(torch.Size(s).numel() for n, s in upstream_shapes(**V2).items()
                   if not n.endswith(("running_mean", "running_var", "num_batches_tracked")))
    assert sum(p.numel() for p in model.parameters()) == expected == 2_663_567
    assert sum(p.numel() for p in model.backbone.parameters()) == expected - 1  # GeM's p aside


@pytest.mark.parametrize("stages,num_top_down", [(4, 0), (4, 1), (4, 3), (4, 4), (2, 2), (1, 1)])
def test_any_number_of_stages_and_top_down_steps(stages, num_top_down):
    kwargs = {"feature_size": 16, "planes": [8, 16, 8, 8][:stages], "layers": [1, 2, 1, 1][:stages],
              "num_top_down": num_top_down}
    model = MinkLoc3D(**kwargs, backend="torch")
    out = model(small_batch(2, 200))
    assert out["descriptor"].shape == (2, 16)
    assert out["local_features"].stride == 2 ** (stages - num_top_down)
    own = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    ups = {k.replace("pooling.pooling.", "pooling."): (1, *v) if k.endswith(".kernel") and len(v) == 2 else v
           for k, v in upstream_shapes(**kwargs).items()}
    assert own == ups


def test_v2_rejects_inconsistent_arguments():
    with pytest.raises(ValueError, match="equal length"):
        MinkLoc3D(**{**V2, "layers": (1, 1, 1)})
    with pytest.raises(ValueError, match="num_top_down"):
        MinkLoc3D(**{**V2, "num_top_down": 5})


@pytest.mark.parametrize("prefix", ["", "module."])
def test_load_upstream_v2_state_dict_gives_the_same_model_as_setting_weights(prefix):
    state = upstream_state_dict(prefix)
    assert state[f"{prefix}backbone.conv1x1.2.kernel"].shape == (128, 256)
    assert state[f"{prefix}backbone.blocks.1.0.downsample.0.kernel"].shape == (64, 128)
    loaded = MinkLoc3D(**V2, backend="torch")
    load_minkowski_state_dict(loaded, state, prefix=prefix)
    assert loaded.pooling.p.item() == 2.5
    assert loaded.backbone.bn0.bn.num_batches_tracked.item() == 7

    direct = MinkLoc3D(**V2, backend="torch")
    with torch.no_grad():
        own = dict(direct.named_parameters()) | dict(direct.named_buffers())
        for name, value in state.items():
            key = name.removeprefix(prefix).replace("pooling.pooling.", "pooling.")
            own[key].copy_(value.reshape(own[key].shape))
    loaded.eval()
    direct.eval()
    batch = small_batch(quantization=0.02)
    torch.testing.assert_close(loaded(batch)["descriptor"], direct(batch)["descriptor"])


def test_load_upstream_v2_state_dict_into_a_v1_model_fails_listing_the_differences():
    model = MinkLoc3D(backend="torch")  # MinkLoc3D / MinkLoc++ arguments
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError) as err:
        load_minkowski_state_dict(model, upstream_state_dict())
    text = str(err.value)
    assert "unexpected keys" in text and "backbone.convs.3.kernel" in text and "backbone.tconvs.1.kernel" in text
    assert "backbone.conv0.kernel: checkpoint (125, 1, 64) vs model (125, 1, 32)" in text
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name]), f"{name} changed by a failed load"


@pytest.mark.minkowski
@pytest.mark.skipif(not minkowski_available(), reason="MinkowskiEngine is not installed "
                                                      "(scripts/install_minkowskiengine.sh builds it)")
def test_v2_branch_agrees_between_backends():
    batch = small_batch(4, 512, quantization=0.05)
    torch.manual_seed(0)
    models = {b: MinkLoc3D(**V2, backend=b).double() for b in ("torch", "minkowski")}
    models["minkowski"].load_state_dict(models["torch"].state_dict())
    outs, grads = {}, {}
    for name, model in models.items():
        outs[name] = model({"coords": batch["coords"], "feats": batch["feats"].double()})["descriptor"]
        outs[name].square().sum().backward()
        grads[name] = {n: p.grad for n, p in model.named_parameters()}
    assert outs["torch"].shape == (4, 256)
    torch.testing.assert_close(outs["torch"], outs["minkowski"])
    for name in grads["torch"]:
        torch.testing.assert_close(grads["torch"][name], grads["minkowski"][name], msg=name)


def place_batch(places: int = 4, per_place: int = 2, points: int = 256, seed: int = 0) -> dict:
    """A tiny synthetic teacher batch: ``per_place`` jittered copies of one random cloud per place; positives are
    the clouds of the same place, negatives the others (as PlaceCollate builds them)."""
    g = torch.Generator().manual_seed(seed)
    clouds, labels = [], []
    for place in range(places):
        base = torch.rand(points, 3, generator=g) * 2 - 1
        for _ in range(per_place):
            clouds.append((base + 0.01 * torch.randn(points, 3, generator=g)).clamp(-1, 1))
            labels.append(place)
    coords, feats = sparse_quantize(clouds, 0.01)
    labels = torch.tensor(labels)
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(len(labels), dtype=torch.bool)
    return {"coords": coords, "feats": feats, "indices": torch.arange(len(labels)),
            "positives_mask": same & ~eye, "negatives_mask": ~same}


def test_cloud_branch_group_keeps_the_teachers_cloud_values():
    """teacher.cloud comes from configs/cloud_branch/minkloc3d.yaml with the values the run-folder hashes were
    computed from (they were inline in configs/teacher/{fusion,lidar}.yaml)."""
    from omegaconf import OmegaConf

    from crossmodal.training.testing import compose_train_teacher

    pinned = {"_target_": "crossmodal.models.minkloc3d.MinkLoc3D", "in_channels": 1, "feature_size": 128,
              "planes": [32, 64, 64], "layers": [1, 1, 1], "num_top_down": 1, "conv0_kernel_size": 5,
              "block": "ECABasicBlock", "pooling": "GridGeM", "grid_cells": 4, "grid_channels": 32, "backend": "auto"}
    for teacher in ("fusion", "lidar"):
        cfg = compose_train_teacher([f"teacher={teacher}"])
        assert OmegaConf.to_container(cfg.teacher.cloud, resolve=True) == pinned, teacher
        v2 = compose_train_teacher([f"teacher={teacher}", "cloud_branch@teacher.cloud=minkloc3dv2"]).teacher.cloud
        assert {k: v2[k] for k in V2} == {k: list(v) if isinstance(v, tuple) else v for k, v in V2.items()}


@pytest.mark.parametrize("max_chunk", [None, 3])
def test_one_training_step_of_the_v2_lidar_teacher_with_smoothap(max_chunk):
    """teacher=lidar cloud_branch@teacher.cloud=minkloc3dv2 teacher_loss=smoothap: one step (forward, loss,
    backward, optimiser step) on a tiny batch, whole or in multi-stage chunks as MinkLoc3Dv2 trains."""
    from hydra.utils import instantiate

    from crossmodal.losses import TruncatedSmoothAP
    from crossmodal.training import forward_backward
    from crossmodal.training.testing import compose_train_teacher

    cfg = compose_train_teacher(["teacher=lidar", "cloud_branch@teacher.cloud=minkloc3dv2", "teacher_loss=smoothap",
                                 "teacher.cloud.backend=torch"])
    torch.manual_seed(0)
    model = instantiate(cfg.teacher)
    loss_fn = instantiate(cfg.teacher_loss)
    assert isinstance(loss_fn.terms[0].loss, TruncatedSmoothAP) and loss_fn.outputs == ("descriptor",)
    optimizer, _ = instantiate(cfg.optimizer, _convert_="all").build(model)
    batch = place_batch()
    model.train()
    optimizer.zero_grad(set_to_none=True)
    loss, stats = forward_backward(model, batch, loss_fn, loss_fn.outputs, max_chunk=max_chunk)
    assert torch.isfinite(loss) and 0.0 <= loss.item() <= 1.0
    assert stats["num_triplets"] == 8 and stats["chunks"] == (1.0 if max_chunk is None else 3.0)
    assert all(k in stats for k in ("non_zero_fraction", "spread", "pos_neg_gap", "descriptor/ap"))
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0
    before = model.cloud.backbone.conv0.kernel.detach().clone()
    optimizer.step()
    assert not torch.equal(before, model.cloud.backbone.conv0.kernel)
