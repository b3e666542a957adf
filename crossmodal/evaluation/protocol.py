"""The PointNetVLAD evaluation protocol on per-run database / query sets.

For every ordered pair (database run m, query run n), m != n: each query with at least one true neighbour in run
m is ranked against run m's database; Recall@N counts a true neighbour among the first N; Recall@1% uses
``k = max(int(round(len(db_m) / 100.0)), 1)`` (Python's banker's rounding, as upstream). Per pair,
recall = hits / evaluated queries x 100; the result is the unweighted mean over pairs.
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass
class RecallResult:
    recall_at: np.ndarray  #: Recall@1..N (percent), mean over run pairs
    recall_one_percent: float  #: Recall@1% (percent), mean over run pairs
    pairs: int  #: run pairs evaluated
    queries: int  #: queries evaluated, summed over pairs
    metric: str

    @property
    def recall_at_1(self) -> float:
        return float(self.recall_at[0])


def _distances(db: np.ndarray, q: np.ndarray, metric: str) -> np.ndarray:
    if metric == "cosine":
        db = db / np.maximum(np.linalg.norm(db, axis=1, keepdims=True), 1e-12)
        q = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
        return 1.0 - q @ db.T
    if metric == "euclidean":
        d2 = (q * q).sum(1)[:, None] + (db * db).sum(1)[None, :] - 2.0 * q @ db.T
        return np.sqrt(np.maximum(d2, 0.0))
    raise ValueError(f"unknown metric {metric!r}; use 'euclidean' or 'cosine'")


def pnv_recall(database_desc: list[np.ndarray], query_desc: list[np.ndarray], query_sets: list[dict],
               num_neighbors: int = 25, metric: str = "euclidean") -> RecallResult:
    """Recall over all ordered run pairs.

    ``database_desc[m]``: (len(db_m), D) descriptors of run m's database in index order; ``query_desc[n]``:
    descriptors of run n's queries in the query set's key order; ``query_sets[n][k][m]``: true-neighbour database
    indices of query k of run n in run m (PointNetVLAD's ``*_evaluation_query.pickle`` layout).
    """
    sums = np.zeros(num_neighbors)
    one_pct_sum, pairs, total_q = 0.0, 0, 0
    for m, db in enumerate(database_desc):
        if len(db) == 0:
            continue
        k1 = max(int(round(len(db) / 100.0)), 1)
        for n, q in enumerate(query_desc):
            if n == m or len(q) == 0:
                continue
            keys = sorted(query_sets[n])
            truth = [query_sets[n][k].get(m, []) for k in keys]
            valid = np.array([len(t) > 0 for t in truth])
            if not valid.any():
                continue
            dist = _distances(db, q[valid], metric)
            order = np.argsort(dist, axis=1, kind="stable")[:, :max(num_neighbors, k1)]
            hits_at = np.zeros(num_neighbors)
            one_pct = 0
            for row, t in zip(order, [t for t, v in zip(truth, valid) if v]):
                hit = np.isin(row, t)
                first = np.argmax(hit) if hit.any() else None
                if first is not None and first < num_neighbors:
                    hits_at[first:] += 1
                if hit[:k1].any():
                    one_pct += 1
            nq = int(valid.sum())
            sums += hits_at / nq * 100.0
            one_pct_sum += one_pct / nq * 100.0
            pairs += 1
            total_q += nq
    if pairs == 0:
        raise ValueError("no run pair has a query with a true neighbour; check the evaluation sets")
    return RecallResult(sums / pairs, one_pct_sum / pairs, pairs, total_q, metric)
