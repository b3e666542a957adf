"""PointNetVLAD protocol with faiss search against hand-computed cases and a brute-force numpy evaluation."""

from __future__ import annotations

import numpy as np
import pytest

from crossmodal.evaluation.protocol import one_percent_k, pnv_evaluate, pnv_recall
from crossmodal.evaluation.search import IndexSpec, SearchIndex, build_index
from crossmodal.evaluation.testing import brute_force_recall as brute_force

INDEXES = ["flat", "numpy"]


def hand_case():
    """Two runs, 1-D descriptors; every figure below is computed by hand in the test."""
    db = [np.array([[0.0], [10.0], [20.0], [30.0]]), np.array([[0.0], [10.0], [20.0], [30.0]])]
    qs = [np.array([[11.0], [24.0], [5.0]]), np.array([[16.0], [1.0]])]
    sets = [{0: {1: [1]}, 1: {1: [3]}, 2: {1: []}},  # run 0's queries vs run 1's database
            {0: {0: [0]}, 1: {0: [0, 1]}}]  # run 1's queries vs run 0's database
    return db, qs, sets


@pytest.mark.parametrize("index", INDEXES)
def test_hand_computed_recall(index):
    db, qs, sets = hand_case()
    ev = pnv_evaluate(db, qs, sets, num_neighbors=4, index=index, keep=4)
    # pair (db 1, queries of run 0): q 11 ranks [1, 2, 0, 3] -> hit at 1; q 24 ranks [2, 3, 1, 0] -> hit at 2;
    #   q 5 has no true neighbour -> not evaluated.  R@1..4 = 50, 100, 100, 100
    # pair (db 0, queries of run 1): q 16 ranks [2, 1, 3, 0] -> hit at 4; q 1 ranks [0, 1, ...] -> hit at 1.
    #   R@1..4 = 50, 50, 50, 100
    np.testing.assert_allclose(ev.recall.recall_at, [50.0, 75.0, 75.0, 100.0])
    # 4 database entries: k = max(int(round(0.04)), 1) = 1, so Recall@1% = Recall@1
    assert ev.recall.recall_one_percent == pytest.approx(50.0)
    assert ev.recall.pairs == 2 and ev.recall.queries == 4
    assert ev.pair_recall_at_1[1, 0] == 50.0 and ev.pair_recall_at_1[0, 1] == 50.0
    assert np.isnan(ev.pair_recall_at_1[0, 0]) and ev.pair_queries.tolist() == [[0, 2], [2, 0]]
    qr = ev.queries
    assert qr.database_run.tolist() == [0, 0, 1, 1]  # grouped by database run
    assert qr.query_run.tolist() == [1, 1, 0, 0] and qr.query_index.tolist() == [0, 1, 0, 1]
    assert qr.top_ids.tolist() == [[2, 1, 3, 0], [0, 1, 2, 3], [1, 2, 0, 3], [2, 3, 1, 0]]
    np.testing.assert_allclose(qr.distances, [[4, 6, 14, 16], [1, 9, 19, 29], [1, 9, 11, 19], [4, 6, 14, 24]],
                               rtol=1e-6)
    assert qr.first_hit.tolist() == [3, 0, 0, 1]
    assert qr.hit_at_1.tolist() == [False, True, True, False]
    assert qr.num_true.tolist() == [1, 2, 1, 1]


@pytest.mark.parametrize("size,truth_rank,expected", [
    (49, 1, 100.0), (49, 2, 0.0),      # round(0.49) = 0 -> k = 1
    (50, 1, 100.0), (50, 2, 0.0),      # round(0.5) = 0 (halves to even) -> k = 1
    (150, 2, 100.0), (150, 3, 0.0),    # round(1.5) = 2
    (151, 2, 100.0), (151, 3, 0.0),    # round(1.51) = 2
    (250, 2, 100.0), (250, 3, 0.0),    # round(2.5) = 2, not 3
    (350, 4, 100.0), (350, 5, 0.0),    # round(3.5) = 4
])
@pytest.mark.parametrize("index", INDEXES)
def test_recall_at_one_percent_rounding(size, truth_rank, expected, index):
    # query 0.0 against database 0, 1, 2, ...: entry i is ranked i + 1, so the truth [rank - 1] is found at `rank`
    db = [np.arange(size, dtype=float)[:, None], np.zeros((1, 1))]
    qs = [np.zeros((0, 1)), np.array([[0.0]])]
    sets = [{}, {0: {0: [truth_rank - 1]}}]
    res = pnv_evaluate(db, qs, sets, index=index).recall
    assert res.recall_one_percent == expected
    assert res.pairs == 1 and res.recall_at[truth_rank - 1] == 100.0
    assert truth_rank == 1 or res.recall_at[truth_rank - 2] == 0.0


def test_one_percent_k_is_upstreams_rounding():
    assert [one_percent_k(n) for n in (0, 1, 49, 50, 51, 149, 150, 151, 250, 350, 2500)] == \
        [1, 1, 1, 1, 1, 1, 2, 2, 2, 4, 25]


def random_sets(rng, runs=3, dim=8, nq=12, clustered=False):
    db, qs, sets = [], [], []
    for _ in range(runs):
        db.append(rng.normal(size=(int(rng.integers(30, 160)), dim)))
    for n in range(runs):
        qs.append(rng.normal(size=(nq, dim)))
        sets.append({k: {m: sorted(rng.choice(len(db[m]), size=int(rng.integers(0, 4)), replace=False).tolist())
                         for m in range(runs) if m != n} for k in range(nq)})
    return db, qs, sets


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_faiss_flat_matches_brute_force_numpy(metric):
    rng = np.random.default_rng(0)
    db, qs, sets = random_sets(rng)
    ref_at, ref_one = brute_force(db, qs, sets, metric=metric)
    for index in ("flat", "numpy"):
        ev = pnv_evaluate(db, qs, sets, metric=metric, index=index)
        np.testing.assert_allclose(ev.recall.recall_at, ref_at, err_msg=index)
        assert ev.recall.recall_one_percent == pytest.approx(ref_one)
        assert ev.recall.pairs == 6 and ev.recall.metric == metric
    flat = pnv_evaluate(db, qs, sets, metric=metric, index="flat").queries
    exact = pnv_evaluate(db, qs, sets, metric=metric, index="numpy").queries
    np.testing.assert_array_equal(flat.top_ids, exact.top_ids)
    np.testing.assert_allclose(flat.distances, exact.distances, rtol=1e-4, atol=1e-5)
    assert pnv_recall(db, qs, sets, metric=metric).recall_one_percent == pytest.approx(ref_one)


def test_euclidean_and_cosine_rank_differently():
    # raw descriptors: the long vector in the query's direction is far in Euclidean terms, nearest in cosine
    db = [np.array([[10.0, 0.0], [0.5, 0.5]]), np.zeros((1, 2))]
    qs = [np.zeros((0, 2)), np.array([[1.0, 0.0]])]
    sets = [{}, {0: {0: [0]}}]
    assert pnv_evaluate(db, qs, sets, metric="euclidean").recall.recall_at[0] == 0.0
    assert pnv_evaluate(db, qs, sets, metric="cosine").recall.recall_at[0] == 100.0


@pytest.mark.parametrize("kind", ["ivf", "ivf-sq8", "hnsw"])
def test_approximate_indexes_measured_against_flat(kind):
    rng = np.random.default_rng(1)
    centres = rng.normal(size=(40, 16))
    db = [np.repeat(centres, 10, axis=0) + 0.05 * rng.normal(size=(400, 16)) for _ in range(2)]
    qs = [centres + 0.05 * rng.normal(size=centres.shape) for _ in range(2)]
    sets = [{k: {1: list(range(10 * k, 10 * k + 10))} for k in range(40)},
            {k: {0: list(range(10 * k, 10 * k + 10))} for k in range(40)}]
    flat = pnv_evaluate(db, qs, sets, index="flat").recall
    spec = IndexSpec("ivf", nprobe=4, encoding="sq8") if kind == "ivf-sq8" else IndexSpec(kind, nprobe=4)
    approx = pnv_evaluate(db, qs, sets, index=spec).recall
    assert flat.recall_at[0] == 100.0
    assert abs(flat.recall_at[0] - approx.recall_at[0]) <= 5.0


def test_bad_inputs_are_named():
    db, qs, sets = hand_case()
    with pytest.raises(ValueError, match="unknown metric 'manhattan'"):
        pnv_evaluate(db, qs, sets, metric="manhattan")
    with pytest.raises(ValueError, match="unknown index kind 'annoy'"):
        pnv_evaluate(db, qs, sets, index="annoy")
    with pytest.raises(ValueError, match="unknown IVF encoding 'pq'"):
        pnv_evaluate(db, qs, sets, index={"kind": "ivf", "encoding": "pq"})
    with pytest.raises(ValueError, match=r"unknown index option\(s\) \['nprob'\]"):
        pnv_evaluate(db, qs, sets, index={"kind": "ivf", "nprob": 4})
    with pytest.raises(ValueError, match="one entry per run"):
        pnv_evaluate(db, qs[:1], sets)
    with pytest.raises(ValueError, match="run 1: 1 query descriptors but 2 queries"):
        pnv_evaluate(db, [qs[0], qs[1][:1]], sets)
    with pytest.raises(ValueError, match="different dimensions"):
        pnv_evaluate([db[0], np.zeros((3, 2))], qs, sets)
    with pytest.raises(ValueError, match="no run pair"):
        pnv_evaluate(db, qs, [{0: {1: []}, 1: {1: []}, 2: {1: []}}, {0: {0: []}, 1: {0: []}}])


def test_search_index_ties_sizes_and_serialisation():
    x = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [3.0, 3.0]])
    for kind in ("flat", "numpy", "hnsw"):
        d, i = build_index(x, "euclidean", kind).search(np.zeros((1, 2)), 10)  # k > size: the whole database
        assert i.tolist() == [[0, 1, 2, 3, 4]], kind  # three entries at distance 1: lower id first
        np.testing.assert_allclose(d[0], [0, 1, 1, 1, np.sqrt(18)], rtol=1e-6)
        blob = build_index(x, "euclidean", kind).to_bytes()
        again = SearchIndex.from_bytes(blob, 2, "euclidean", kind)
        assert again.ntotal == 5 and again.search(np.zeros((1, 2)), 2)[1].tolist() == [[0, 1]]
    with pytest.raises(ValueError, match="index is empty"):
        SearchIndex(2).search(np.zeros((1, 2)), 1)
    with pytest.raises(ValueError, match="dimension 3, the index holds 2-d"):
        build_index(x).search(np.zeros((1, 3)), 1)
    with pytest.raises(ValueError, match="NaN or infinite"):
        build_index(np.array([[np.nan, 0.0]]))
    assert IndexSpec("ivf").nlist_for(100) == 2 and IndexSpec("ivf").nlist_for(1_000_000) == 4000


def test_imports_have_no_side_effects():
    """Importing the packages loads neither faiss, torch, matplotlib nor onnx (they load on first use)."""
    import subprocess
    import sys

    code = ("import sys, crossmodal.evaluation, crossmodal.deploy, crossmodal.evaluation.protocol; "
            "print(sorted(m for m in ('faiss', 'torch', 'matplotlib', 'onnx', 'onnxruntime') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
