"""Multi-stage backprop: chunked embedding + cached-embedding loss + per-chunk backward gives the parameter
gradients of one full-batch backward (float64, eval-mode BN so an item's output depends on that item alone)."""

from __future__ import annotations

import pytest
import torch
from hydra.utils import instantiate

from crossmodal.data.fake import write_fake_manifest
from crossmodal.training import forward_backward, split_batch
from crossmodal.training.multistage import batch_size_of
from crossmodal.training.testing import compose_train_teacher, tiny_overrides
from crossmodal.training.trainer import model_modalities


@pytest.fixture(scope="module")
def fake(tmp_path_factory):
    root = tmp_path_factory.mktemp("fake")
    write_fake_manifest(root)
    return root


def _setup(fake, teacher):
    cfg = compose_train_teacher(tiny_overrides(teacher) + [f"dataset_dir={fake}", "data.batch_size=10"])
    torch.manual_seed(0)
    model = instantiate(cfg.teacher).double()
    dm = instantiate(cfg.data, modalities=list(model_modalities(model)))
    batch = next(iter(dm.train_loader()))
    for k in ("images", "feats"):
        if k in batch:
            batch[k] = batch[k].double()
    return model, batch, instantiate(cfg.teacher_loss)


def _grads(model):
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("teacher,chunk", [("fusion", 1), ("fusion", 3), ("lidar", 4), ("image", 4)])
def test_chunked_gradients_equal_full_batch(fake, teacher, chunk):
    model, batch, loss_fn = _setup(fake, teacher)
    assert batch_size_of(batch) == 10
    model.eval()  # BN from running statistics: no batch coupling (see the BN caveat in multistage.py)
    loss_full, stats_full = forward_backward(model, batch, loss_fn, loss_fn.outputs)
    full = _grads(model)
    model.zero_grad(set_to_none=True)
    loss_chunked, stats = forward_backward(model, batch, loss_fn, loss_fn.outputs, max_chunk=chunk)
    chunked = _grads(model)
    assert stats["chunks"] == -(-10 // chunk) and stats_full["chunks"] == 1
    assert stats_full["num_triplets"] > 0 and float(loss_full) > 0
    assert torch.allclose(loss_full, loss_chunked, rtol=0, atol=1e-12)
    assert set(full) == set(chunked) and len(full) == len(list(model.parameters()))
    for name in full:
        torch.testing.assert_close(chunked[name], full[name], rtol=1e-9, atol=1e-12, msg=name)


def test_train_mode_updates_bn_running_stats_once(fake):
    model, batch, loss_fn = _setup(fake, "fusion")
    model.train()
    reference = {k: v.clone() for k, v in model.state_dict().items()}
    forward_backward(model, batch, loss_fn, loss_fn.outputs, max_chunk=5)
    after_chunked = {k: v.clone() for k, v in model.state_dict().items()}
    # the same two chunks run once each, with grad: what pass 2 alone does to the running statistics
    model.load_state_dict(reference)
    for s, e in ((0, 5), (5, 10)):
        model(split_batch(batch, s, e))
    for k, v in model.state_dict().items():
        torch.testing.assert_close(after_chunked[k], v, rtol=0, atol=0, msg=k)
    assert int(after_chunked["image.backbone.bn1.num_batches_tracked"]) == 2


def test_split_batch(fake):
    _, batch, _ = _setup(fake, "fusion")
    part = split_batch(batch, 3, 7)
    assert batch_size_of(part) == 4
    assert torch.equal(part["indices"], batch["indices"][3:7])
    assert torch.equal(part["images"], batch["images"][3:7])
    assert part["runs"] == batch["runs"][3:7]
    assert torch.equal(part["positives_mask"], batch["positives_mask"][3:7, 3:7])
    rows = (batch["coords"][:, 0] >= 3) & (batch["coords"][:, 0] < 7)
    assert torch.equal(part["coords"][:, 1:], batch["coords"][rows, 1:])
    assert torch.equal(part["coords"][:, 0], batch["coords"][rows, 0] - 3)
    assert torch.equal(part["feats"], batch["feats"][rows])
