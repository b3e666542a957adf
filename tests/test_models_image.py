"""Image branches and students: shapes, parameter counts, GeM, gradient flow, local pretrained weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchvision
from hydra.utils import instantiate

from crossmodal.models.image import MobileNetV3GeM, ResNetGeM
from crossmodal.models.pooling import GeM
from crossmodal.models.students import ImageStudent, LightImageStudent

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def n_params(m):
    return sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize("backbone,channels", [("resnet18", 256), ("resnet34", 256), ("resnet50", 1024)])
def test_resnet_gem_shapes(backbone, channels):
    m = ResNetGeM(backbone, out_dim=32).eval()
    x = torch.randn(2, 3, 32, 48)
    with torch.no_grad():
        out = m(x)
        fmap = m.feature_map({"images": x})
    assert set(out) == {"descriptor"} and out["descriptor"].shape == (2, 32)
    assert fmap.shape == (2, channels, 2, 3)  # the backbone's map: layer3, stride 16
    assert m.feature_channels == channels and m.descriptor_dim == 32


def test_layers_up_to():
    m = ResNetGeM("resnet18", 16, layers_up_to="layer2")
    assert m.feature_channels == 128 and "layer3" not in dict(m.backbone.named_children())
    assert m.feature_map(torch.randn(1, 3, 64, 64)).shape == (1, 128, 8, 8)
    with pytest.raises(ValueError, match="layers_up_to"):
        ResNetGeM("resnet18", 16, layers_up_to="layer5")
    with pytest.raises(ValueError, match="backbone"):
        ResNetGeM("resnet101", 16)


def test_parameter_counts():
    student = ImageStudent()
    assert abs(n_params(student) - 2.9e6) / 2.9e6 < 0.05
    assert n_params(student) == 2_881_473  # 2,782,784 trunk + 256·384 + 384 conv + p
    assert n_params(ResNetGeM("resnet18", 256)) == 2_782_784 + 256 * 256 + 256 + 1
    assert n_params(LightImageStudent()) == 927_008 + 576 * 384 + 384 + 1
    assert n_params(ResNetGeM("resnet50", 384)) == 8_543_296 + 1024 * 384 + 384 + 1


def test_gem_matches_formula_and_learns_p():
    g = GeM(p=3.0)
    x = torch.rand(2, 5, 3, 4, dtype=torch.float64) + 0.1
    expected = (x ** 3).mean(dim=(2, 3)) ** (1 / 3)
    torch.testing.assert_close(g(x), expected.to(torch.float64))
    g2 = GeM(p=1.0)
    torch.testing.assert_close(g2(x), x.mean(dim=(2, 3)))
    assert g.p.requires_grad and not GeM(learn_p=False).p.requires_grad
    (g(x).sum()).backward()
    assert g.p.grad is not None and torch.isfinite(g.p.grad).all()
    with pytest.raises(ValueError):
        g(torch.rand(2, 5))


@pytest.mark.parametrize("model", [ImageStudent, LightImageStudent])
def test_gradients_reach_every_parameter(model):
    m = model().train()
    out = m(torch.randn(2, 3, 32, 32))["descriptor"]
    assert out.shape == (2, 384)
    out.pow(2).sum().backward()
    missing = [n for n, p in m.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert missing == []


def test_pretrained_from_a_local_file(tmp_path):
    ref = torchvision.models.resnet18(weights=None)
    path = tmp_path / "resnet18-f37072fd.pth"
    torch.save(ref.state_dict(), path)
    m = ResNetGeM("resnet18", 256, pretrained=str(path))
    own = m.backbone.state_dict()
    for k, v in own.items():
        assert torch.equal(v, ref.state_dict()[k]), k
    # old torchvision files lack num_batches_tracked: still fine
    torch.save({k: v for k, v in ref.state_dict().items() if "num_batches_tracked" not in k}, path)
    ResNetGeM("resnet18", 256, pretrained=str(path))


def test_pretrained_errors(tmp_path):
    missing = tmp_path / "nope" / "resnet18.pth"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        ResNetGeM("resnet18", 256, pretrained=str(missing))
    state = torchvision.models.resnet18(weights=None).state_dict()
    bad = tmp_path / "extra.pth"
    torch.save({**state, "head.weight": torch.zeros(3)}, bad)
    with pytest.raises(ValueError, match=r"unexpected keys \(1\): head.weight"):
        ResNetGeM("resnet18", 256, pretrained=str(bad))
    partial = tmp_path / "partial.pth"
    torch.save({k: v for k, v in state.items() if not k.startswith("layer3.1.")}, partial)
    with pytest.raises(ValueError, match=r"missing keys .*layer3\.1\.conv1\.weight"):
        ResNetGeM("resnet18", 256, pretrained=str(partial))
    other = tmp_path / "resnet34.pth"
    torch.save(torchvision.models.resnet34(weights=None).state_dict(), other)
    with pytest.raises(ValueError, match="unexpected keys"):
        ResNetGeM("resnet18", 256, pretrained=str(other))
    wrapped = tmp_path / "ckpt.pth"
    torch.save({"state_dict": state, "epoch": 3}, wrapped)
    with pytest.raises(ValueError, match="training checkpoint"):
        ResNetGeM("resnet18", 256, pretrained=str(wrapped))
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="cannot read"):
        ResNetGeM("resnet18", 256, pretrained=str(garbage))


def test_mobilenet_pretrained(tmp_path):
    ref = torchvision.models.mobilenet_v3_small(weights=None)
    path = tmp_path / "mnv3.pth"
    torch.save(ref.state_dict(), path)
    m = MobileNetV3GeM(pretrained=str(path))
    assert torch.equal(m.backbone[0][0].weight, ref.features[0][0].weight)


@pytest.mark.parametrize("name", ["image", "image_light", "resnet18"])
def test_student_configs_instantiate(name):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONFIGS), version_base=None):
        cfg = compose("distill", overrides=[f"student={name}"])
    m = instantiate(cfg.student)
    assert m.descriptor_dim == 384
    with torch.no_grad():
        assert m.eval()({"images": torch.randn(1, 3, 32, 32)})["descriptor"].shape == (1, 384)
