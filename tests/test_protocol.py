"""PointNetVLAD recall protocol against a naive per-query loop and hand-made cases."""

from __future__ import annotations

import numpy as np
import pytest

from crossmodal.evaluation.protocol import pnv_recall


def naive(db, qs, sets, n_nb=25, metric="euclidean"):
    recalls, one_pcts = [], []
    for m in range(len(db)):
        for n in range(len(qs)):
            if m == n:
                continue
            k1 = max(int(round(len(db[m]) / 100.0)), 1)
            hits = [0] * n_nb
            one, evaluated = 0, 0
            for key in sorted(sets[n]):
                truth = sets[n][key][m]
                if not truth:
                    continue
                evaluated += 1
                q = qs[n][key]
                if metric == "euclidean":
                    d = [float(np.sqrt(((q - x) ** 2).sum())) for x in db[m]]
                else:
                    d = [1 - float(q @ x / np.linalg.norm(q) / np.linalg.norm(x)) for x in db[m]]
                ranked = sorted(range(len(d)), key=lambda i: (d[i], i))
                for j in range(n_nb):
                    if any(i in truth for i in ranked[:j + 1]):
                        hits[j] += 1
                if any(i in truth for i in ranked[:k1]):
                    one += 1
            if evaluated:
                recalls.append(np.array(hits) / evaluated * 100)
                one_pcts.append(one / evaluated * 100)
    return np.mean(recalls, axis=0), np.mean(one_pcts)


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_matches_naive_loop(metric):
    rng = np.random.default_rng(0)
    runs, dim = 3, 8
    db = [rng.normal(size=(int(rng.integers(30, 160)), dim)) for _ in range(runs)]
    qs, sets = [], []
    for n in range(runs):
        nq = 12
        qs.append(rng.normal(size=(nq, dim)))
        sets.append({k: {m: sorted(rng.choice(len(db[m]), size=int(rng.integers(0, 3)), replace=False).tolist())
                         for m in range(runs) if m != n} for k in range(nq)})
    res = pnv_recall(db, qs, sets, metric=metric)
    ref_at, ref_one = naive(db, qs, sets, metric=metric)
    np.testing.assert_allclose(res.recall_at, ref_at)
    assert res.recall_one_percent == pytest.approx(ref_one)
    assert res.pairs == 6


def test_hand_made_case():
    db = [np.array([[0.0], [10.0], [20.0]]), np.array([[0.0], [10.0], [20.0]])]
    qs = [np.array([[9.0]]), np.array([[1.0], [19.0]])]
    sets = [{0: {1: [1]}}, {0: {0: [1]}, 1: {0: [2]}}]  # run1 query 0 (near 0) should match 1: a miss at @1
    res = pnv_recall(db, qs, sets, num_neighbors=3)
    # pair (db1, q0): hit at 1 -> 100; pair (db0, q1): query 0 ranks [0, 1, 2] -> hit at 2; query 1 hit at 1
    np.testing.assert_allclose(res.recall_at, [(100 + 50) / 2, 100, 100])
    assert res.recall_one_percent == pytest.approx(75.0)  # 1 % of 3 rounds to 0 -> k = 1


def test_banker_rounding_of_one_percent():
    # 250 entries: round(2.5) == 2 in Python (banker's rounding), so Recall@1% looks at 2 entries, not 3
    db = [np.arange(250, dtype=float)[:, None], np.zeros((1, 1))]
    qs = [np.zeros((0, 1)), np.array([[0.0]])]
    sets = [{}, {0: {0: [2]}}]
    res = pnv_recall(db, qs, sets)
    assert res.recall_one_percent == 0.0 and res.recall_at[2] == 100.0


def test_no_valid_pair_is_an_error():
    with pytest.raises(ValueError, match="no run pair"):
        pnv_recall([np.zeros((2, 1)), np.zeros((2, 1))], [np.zeros((1, 1)), np.zeros((1, 1))],
                   [{0: {1: []}}, {0: {0: []}}])
