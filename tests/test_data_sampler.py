"""PositivePairBatchSampler: batches of mutual-positive pairs, no repeats, seeded, batch expansion, DDP."""

from __future__ import annotations

import numpy as np
import pytest
from torch.utils.data import DataLoader

from crossmodal.data import PairedPlaceDataset, PlaceTuples, PositivePairBatchSampler
from crossmodal.data.fake import write_fake_manifest


def line_tuples(n=200, radius=2):
    """Items on a line; positives within ``radius`` steps (self excluded)."""
    pos = [np.array([j for j in range(max(0, i - radius), min(n, i + radius + 1)) if j != i]) for i in range(n)]
    nn = [np.arange(max(0, i - 3 * radius), min(n, i + 3 * radius + 1)) for i in range(n)]
    return PlaceTuples(pos, nn)


def check_epoch(sampler, tuples):
    batches = list(sampler)
    seen = [i for b in batches for i in b]
    assert len(seen) == len(set(seen)), "an element appears twice in an epoch"
    for b in batches:
        assert len(b) % 2 == 0 and len(b) <= sampler.batch_size
        for a, p in zip(b[0::2], b[1::2]):
            assert p in tuples.positives(a) and a in tuples.positives(p)
    return batches


def test_batches_are_pairs_of_mutual_positives():
    t = line_tuples()
    s = PositivePairBatchSampler(t, 16, seed=0)
    batches = check_epoch(s, t)
    assert len(batches) == len(s) > 5
    assert all(len(b) == 16 for b in batches[:-1])
    assert sum(len(b) for b in batches) > 0.8 * len(t)


def test_asymmetric_positives_are_not_paired():
    pos = [np.array([1]), np.array([], dtype=np.int64), np.array([3]), np.array([2])]
    t = PlaceTuples(pos, [np.arange(4)] * 4)
    for seed in range(10):
        pairs = PositivePairBatchSampler(t, 4, seed=seed, min_pairs=1).pairs()
        assert pairs in ([(2, 3)], [(3, 2)])


def test_seeded_and_epoch_dependent():
    t = line_tuples()
    a, b = PositivePairBatchSampler(t, 16, seed=1), PositivePairBatchSampler(t, 16, seed=1)
    assert list(a) == list(b)
    c = PositivePairBatchSampler(t, 16, seed=2)
    assert list(a) != list(c)
    first = list(a)
    a.set_epoch(1)
    assert list(a) != first
    check_epoch(a, t)
    a.set_epoch(0)
    assert list(a) == first


def test_batch_expansion_and_last_batch():
    t = line_tuples()
    s = PositivePairBatchSampler(t, 8)
    n8 = len(s)
    s.set_batch_size(32)
    assert s.batch_size == 32 and len(s) < n8
    check_epoch(s, t)
    assert s.expand_batch(1.4) == 44 and s.expand_batch(1.4, limit=50) == 50
    check_epoch(s, t)
    with pytest.raises(ValueError, match="even"):
        s.set_batch_size(7)
    with pytest.raises(ValueError, match="at least 4"):  # one pair of positives forms no triplet
        s.set_batch_size(2)
    with pytest.raises(ValueError, match="at least 4"):
        PositivePairBatchSampler(t, 2)
    pairs = len(s.pairs())
    for drop_last in (False, True):
        s2 = PositivePairBatchSampler(t, 2 * (pairs - 1), drop_last=drop_last, min_pairs=1)
        assert len(s2) == (1 if drop_last else 2)


def test_ddp_partition_disjoint_and_equal():
    t = line_tuples(203)
    full = PositivePairBatchSampler(t, 8, seed=4).global_batches()
    ranks = [PositivePairBatchSampler(t, 8, seed=4, num_replicas=3, rank=r) for r in range(3)]
    parts = [list(r) for r in ranks]
    assert len({len(p) for p in parts}) == 1 and len(parts[0]) == len(full) // 3
    flat = [i for p in parts for b in p for i in b]
    assert len(flat) == len(set(flat))
    assert sorted(map(tuple, (b for p in parts for b in p))) == sorted(map(tuple, full[:3 * len(parts[0])]))
    with pytest.raises(ValueError, match="rank"):
        PositivePairBatchSampler(t, 8, num_replicas=2, rank=2)


def test_with_a_dataset_and_dataloader(tmp_path):
    fake = write_fake_manifest(tmp_path)
    ds = PairedPlaceDataset(fake.root, "train", modalities=("image",))
    s = PositivePairBatchSampler(ds, 6, seed=0)
    check_epoch(s, ds.tuples)
    loader = DataLoader(ds, batch_sampler=s, num_workers=0)
    batches = list(loader)
    assert len(batches) == len(s)
    assert [b["index"].tolist() for b in batches] == list(s)
