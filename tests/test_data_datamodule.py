"""PlaceDataModule and configs/data/default.yaml: loaders built from the config, reproducible across workers."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from crossmodal.data import PlaceDataModule, PositivePairBatchSampler
from crossmodal.data.fake import write_fake_manifest

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "data" / "default.yaml"


@pytest.fixture(scope="module")
def fake(tmp_path_factory):
    return write_fake_manifest(tmp_path_factory.mktemp("fake"))


def test_config_instantiates_without_data(tmp_path):
    dm = instantiate(OmegaConf.load(CONFIG))
    assert isinstance(dm, PlaceDataModule) and dm.batch_size == 128 and dm.image_size == (240, 320)
    cfg = OmegaConf.load(CONFIG)
    cfg.root = str(tmp_path / "missing")
    dm = instantiate(cfg)  # nothing is read yet
    with pytest.raises(Exception, match="manifest not found"):
        dm.train_loader()


def test_train_loader_from_config(fake):
    cfg = OmegaConf.load(CONFIG)
    cfg.root, cfg.batch_size, cfg.num_workers, cfg.image_size = str(fake.root), 8, 0, [24, 32]
    dm = instantiate(cfg)
    loader = dm.train_loader()
    assert isinstance(loader.batch_sampler, PositivePairBatchSampler)
    batch = next(iter(loader))
    assert batch["images"].shape == (8, 3, 24, 32)
    assert batch["positives_mask"].shape == (8, 8) and batch["negatives_mask"].shape == (8, 8)
    assert batch["coords"].shape[1] == 4 and batch["feats"].shape[1] == 1
    # augmented: differs from the clean view of the same items
    clean = dm.dataset("train", augment=False)
    assert not torch.equal(batch["images"][0], clean[int(batch["indices"][0])]["image"])


def test_reproducible_across_worker_counts_and_epochs(fake):
    def epoch_batches(workers, epoch):
        dm = PlaceDataModule(fake.root, batch_size=6, num_workers=workers, seed=5)
        loader = dm.train_loader()
        dm.set_epoch(epoch)
        return list(loader)

    a, b, c = epoch_batches(0, 1), epoch_batches(2, 1), epoch_batches(0, 2)
    assert len(a) == len(b)
    for x, y in zip(a, b):
        for key in ("indices", "images", "coords", "feats", "positives_mask"):
            assert torch.equal(x[key], y[key])
    assert [x["indices"].tolist() for x in a] != [x["indices"].tolist() for x in c]


def test_eval_loaders_are_sequential(fake):
    dm = PlaceDataModule(fake.root, modalities=["image"], eval_batch_size=5, num_workers=0)
    for split, has_masks in (("eval", False), ("val", False), ("test", True)):
        ds = dm.dataset(split)
        loader = dm.eval_loader(split)
        batches = list(loader)
        assert torch.cat([b["indices"] for b in batches]).tolist() == list(range(len(ds)))
        assert ("positives_mask" in batches[0]) == has_masks
        assert "coords" not in batches[0]
        # unaugmented
        assert torch.equal(batches[0]["images"][0], ds[0]["image"])
    assert dm.val_loader().dataset.split == "val" and dm.test_loader().dataset.split == "test"


def test_ddp_loaders_split_the_epoch(fake):
    dm = PlaceDataModule(fake.root, modalities=["image"], batch_size=4, num_workers=0)
    parts = [[list(b) for b in dm.train_loader(num_replicas=2, rank=r).batch_sampler] for r in range(2)]
    assert len(parts[0]) == len(parts[1]) > 0
    flat = [i for p in parts for b in p for i in b]
    assert len(flat) == len(set(flat))
