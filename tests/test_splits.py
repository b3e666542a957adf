"""Test squares, training tuples, evaluation sets, training/val/test assignment and run selection."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from preprocessing.errors import InputError
from preprocessing.robotcar import constants as C
from preprocessing.splits import (
    SplitConfig,
    assign_training_splits,
    evaluation_sets,
    in_test_squares,
    select_runs,
    training_tuples,
)

P1 = C.TEST_SQUARES[0]


# ------------------------------------------------------------------------------------------------------------
# test squares

def test_in_test_squares_strict_boundaries_exact_arithmetic():
    squares = [(1000.0, 2000.0), (5000.0, 5000.0)]
    cases = [
        ((1000.0, 2000.0), True),
        ((1150.0, 2000.0), False),  # exactly 150 m north: outside (strict)
        ((850.0, 2000.0), False),
        ((1000.0, 2150.0), False),
        ((1000.0, 1850.0), False),
        ((1149.999, 2149.999), True),
        ((850.001, 1850.001), True),
        ((1149.999, 2150.0), False),
        ((1200.0, 2000.0), False),
        ((5100.0, 4900.0), True),  # second square
        ((3000.0, 3000.0), False),
    ]
    got = in_test_squares([c[0][0] for c in cases], [c[0][1] for c in cases], squares, 150.0)
    assert got.tolist() == [c[1] for c in cases]


def test_in_test_squares_published_squares():
    n0, e0 = P1
    north = [n0, n0 + 149.0, n0 - 149.0, n0 + 151.0, n0, n0 + 149.0, n0 - 151.0]
    east = [e0, e0 + 149.0, e0 - 149.0, e0, e0 + 151.0, e0 - 151.0, e0]
    got = in_test_squares(north, east, C.TEST_SQUARES, C.TEST_SQUARE_HALF_WIDTH)
    assert got.tolist() == [True, True, True, False, False, False, False]
    centres = np.array(C.TEST_SQUARES)
    assert in_test_squares(centres[:, 0], centres[:, 1], C.TEST_SQUARES, 150.0).all()
    # naive reference on random points around the squares
    rng = np.random.default_rng(0)
    pts = centres[rng.integers(0, 4, 2000)] + rng.uniform(-400, 400, (2000, 2))
    ref = [any(abs(n - pn) < 150 and abs(e - pe) < 150 for pn, pe in C.TEST_SQUARES) for n, e in pts.tolist()]
    assert in_test_squares(pts[:, 0], pts[:, 1], C.TEST_SQUARES, 150.0).tolist() == ref
    assert 200 < sum(ref) < 1800


# ------------------------------------------------------------------------------------------------------------
# training tuples

def test_training_tuples_vs_brute_force():
    rng = np.random.default_rng(1)
    # integer coordinates: many pairs exactly 10 m (6-8-10, 0-10) and 50 m (30-40-50, 14-48-50) apart
    pos = rng.integers(0, 70, (300, 2)).astype(float)
    pos[:4] = [[0, 0], [6, 8], [30, 40], [0, 10]]
    positives, non_negatives = training_tuples(pos, SplitConfig())
    assert len(positives) == len(non_negatives) == len(pos)
    pl = pos.tolist()
    n_exact = 0
    for i in range(len(pl)):
        d = [math.dist(pl[i], pl[j]) for j in range(len(pl))]
        ref_pos = [j for j in range(len(pl)) if j != i and d[j] <= 10.0]
        ref_nn = [j for j in range(len(pl)) if d[j] <= 50.0]
        assert positives[i].dtype == np.int64 and non_negatives[i].dtype == np.int64
        assert positives[i].tolist() == ref_pos
        assert non_negatives[i].tolist() == ref_nn
        n_exact += sum(1 for x in d if x in (10.0, 50.0))
    assert n_exact > 100  # boundary cases were exercised
    assert 1 in positives[0].tolist() and 3 in positives[0].tolist()  # exactly 10 m: inclusive
    assert 2 in non_negatives[0].tolist() and 0 in non_negatives[0].tolist()  # 50 m inclusive, self included
    assert 0 not in positives[0].tolist()


def test_training_tuples_custom_radii_and_duplicates():
    pos = np.array([[0.0, 0.0], [0.0, 0.0], [3.0, 4.0], [100.0, 100.0]])
    positives, nn = training_tuples(pos, SplitConfig(positive_radius_m=5.0, non_negative_radius_m=6.0))
    assert [p.tolist() for p in positives] == [[1, 2], [0, 2], [0, 1], []]
    assert [p.tolist() for p in nn] == [[0, 1, 2], [0, 1, 2], [0, 1, 2], [3]]


# ------------------------------------------------------------------------------------------------------------
# evaluation sets

def _locations(rng, runs, n_per_run, spread=80.0):
    rows = []
    for ri, r in enumerate(runs):
        n = n_per_run if isinstance(n_per_run, int) else n_per_run[r]
        for k in range(n):
            rows.append((r, 1_400_000_000_000_000 + 10**9 * ri + 1000 * k, float(rng.uniform(0, spread)),
                         float(rng.uniform(0, spread))))
    return pd.DataFrame(rows, columns=["run", "timestamp", "northing", "easting"])


def test_evaluation_sets_vs_brute_force():
    rng = np.random.default_rng(2)
    runs = ["2014-05-19-13-20-57", "2014-06-24-14-47-45", "2015-02-03-08-45-10"]
    loc = _locations(rng, runs, {runs[0]: 40, runs[1]: 25, runs[2]: 33})
    loc = loc.iloc[rng.permutation(len(loc))].reset_index(drop=True)  # order must not matter beyond run order
    loc = loc.sort_values("run", kind="stable").reset_index(drop=True)
    mask = rng.random(len(loc)) < 0.5

    def rel(run, t):
        return f"oxford/{run}/pointcloud_20m/{t}.bin"

    ev = evaluation_sets(loc, rel, mask, 25.0)
    assert ev.runs == runs
    assert len(ev.database) == len(ev.query) == 3
    recs = loc.to_dict("records")
    db_rows = {r: [x for x in recs if x["run"] == r] for r in runs}
    for ri, r in enumerate(runs):
        db = ev.database[ri]
        assert sorted(db) == list(range(len(db_rows[r])))
        for k, x in enumerate(db_rows[r]):
            assert db[k] == {"query": rel(r, x["timestamp"]), "northing": x["northing"], "easting": x["easting"]}
        q_rows = [x for x, m in zip(recs, mask) if m and x["run"] == r]
        q = ev.query[ri]
        assert sorted(q) == list(range(len(q_rows)))
        for k, x in enumerate(q_rows):
            entry = q[k]
            assert entry["query"] == rel(r, x["timestamp"])
            assert entry["northing"] == x["northing"] and entry["easting"] == x["easting"]
            assert ri not in entry
            assert set(entry) == {"query", "northing", "easting"} | {m for m in range(3) if m != ri}
            for m, other in enumerate(runs):
                if m == ri:
                    continue
                ref = [j for j, y in enumerate(db_rows[other])
                       if math.dist((x["northing"], x["easting"]), (y["northing"], y["easting"])) <= 25.0]
                assert entry[m] == ref
                assert all(type(j) is int for j in entry[m])


def test_evaluation_sets_types_and_empty_query():
    loc = pd.DataFrame({"run": ["a", "a", "b"], "timestamp": np.array([1, 2, 3], np.int64),
                        "northing": [0.0, 30.0, 25.0], "easting": [0.0, 0.0, 0.0]})
    ev = evaluation_sets(loc, lambda r, t: f"{r}/{t}", np.array([True, False, True]), 25.0)
    assert ev.query[0] == {0: {"query": "a/1", "northing": 0.0, "easting": 0.0, 1: [0]}}  # exactly 25 m: inclusive
    assert ev.query[1] == {0: {"query": "b/3", "northing": 25.0, "easting": 0.0, 0: [0, 1]}}
    assert type(ev.database[0][0]["northing"]) is float
    ev2 = evaluation_sets(loc, lambda r, t: f"{r}/{t}", np.zeros(3, bool), 25.0)
    assert ev2.query == [{}, {}]
    assert len(ev2.database[0]) == 2 and len(ev2.database[1]) == 1


# ------------------------------------------------------------------------------------------------------------
# training / val / test assignment

def _split_locations(rng, runs, n_per_run=150):
    """Locations around test square P1: some inside, most outside."""
    rows = []
    for ri, r in enumerate(runs):
        for k in range(n_per_run):
            rows.append((r, 1_400_000_000_000_000 + ri * 10**9 + k * 10**6, P1[0] + float(rng.uniform(-600, 600)),
                         P1[1] + float(rng.uniform(-600, 600))))
    return pd.DataFrame(rows, columns=["run", "timestamp", "northing", "easting"])


def test_assign_training_splits_properties():
    rng = np.random.default_rng(3)
    runs = [f"2014-0{m}-01-10-00-00" for m in range(1, 6)]
    loc = _split_locations(rng, runs)
    cfg = SplitConfig(val_fraction=0.2, val_cell_m=100.0, val_seed=7)
    split = assign_training_splits(loc, cfg)
    assert split.index.equals(loc.index)
    assert set(split.unique()) == {"train", "val", "test"}
    recs = loc.to_dict("records")
    in_sq = [any(abs(x["northing"] - pn) < 150 and abs(x["easting"] - pe) < 150 for pn, pe in C.TEST_SQUARES)
             for x in recs]
    assert 50 < sum(in_sq) < len(recs) - 200
    assert [s == "test" for s in split] == in_sq
    # val rows come from whole grid cells and are never in a test square
    cell = [(math.floor(x["northing"] / 100.0), math.floor(x["easting"] / 100.0)) for x in recs]
    val_cells = {c for c, s in zip(cell, split) if s == "val"}
    for c, s, t in zip(cell, split, in_sq):
        if t:
            assert s == "test"
        elif c in val_cells:
            assert s == "val"
        else:
            assert s == "train"
    n_cells = len({c for c, t in zip(cell, in_sq) if not t})
    assert len(val_cells) == max(1, round(0.2 * n_cells))
    # deterministic for a seed; another seed picks other cells
    assert assign_training_splits(loc, cfg).tolist() == split.tolist()
    other = assign_training_splits(loc, SplitConfig(val_fraction=0.2, val_cell_m=100.0, val_seed=8))
    assert other.tolist() != split.tolist()
    assert [s == "test" for s in other] == in_sq


def test_assign_training_splits_no_val_and_unused_runs():
    rng = np.random.default_rng(4)
    runs = [f"2015-0{m}-01-10-00-00" for m in range(1, 5)]
    loc = _split_locations(rng, runs, 100)
    split = assign_training_splits(loc, SplitConfig(val_fraction=0.0))
    assert "val" not in set(split)
    in_sq = in_test_squares(loc["northing"], loc["easting"], C.TEST_SQUARES, 150.0)
    assert ((split == "test").to_numpy() == in_sq).all()
    assert ((split == "train").to_numpy() == ~in_sq).all()
    # all_but_last: the last sorted run's non-test rows are unused; its test rows stay test
    split2 = assign_training_splits(loc, SplitConfig(val_fraction=0.3, training_runs="all_but_last"))
    last = (loc["run"] == runs[-1]).to_numpy()
    assert set(split2[last & ~in_sq]) == {"unused"}
    assert set(split2[last & in_sq]) == {"test"}
    assert "unused" not in set(split2[~last])
    # validation cells are drawn among training runs only: no val in the unused run
    assert "val" not in set(split2[last])
    split3 = assign_training_splits(loc, SplitConfig(val_fraction=0.0, training_runs=[runs[1]]))
    assert set(split3[(loc["run"] == runs[1]).to_numpy() & ~in_sq]) == {"train"}
    assert set(split3[(loc["run"] != runs[1]).to_numpy() & ~in_sq]) == {"unused"}


# ------------------------------------------------------------------------------------------------------------
# run selection

def _run_names(n):
    return [f"2014-{1 + i // 28:02d}-{1 + i % 28:02d}-10-00-00" for i in range(n)]


def test_select_runs_rules():
    runs = _run_names(45)
    shuffled = list(reversed(runs))
    assert select_runs(shuffled, "all") == runs
    assert select_runs(shuffled, None) == runs
    assert select_runs(shuffled, "all_but_last") == runs[:-1]
    pnv = select_runs(shuffled, "pointnetvlad")
    assert len(pnv) == 23
    assert pnv == [runs[i] for i in C.PNV_TEST_RUN_INDICES]
    assert pnv[0] == runs[5] and pnv[-1] == runs[44]
    assert select_runs(runs, [runs[7], runs[3]]) == [runs[3], runs[7]]
    assert select_runs(runs, (runs[0],)) == [runs[0]]


def test_select_runs_errors():
    with pytest.raises(InputError, match="44 runs"):
        select_runs(_run_names(44), "pointnetvlad")
    with pytest.raises(InputError, match="46 runs"):
        select_runs(_run_names(46), "pointnetvlad")
    with pytest.raises(InputError, match="bogus"):
        select_runs(_run_names(3), "bogus")
    with pytest.raises(InputError, match="2099-01-01-00-00-00"):
        select_runs(_run_names(3), ["2099-01-01-00-00-00"])
