"""Validation / evaluation sets matched to dataset rows, and recall from embeddings."""

from __future__ import annotations

import numpy as np
import pytest

from crossmodal.data import PairedPlaceDataset
from crossmodal.data.fake import write_fake_manifest
from crossmodal.training.testing import write_eval_pickles
from crossmodal.training.validation import load_eval_sets, recall_from_embeddings


@pytest.fixture(scope="module")
def fake(tmp_path_factory):
    root = tmp_path_factory.mktemp("fake")
    fm = write_fake_manifest(root, runs=3, train_per_run=20, eval_per_run=6)
    write_eval_pickles(root)
    return fm


@pytest.mark.parametrize("split", ["val", "eval"])
def test_sets_match_rows_and_positions_give_full_recall(fake, split):
    ds = PairedPlaceDataset(fake.root, split)
    sets = load_eval_sets(ds, split)
    assert sets.missing == {"database": 0, "query": 0}
    assert len(sets.database_rows) == 3 and sum(len(r) for r in sets.database_rows) == len(ds)
    for rows in sets.database_rows:  # one run per database, in the run's row order
        assert len({ds.runs[r] for r in rows}) == 1
    if split == "val":
        assert sets.num_queries == len(ds)
    else:
        assert sets.num_queries == int(ds.rows["is_query"].sum())
    res = recall_from_embeddings(ds.positions.astype(np.float32) - ds.positions.mean(0), sets)
    assert res.recall_at[0] == pytest.approx(100.0)
    rng = np.random.default_rng(0)
    shuffled = recall_from_embeddings(rng.normal(size=(len(ds), 8)).astype(np.float32), sets)
    assert shuffled.recall_at[0] < 100.0


def test_dropped_rows_leave_the_sets(tmp_path):
    table = write_fake_manifest(tmp_path / "clean", runs=3, train_per_run=20).table
    val = table[(table["split"] == "val") & (table["run"] == table["run"].iloc[0])]
    gone = int(val["sample_id"].iloc[1])
    write_fake_manifest(tmp_path / "damaged", runs=3, train_per_run=20, absent_image=[gone])
    write_eval_pickles(tmp_path / "damaged")
    ds = PairedPlaceDataset(tmp_path / "damaged", "val")
    assert ds.skipped == {"image_missing": 1}
    sets = load_eval_sets(ds, "val")
    assert sets.missing == {"database": 1, "query": 1}
    assert sets.num_queries == len(ds)
    for truth in sets.query_sets:
        for entry in truth.values():
            for m, idx in entry.items():
                assert all(0 <= i < len(sets.database_rows[m]) for i in idx)
    res = recall_from_embeddings(ds.positions.astype(np.float32) - ds.positions.mean(0), sets)
    assert res.recall_at[0] == pytest.approx(100.0)
