"""Per-branch learning rates (parameter groups by name prefix), optimiser and schedule from the config, and the
teacher loss terms."""

from __future__ import annotations

import pytest
import torch
from hydra.utils import instantiate
from torch import nn

from crossmodal.losses import BatchHardTripletLoss, TruncatedSmoothAP
from crossmodal.training import OptimizerConfig, TeacherLoss, group_lrs, param_groups
from crossmodal.training.testing import compose_train_teacher, tiny_overrides


class Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.image = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
        self.cloud = nn.Linear(3, 2)
        self.head = nn.Linear(2, 2)
        self.frozen = nn.Linear(2, 2)
        self.frozen.requires_grad_(False)


def test_groups_by_prefix_and_default():
    m = Toy()
    groups = param_groups(m.named_parameters(), {"image": 1e-4, "cloud": 1e-3}, lr=5e-3)
    by = {g["name"]: g for g in groups}
    assert [g["name"] for g in groups] == ["image", "cloud", "default"]
    assert by["image"]["lr"] == 1e-4 and by["cloud"]["lr"] == 1e-3 and by["default"]["lr"] == 5e-3
    assert sorted(by["image"]["param_names"]) == ["image.0.bias", "image.0.weight", "image.1.bias", "image.1.weight"]
    assert sorted(by["default"]["param_names"]) == ["head.bias", "head.weight"]  # frozen ones left out


def test_longest_prefix_wins_and_prefix_is_a_whole_name_component():
    m = Toy()
    m.imagery = nn.Linear(1, 1)  # "image" must not match "imagery"
    groups = {g["name"]: g for g in param_groups(m.named_parameters(), {"image": 1e-4, "image.1": 7e-4}, lr=1.0)}
    assert sorted(groups["image.1"]["param_names"]) == ["image.1.bias", "image.1.weight"]
    assert sorted(groups["image"]["param_names"]) == ["image.0.bias", "image.0.weight"]
    assert "imagery.weight" in groups["default"]["param_names"]


def test_unmatched_without_default_lr_is_an_error():
    with pytest.raises(ValueError, match="head.weight"):
        param_groups(Toy().named_parameters(), {"image": 1e-4, "cloud": 1e-3}, lr=None)


def test_optimizer_and_schedule_from_config():
    cfg = compose_train_teacher(tiny_overrides("fusion"))
    model = instantiate(cfg.teacher)
    opt_cfg = instantiate(cfg.optimizer, _convert_="all")
    assert isinstance(opt_cfg, OptimizerConfig)
    opt, sched = opt_cfg.build(model)
    assert isinstance(opt, torch.optim.Adam)
    assert group_lrs(opt) == {"lr_image": 1e-4, "lr_cloud": 1e-3}
    assert all(g["weight_decay"] == 1e-4 for g in opt.param_groups)
    names = {n for g in opt_cfg.groups(model) for n in g["param_names"]}
    assert names == {n for n, _ in model.named_parameters()}
    cloud = {id(p) for n, p in model.named_parameters() if n.startswith("cloud.")}
    assert {id(p) for p in opt.param_groups[1]["params"]} == cloud
    for _ in range(40):
        opt.step()
        sched.step()
    assert group_lrs(opt) == pytest.approx({"lr_image": 1e-5, "lr_cloud": 1e-4})


def test_image_teacher_has_only_the_image_group():
    cfg = compose_train_teacher(tiny_overrides("image"))
    opt, _ = instantiate(cfg.optimizer, _convert_="all").build(instantiate(cfg.teacher))
    assert list(group_lrs(opt)) == ["lr_image"]


def test_loss_per_teacher_from_config():
    fusion = instantiate(compose_train_teacher(tiny_overrides("fusion")).teacher_loss)
    assert [(t.output, t.weight) for t in fusion.terms] == [("descriptor", 0.5), ("cloud", 0.5)]
    for teacher in ("lidar", "image", "image_large"):
        loss = instantiate(compose_train_teacher(tiny_overrides(teacher)).teacher_loss)
        assert [(t.output, t.weight) for t in loss.terms] == [("descriptor", 1.0)]
        assert loss.triplet.margin == 0.2 and loss.triplet.swap


def test_teacher_loss_is_the_weighted_sum():
    out, pos, neg = pair_batch()
    loss_fn = TeacherLoss([{"output": "descriptor", "weight": 0.5}, {"output": "cloud", "weight": 0.5}])
    loss, stats = loss_fn(out, pos, neg)
    d = loss_fn.triplet(out["descriptor"], pos, neg).loss.detach()
    c = loss_fn.triplet(out["cloud"], pos, neg).loss.detach()
    assert loss.item() == pytest.approx((0.5 * d + 0.5 * c).item())
    assert stats["non_zero_fraction"] == stats["descriptor/non_zero_fraction"]
    with pytest.raises(KeyError, match="cloud"):
        loss_fn({"descriptor": out["descriptor"]}, pos, neg)


def pair_batch():
    torch.manual_seed(0)
    out = {"descriptor": torch.randn(6, 5, requires_grad=True), "cloud": torch.randn(6, 3, requires_grad=True)}
    pos = torch.zeros(6, 6, dtype=torch.bool)
    for a, b in ((0, 1), (2, 3), (4, 5)):
        pos[a, b] = pos[b, a] = True
    return out, pos, ~pos & ~torch.eye(6, dtype=torch.bool)


def test_triplet_only_terms_keep_their_repr():
    loss_fn = TeacherLoss([{"output": "descriptor", "weight": 0.5}, {"output": "cloud", "weight": 0.5}],
                          expansion_term="descriptor")
    assert loss_fn.extra_repr() == "0.5·triplet(descriptor) + 0.5·triplet(cloud), expansion_term='descriptor'"
    assert [name for name, _ in loss_fn.named_children()] == ["triplet"]
    assert all(t.loss is None for t in loss_fn.terms)


@pytest.mark.parametrize("form", ["mapping", "object", "dictconfig"])
def test_a_term_with_its_own_smoothap_loss(form):
    from omegaconf import OmegaConf

    spec = {"_target_": "crossmodal.losses.TruncatedSmoothAP", "tau1": 0.1, "positives_per_query": 2}
    own = {"mapping": spec, "object": TruncatedSmoothAP(tau1=0.1, positives_per_query=2), "dictconfig": spec}[form]
    terms = [{"output": "descriptor", "weight": 0.5}, {"output": "cloud", "weight": 0.5, "loss": own}]
    if form == "dictconfig":
        terms = OmegaConf.create(terms)
    loss_fn = TeacherLoss(terms, expansion_term="cloud")
    assert isinstance(loss_fn.terms[1].loss, TruncatedSmoothAP) and loss_fn.terms[0].loss is None
    assert loss_fn.extra_repr() == "0.5·triplet(descriptor) + 0.5·TruncatedSmoothAP(cloud), expansion_term='cloud'"
    out, pos, neg = pair_batch()
    loss, stats = loss_fn(out, pos, neg)
    d = BatchHardTripletLoss()(out["descriptor"], pos, neg).loss.detach()
    c = TruncatedSmoothAP(tau1=0.1, positives_per_query=2)(out["cloud"], pos, neg)
    assert loss.item() == pytest.approx((0.5 * d + 0.5 * c.loss.detach()).item())
    assert stats["cloud/ap"] == pytest.approx(c.floats()["ap"]) and "descriptor/mean_pos_dist" in stats
    for k in ("num_triplets", "num_non_zero_triplets", "non_zero_fraction", "spread", "pos_neg_gap"):
        assert stats[k] == stats[f"cloud/{k}"], k  # the expansion term's
    assert stats["num_triplets"] == 6  # every item has one positive
    loss.backward()
    assert out["cloud"].grad.abs().sum() > 0 and out["descriptor"].grad.abs().sum() > 0


def test_smoothap_teacher_loss_configs():
    lidar = instantiate(compose_train_teacher(["teacher=lidar", "teacher_loss=smoothap"]).teacher_loss)
    assert lidar.extra_repr() == "1·TruncatedSmoothAP(descriptor), expansion_term='descriptor'"
    tsap = lidar.terms[0].loss
    assert (tsap.tau1, tsap.similarity, tsap.positives_per_query) == (0.01, "euclidean", 4)
    fusion = instantiate(compose_train_teacher(["teacher=fusion", "teacher_loss=fusion_smoothap"]).teacher_loss)
    assert fusion.extra_repr() == ("0.5·triplet(descriptor) + 0.5·TruncatedSmoothAP(cloud), "
                                   "expansion_term='descriptor'")
    out, pos, neg = pair_batch()
    loss, stats = fusion(out, pos, neg)
    assert torch.isfinite(loss) and stats["non_zero_fraction"] == stats["descriptor/non_zero_fraction"]


def test_bad_term_losses_are_refused():
    with pytest.raises(ValueError, match="unknown key"):
        TeacherLoss([{"output": "descriptor", "margin": 0.3}])
    with pytest.raises(ValueError, match="_target_"):
        TeacherLoss([{"output": "descriptor", "loss": {"tau1": 0.01}}])
    with pytest.raises(ValueError, match="callable"):
        TeacherLoss([{"output": "descriptor", "loss": 3}])

    class NoStats(nn.Module):
        def forward(self, e, pos, neg):
            return TruncatedSmoothAP()(e, pos, neg)._replace(stats={})

    out, pos, neg = pair_batch()
    with pytest.raises(KeyError, match="reports no 'num_triplets'"):
        TeacherLoss([{"output": "descriptor", "loss": NoStats()}])(out, pos, neg)
