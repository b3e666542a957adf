"""Checkpoints: atomic round trip with the recorded fields, and clear errors for another architecture, another
state-dict layout or (on resume) another config."""

from __future__ import annotations

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

import crossmodal
from crossmodal.training import (
    CheckpointMismatchError,
    check_compatible,
    fingerprint,
    load_checkpoint,
)
from crossmodal.training.checkpoint import (
    FORMAT,
    class_name,
    config_differences,
    save_checkpoint,
)
from crossmodal.training.testing import compose_train_teacher, tiny_overrides


def _model(teacher="fusion", extra=()):
    cfg = compose_train_teacher(tiny_overrides(teacher) + list(extra))
    torch.manual_seed(0)
    return cfg, instantiate(cfg.teacher)


def _payload(cfg, model):
    return {"format": FORMAT, "version": crossmodal.__version__, "model_class": class_name(model),
            "fingerprint": fingerprint(model.state_dict()), "config": OmegaConf.to_container(cfg, resolve=True),
            "epoch": 3, "model": model.state_dict(), "metrics": {"val_r1": 50.0}}


def test_round_trip(tmp_path):
    cfg, model = _model()
    path = tmp_path / "sub" / "last.pt"
    save_checkpoint(path, _payload(cfg, model))
    assert not list(path.parent.glob(".*.tmp"))
    ckpt = load_checkpoint(path)
    assert ckpt["version"] == crossmodal.__version__ and ckpt["epoch"] == 3
    assert ckpt["model_class"] == "crossmodal.models.teachers.FusionTeacher"
    assert ckpt["config"]["teacher"]["_target_"] == "crossmodal.models.teachers.FusionTeacher"
    _, other = _model()
    with torch.no_grad():
        for p in other.parameters():
            p.add_(1.0)
    check_compatible(ckpt, other, ckpt["config"])
    other.load_state_dict(ckpt["model"])
    for k, v in model.state_dict().items():
        assert torch.equal(other.state_dict()[k], v)


def test_fingerprint_depends_on_layout_only():
    _, a = _model()
    _, b = _model()
    with torch.no_grad():
        next(b.parameters()).add_(1.0)
    assert fingerprint(a.state_dict()) == fingerprint(b.state_dict())
    _, c = _model(extra=["teacher.image.out_dim=128"])
    assert fingerprint(a.state_dict()) != fingerprint(c.state_dict())


def test_other_architecture_is_refused(tmp_path):
    cfg, fusion = _model("fusion")
    save_checkpoint(tmp_path / "f.pt", _payload(cfg, fusion))
    _, lidar = _model("lidar")
    with pytest.raises(CheckpointMismatchError, match="model class: checkpoint crossmodal.models.teachers.FusionTeacher "
                                                      "vs model crossmodal.models.teachers.LidarTeacher"):
        check_compatible(load_checkpoint(tmp_path / "f.pt"), lidar)


def test_other_layout_names_the_keys(tmp_path):
    cfg, fusion = _model("fusion")
    save_checkpoint(tmp_path / "f.pt", _payload(cfg, fusion))
    _, wider = _model("fusion", ["teacher.image.out_dim=128"])
    with pytest.raises(CheckpointMismatchError) as err:
        check_compatible(load_checkpoint(tmp_path / "f.pt"), wider)
    msg = str(err.value)
    assert "fingerprint" in msg and "image.head.conv.weight: checkpoint (256, 256, 1, 1)" in msg
    assert "vs model (128, 256, 1, 1)" in msg


def test_other_config_is_refused_on_resume(tmp_path):
    cfg, model = _model("fusion")
    save_checkpoint(tmp_path / "f.pt", _payload(cfg, model))
    new = OmegaConf.to_container(compose_train_teacher(tiny_overrides("fusion") + ["optimizer.gamma=0.5",
                                                                                   "trainer.max_epochs=3",
                                                                                   "data.num_workers=2"]),
                                 resolve=True)
    with pytest.raises(CheckpointMismatchError, match=r"optimizer.gamma: 0.1 -> 0.5") as err:
        check_compatible(load_checkpoint(tmp_path / "f.pt"), model, new)
    assert "max_epochs" not in str(err.value) and "num_workers" not in str(err.value)


def test_config_differences():
    assert config_differences({"a": {"b": 1, "c": 2}, "d": 1}, {"a": {"b": 1, "c": 3}, "e": 1}, ["d"]) == [
        "a.c: 2 -> 3", "e: '<absent>' -> 1"]


def test_not_a_checkpoint(tmp_path):
    torch.save({"state_dict": {}}, tmp_path / "x.pt")
    with pytest.raises(CheckpointMismatchError, match="not a crossmodal checkpoint"):
        load_checkpoint(tmp_path / "x.pt")
    (tmp_path / "y.pt").write_bytes(b"garbage")
    with pytest.raises(CheckpointMismatchError, match="cannot read"):
        load_checkpoint(tmp_path / "y.pt")
