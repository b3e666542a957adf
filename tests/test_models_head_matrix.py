"""Every aggregation head on every image backbone (issue 12): composes from Hydra (``student=<backbone>
head@student.head=<head>``), trains one step, is saved as a student checkpoint, served by ``Localizer`` from that
checkpoint, exported to ONNX with parity, and served from the ONNX file with the same answers.

ConvNeXt-S and Swin-S (50 M parameters each) run under ``-m slow``; the other backbones in CI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf

from crossmodal.deploy import Localizer
from crossmodal.deploy.export import export_onnx, onnx_parity
from crossmodal.deploy.localizer import load_student
from crossmodal.evaluation.testing import _payload
from crossmodal.losses import BatchHardTripletLoss
from crossmodal.training.checkpoint import save_checkpoint

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
HEADS = ["gem", "netvlad", "convap", "cosplace", "mixvpr", "boq"]
BACKBONES = ["image", "image_light", "resnet18", "convnext_tiny", "swin_t"]
LARGE = ["convnext_small", "swin_s"]
SIZE = (64, 80)  # every backbone here is cut at stride 16: 4 x 5 feature maps


def _student_config(backbone: str, head: str) -> dict:
    overrides = [f"student={backbone}", "student.pretrained=null", f"head@student.head={head}"]
    if head == "mixvpr":
        overrides += [f"student.head.in_h={SIZE[0] // 16}", f"student.head.in_w={SIZE[1] // 16}"]
    with initialize_config_dir(config_dir=str(CONFIGS), version_base=None):
        cfg = compose("distill", overrides=overrides)
    return OmegaConf.to_container(cfg.student, resolve=True)


def _one_step(model) -> float:
    """One Adam step of the batch-hard triplet on 4 images from 2 places; returns the loss."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(4, 3, *SIZE, generator=gen)
    pos = torch.tensor([[0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1], [0, 0, 1, 0]], dtype=torch.bool)
    neg = ~pos & ~torch.eye(4, dtype=torch.bool)
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    model.train()
    loss = BatchHardTripletLoss(margin=0.5)(model(x)["descriptor"], pos, neg).loss
    opt.zero_grad()
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"no gradient reached {missing[:5]}"
    opt.step()
    return float(loss.detach())


def _check(backbone: str, head: str, tmp_path: Path) -> None:
    cfg = _student_config(backbone, head)
    torch.manual_seed(0)
    model = instantiate(cfg)
    assert model.descriptor_dim == 384
    if head == "netvlad":  # k-means start, as the trainer does before the first epoch
        assert model.initialise_head([torch.randn(8, 3, *SIZE)], seed=0) == 8 * 20
    assert np.isfinite(_one_step(model))
    ckpt = tmp_path / "student.pt"
    extra = {"input": {"image_size": list(SIZE)}}
    save_checkpoint(ckpt, _payload("student", model, {"student": cfg, "data": {"image_size": list(SIZE)}}, extra))

    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (*SIZE, 3), dtype=np.uint8) for _ in range(3)]
    served = Localizer.from_checkpoint(ckpt)
    served.add_database(images, np.arange(6.0).reshape(3, 2))
    assert [m[0].index for m in served.query_many(images, k=1)] == [0, 1, 2]

    frozen = load_student(ckpt)[0]
    onnx = export_onnx(frozen, tmp_path / "student.onnx", served.spec)
    diff = onnx_parity(frozen, onnx, batch=2)
    print(f"{backbone} + {head}: ONNX max abs difference {diff:.2e}")
    assert diff < 1e-4
    a, b = served.embed(images), Localizer.from_onnx(onnx, threads=1).embed(images)
    assert a.shape == b.shape == (3, 384) and np.abs(a - b).max() < 1e-4


@pytest.mark.parametrize("head", HEADS)
@pytest.mark.parametrize("backbone", BACKBONES)
def test_head_on_backbone(backbone, head, tmp_path, single_thread):
    _check(backbone, head, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("head", HEADS)
@pytest.mark.parametrize("backbone", LARGE)
def test_head_on_large_backbone(backbone, head, tmp_path, single_thread):
    _check(backbone, head, tmp_path)


def test_every_head_and_backbone_config_is_tested():
    heads = sorted(p.stem for p in (CONFIGS / "head").glob("*.yaml"))
    students = sorted(p.stem for p in (CONFIGS / "student").glob("*.yaml"))
    assert heads == sorted(HEADS)
    assert students == sorted(BACKBONES + LARGE)


def test_head_size_mismatch_is_a_clear_error():
    from functools import partial

    from crossmodal.models.heads import NetVLAD
    from crossmodal.models.image import ResNetGeM

    with pytest.raises(ValueError, match=r"NetVLAD head gives 4096-d descriptors but the branch's out_dim is 384"):
        ResNetGeM("resnet18", 384, head=partial(NetVLAD, clusters=16))
    assert ResNetGeM("resnet18", None, head=partial(NetVLAD, clusters=16)).descriptor_dim == 16 * 256


def test_checkpoints_from_before_heads_still_load():
    from crossmodal.models.image import ResNetGeM
    from crossmodal.training.checkpoint import fingerprint, upgrade_state

    model = ResNetGeM("resnet18", 32)
    old = {("conv." + k[len("head.conv."):] if k.startswith("head.conv.") else
            "pool.p" if k == "head.pool.p" else k): v.clone() for k, v in model.state_dict().items()}
    assert "conv.weight" in old and "head.conv.weight" not in old
    fresh = ResNetGeM("resnet18", 32)
    fresh.load_state_dict(old)
    assert torch.equal(fresh.head.conv.weight, model.head.conv.weight)
    assert fingerprint(upgrade_state(fresh, old)) == fingerprint(model.state_dict())


def test_trainer_initialises_netvlad_from_training_images():
    """Before a new run's first epoch the trainer starts NetVLAD from k-means of the training images' local
    features (seeded: the same centroids twice), and leaves other heads alone."""
    from functools import partial

    from crossmodal.models.heads import NetVLAD
    from crossmodal.models.image import ResNetGeM
    from crossmodal.training.trainer import initialise_heads

    class Loader(list):
        batch_size = 4

    class DataModule:
        def eval_loader(self, split, masks=None):
            assert split == "train" and masks is False
            gen = torch.Generator().manual_seed(1)
            return Loader([{"images": torch.randn(4, 3, 32, 48, generator=gen)} for _ in range(3)])

    heads = []
    for _ in range(2):
        torch.manual_seed(0)
        model = ResNetGeM("resnet18", 64, head=partial(NetVLAD, clusters=4, out_dim=64))
        before = model.head.centroids.clone()
        initialise_heads(model, DataModule(), seed=3, max_images=8)  # 2 batches of 4 images, 2x3 positions each
        assert not torch.equal(model.head.centroids, before)
        heads.append(model.head.centroids.clone())
    torch.testing.assert_close(heads[0], heads[1], rtol=0, atol=0)
    gem = ResNetGeM("resnet18", 64)
    state = {k: v.clone() for k, v in gem.state_dict().items()}
    initialise_heads(gem, DataModule(), seed=3)
    assert all(torch.equal(v, gem.state_dict()[k]) for k, v in state.items())
