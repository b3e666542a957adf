"""Teachers composed from branches via Hydra configs: output dicts, shapes, row alignment, gradient flow."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate

from crossmodal.data import PairedPlaceDataset, PlaceCollate, image_eval_transform
from crossmodal.data.fake import write_fake_manifest
from crossmodal.models.image import ResNetGeM
from crossmodal.models.minkloc3d import MinkLoc3D
from crossmodal.models.teachers import FusionTeacher, ImageTeacher, LidarTeacher

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.fixture(scope="module")
def batches(tmp_path_factory):
    fake = write_fake_manifest(tmp_path_factory.mktemp("fake"), runs=1, train_per_run=4, eval_per_run=0)
    ds = PairedPlaceDataset(fake.root, "train", image_transform=image_eval_transform((32, 48)))
    collate = PlaceCollate(0.01)
    items = [ds[i] for i in range(2)]
    return collate(items), collate(items[::-1])


def teacher_config(name: str, overrides: tuple[str, ...] = ()):
    """The teacher node as the entry points compose it (group defaults such as the image branch included)."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(str(CONFIGS), version_base="1.3"):
        return compose("train_teacher", [f"teacher={name}", *overrides]).teacher


@pytest.mark.parametrize("name,cls,dim", [("fusion", FusionTeacher, 384), ("lidar", LidarTeacher, 128),
                                          ("image", ImageTeacher, 256), ("image_large", ImageTeacher, 384)])
def test_teacher_configs_instantiate(name, cls, dim):
    m = instantiate(teacher_config(name))
    assert type(m) is cls and m.descriptor_dim == dim


def test_default_teacher_starts_from_imagenet_weights():
    from crossmodal.models.image import EfficientNetLiteGeM
    from crossmodal.models.pretrained import resolve_weights

    m = instantiate(teacher_config("fusion"))
    assert isinstance(m.image, EfficientNetLiteGeM) and m.fusion == "concat_l2"
    state, _ = resolve_weights("efficientnet_lite0", "package")
    torch.testing.assert_close(m.image.backbone._conv_stem.weight, state["_conv_stem.weight"])


@pytest.mark.parametrize("fusion", ["concat", "concat_l2"])
def test_fusion_teacher_outputs_and_gradients(batches, fusion):
    torch.manual_seed(0)
    m = instantiate(teacher_config("fusion", ("image_branch@teacher.image=resnet18", f"teacher.fusion={fusion}",
                                              "teacher.cloud.pooling=GeM")))
    assert isinstance(m.cloud, MinkLoc3D) and isinstance(m.image, ResNetGeM)
    assert sum(p.numel() for p in m.image.parameters()) == 2_848_577
    batch, swapped = batches
    m.train()
    out = m(batch)
    assert set(out) == {"descriptor", "cloud", "image"}
    assert out["descriptor"].shape == (2, 384) and out["cloud"].shape == (2, 128) and out["image"].shape == (2, 256)
    if fusion == "concat":  # MinkLoc++: the raw halves side by side
        torch.testing.assert_close(out["descriptor"], torch.cat([out["cloud"], out["image"]], dim=1))
    else:  # each half L2-normalised first; the branch outputs stay raw
        unit = torch.nn.functional.normalize
        torch.testing.assert_close(out["descriptor"], torch.cat([unit(out["cloud"], dim=1),
                                                                 unit(out["image"], dim=1)], dim=1))
        torch.testing.assert_close(out["descriptor"][:, :128].norm(dim=1), torch.ones(2))
    out["descriptor"].pow(2).sum().backward()
    missing = [n for n, p in m.named_parameters() if p.grad is None]
    assert missing == []
    assert m.cloud.pooling.p.grad is not None and m.image.head.pool.p.grad is not None
    # rows stay aligned with the batch order in both branches (eval mode: per-sample outputs)
    m.eval()
    with torch.no_grad():
        a, b = m(batch)["descriptor"], m(swapped)["descriptor"]
    torch.testing.assert_close(a, b.flip(0), rtol=1e-4, atol=1e-5)


def test_lidar_and_image_teachers(batches):
    batch, _ = batches
    lidar = LidarTeacher(MinkLoc3D(feature_size=64))
    out = lidar(batch)
    assert set(out) == {"descriptor", "cloud"} and out["descriptor"].shape == (2, 64) and lidar.descriptor_dim == 64
    image = ImageTeacher(ResNetGeM("resnet18", 48))
    out = image(batch)
    assert set(out) == {"descriptor", "image"} and out["descriptor"].shape == (2, 48)
    out["descriptor"].sum().backward()
    assert all(p.grad is not None for p in image.parameters())
    with pytest.raises(ValueError, match="fusion"):
        FusionTeacher(MinkLoc3D(), ResNetGeM(), fusion="add")
