"""PlaceCollate: batch layout, masks against a naive loop, clouds quantised for the LiDAR branch, workers."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from crossmodal.data import (
    PairedPlaceDataset,
    PlaceCollate,
    PlaceTuples,
    PositivePairBatchSampler,
)
from crossmodal.data.fake import write_fake_manifest
from crossmodal.sparse import sparse_quantize


@pytest.fixture(scope="module")
def fake(tmp_path_factory):
    return write_fake_manifest(tmp_path_factory.mktemp("fake"))


def naive_masks(tuples, idx):
    b = len(idx)
    pos = torch.zeros(b, b, dtype=torch.bool)
    neg = torch.zeros(b, b, dtype=torch.bool)
    for r in range(b):
        for c in range(b):
            if r == c or idx[r] == idx[c]:
                continue
            is_pos = idx[c] in set(tuples.positives(idx[r]).tolist())
            is_nonneg = idx[c] in set(tuples.non_negatives(idx[r]).tolist())
            pos[r, c] = is_pos
            neg[r, c] = not is_pos and not is_nonneg
    return pos, neg


def test_masks_match_a_naive_loop(fake):
    ds = PairedPlaceDataset(fake.root, "train", modalities=("image",))
    rng = np.random.default_rng(0)
    for _ in range(20):
        idx = rng.choice(len(ds), size=int(rng.integers(2, 16)), replace=True).tolist()
        pos, neg = ds.tuples.masks(idx)
        npos, nneg = naive_masks(ds.tuples, idx)
        assert torch.equal(pos, npos) and torch.equal(neg, nneg)
        assert not (pos & neg).any() and not pos.diagonal().any() and not neg.diagonal().any()
    # both kinds occur on the fake street
    pos, neg = ds.tuples.masks(np.arange(len(ds)))
    assert pos.any() and neg.any()


def test_masks_from_inconsistent_tuples():
    # a positive that is not listed as a non-negative is still never a negative
    t = PlaceTuples([np.array([1]), np.array([0]), np.array([], np.int64)],
                    [np.array([0]), np.array([1]), np.array([2])])
    pos, neg = t.masks([0, 1, 2])
    assert pos.tolist() == [[False, True, False], [True, False, False], [False, False, False]]
    assert neg.tolist() == [[False, False, True], [False, False, True], [True, True, False]]


def test_batch_layout(fake):
    ds = PairedPlaceDataset(fake.root, "train")
    collate = PlaceCollate(0.02, ds.tuples, keep_clouds=True)
    idx = [4, 0, 7, 3]
    batch = collate([ds[i] for i in idx])
    assert batch["images"].shape == (4, 3, 24, 32)
    assert batch["indices"].tolist() == idx and batch["indices"].dtype == torch.int64
    assert batch["sample_ids"].tolist() == ds.sample_ids[idx].tolist()
    assert batch["positions"].dtype == torch.float64
    np.testing.assert_array_equal(batch["positions"].numpy(), ds.positions[idx])
    assert batch["runs"] == [ds.runs[i] for i in idx]
    coords, feats = sparse_quantize([ds[i]["cloud"] for i in idx], 0.02)
    assert torch.equal(batch["coords"], coords) and torch.equal(batch["feats"], feats)
    assert batch["coords"].dtype == torch.int32 and batch["coords"][:, 0].unique().tolist() == [0, 1, 2, 3]
    assert batch["clouds"].shape == (4, 4096, 3)
    pos, neg = naive_masks(ds.tuples, idx)
    assert torch.equal(batch["positives_mask"], pos) and torch.equal(batch["negatives_mask"], neg)
    no_masks = PlaceCollate()([ds[i] for i in idx])
    assert "positives_mask" not in no_masks and "clouds" not in no_masks
    img_only = PlaceCollate(tuples=ds.tuples)([{k: v for k, v in ds[i].items() if k != "cloud"} for i in idx])
    assert "coords" not in img_only and "images" in img_only
    with pytest.raises(ValueError):
        PlaceCollate(0.0)


def test_runs_in_worker_processes(fake):
    ds = PairedPlaceDataset(fake.root, "train")
    collate = PlaceCollate(0.01, ds.tuples)
    pickle.loads(pickle.dumps(collate))
    sampler = PositivePairBatchSampler(ds.tuples, 8, seed=0)
    in_workers = list(DataLoader(ds, batch_sampler=sampler, collate_fn=collate, num_workers=2))
    in_main = list(DataLoader(ds, batch_sampler=sampler, collate_fn=collate, num_workers=0))
    assert len(in_workers) == len(in_main) == len(sampler)
    for a, b in zip(in_workers, in_main):
        for key in ("coords", "feats", "images", "positives_mask", "negatives_mask", "indices"):
            assert torch.equal(a[key], b[key])
        # every anchor has its pair partner as a positive
        assert a["positives_mask"][torch.arange(0, len(a["indices"]), 2), torch.arange(1, len(a["indices"]), 2)].all()
