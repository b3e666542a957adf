"""The PointNetVLAD evaluation protocol on per-run database / query sets.

For every ordered pair (database run m, query run n), m != n: each query of run n with at least one true
neighbour in run m is ranked against run m's database; Recall@N counts a true neighbour among the first N;
Recall@1% uses ``k = max(int(round(len(db_m) / 100.0)), 1)`` (Python's banker's rounding, as upstream: 250 items
give k = 2, 350 give k = 4). Per pair, recall = hits / evaluated queries x 100; the result is the unweighted mean
over the pairs that have at least one evaluated query.

:func:`pnv_evaluate` does the search with a :class:`~crossmodal.evaluation.search.SearchIndex` (faiss flat by
default) and keeps per-pair recall and per-query results (top-k ids and distances, rank of the first true
neighbour); :func:`pnv_recall` is the same computation returning the recall only, with the float64 numpy brute
force by default (the reference).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .search import IndexSpec, SearchIndex, check_metric


def one_percent_k(database_size: int) -> int:
    """Entries Recall@1% looks at: ``max(int(round(n / 100.0)), 1)`` (Python rounds halves to even)."""
    return max(int(round(database_size / 100.0)), 1)  # noqa: RUF046 - upstream's expression


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

    def at(self, n: int) -> float:
        """Recall@n (percent); n beyond the computed depth gives the last value (no further hits are counted)."""
        return float(self.recall_at[min(n, len(self.recall_at)) - 1])


@dataclasses.dataclass
class QueryResults:
    """One row per (query, database run) pair evaluated, columnar.

    ``top_ids`` are indices into the database run's descriptors (``-1`` padding when the database is smaller
    than the kept depth), ``distances`` their distances (``inf`` padding); ``first_hit`` the 0-based rank of the
    first true neighbour within the searched depth (``-1``: none found).
    """

    database_run: np.ndarray  #: [Q] int
    query_run: np.ndarray  #: [Q] int
    query_index: np.ndarray  #: [Q] int, position in the query run's key order
    top_ids: np.ndarray  #: [Q, K] int64
    distances: np.ndarray  #: [Q, K] float32
    first_hit: np.ndarray  #: [Q] int
    hit_one_percent: np.ndarray  #: [Q] bool
    num_true: np.ndarray  #: [Q] int, true neighbours in the database run

    def __len__(self) -> int:
        return len(self.query_run)

    @property
    def hit_at_1(self) -> np.ndarray:
        return self.first_hit == 0


@dataclasses.dataclass
class Evaluation:
    recall: RecallResult
    pair_recall_at_1: np.ndarray  #: [runs, runs] Recall@1 of (database run m, query run n); NaN: not evaluated
    pair_recall_one_percent: np.ndarray  #: [runs, runs]
    pair_queries: np.ndarray  #: [runs, runs] evaluated queries
    queries: QueryResults
    index: str  #: description of the search index used


def _check_inputs(database_desc: Sequence[np.ndarray], query_desc: Sequence[np.ndarray],
                  query_sets: Sequence[Mapping[int, Mapping[int, Any]]]) -> int:
    if not (len(database_desc) == len(query_desc) == len(query_sets)):
        raise ValueError(f"one entry per run is needed: {len(database_desc)} databases, {len(query_desc)} query "
                         f"descriptor sets, {len(query_sets)} query sets")
    dims = {np.asarray(d).shape[1] for d in list(database_desc) + list(query_desc)
            if np.asarray(d).ndim == 2 and len(d)}
    if len(dims) > 1:
        raise ValueError(f"descriptors of different dimensions: {sorted(dims)}")
    for n, (q, s) in enumerate(zip(query_desc, query_sets)):
        if len(q) != len(s):
            raise ValueError(f"run {n}: {len(q)} query descriptors but {len(s)} queries in its set")
    return dims.pop() if dims else 0


def pnv_evaluate(database_desc: Sequence[np.ndarray], query_desc: Sequence[np.ndarray],
                 query_sets: Sequence[Mapping[int, Mapping[int, Any]]], num_neighbors: int = 25,
                 metric: str = "euclidean", index: IndexSpec | str | Mapping | None = "flat", keep: int = 10,
                 progress: bool = False, desc: str = "search") -> Evaluation:
    """Recall over all ordered run pairs, with per-pair and per-query results.

    ``database_desc[m]``: (len(db_m), D) descriptors of run m's database in index order; ``query_desc[n]``:
    descriptors of run n's queries in the query set's key order; ``query_sets[n][k][m]``: true-neighbour database
    indices of query k of run n in run m (PointNetVLAD's ``*_evaluation_query.pickle`` layout). ``keep``: how
    many retrievals per query the per-query results hold.
    """
    check_metric(metric)
    spec = IndexSpec.parse(index)
    if num_neighbors < 1:
        raise ValueError(f"num_neighbors must be >= 1, got {num_neighbors}")
    dim = _check_inputs(database_desc, query_desc, query_sets)
    runs = len(database_desc)
    keep = max(int(keep), 1)
    pair_r1 = np.full((runs, runs), np.nan)
    pair_r1p = np.full((runs, runs), np.nan)
    pair_nq = np.zeros((runs, runs), np.int64)
    sums = np.zeros(num_neighbors)
    one_pct_sum, pairs, total_q = 0.0, 0, 0
    cols: dict[str, list] = {k: [] for k in ("db", "qr", "qi", "ids", "dist", "first", "one", "ntrue")}
    described = spec.describe(metric)

    from tqdm import tqdm

    for m in tqdm(range(runs), desc=desc, leave=False, disable=not progress, dynamic_ncols=True):
        db = np.asarray(database_desc[m])
        if len(db) == 0:
            continue
        k1 = one_percent_k(len(db))
        # every query run's queries with a true neighbour in run m, searched in one call
        blocks = []
        for n in range(runs):
            if n == m or len(query_desc[n]) == 0:
                continue
            keys = sorted(query_sets[n])
            truth = [list(query_sets[n][k].get(m, [])) for k in keys]
            valid = np.flatnonzero([len(t) > 0 for t in truth])
            if len(valid):
                blocks.append((n, valid, [truth[i] for i in valid]))
        if not blocks:
            continue
        search_index = SearchIndex(dim, metric, spec).add(db)
        described = search_index.describe()
        depth = min(len(db), max(num_neighbors, k1, keep))
        queries = np.concatenate([np.asarray(query_desc[n])[valid] for n, valid, _ in blocks])
        dist, ids = search_index.search(queries, depth)
        row = 0
        for n, valid, truths in blocks:
            hits_at = np.zeros(num_neighbors)
            one_pct = 0
            for qi, t in zip(valid, truths):
                ranked = ids[row]
                hit = np.isin(ranked, np.asarray(t, np.int64))
                first = int(np.argmax(hit)) if hit.any() else -1
                if 0 <= first < num_neighbors:
                    hits_at[first:] += 1
                in_one = bool(hit[:k1].any())
                one_pct += in_one
                pad = keep - min(keep, depth)
                cols["db"].append(m)
                cols["qr"].append(n)
                cols["qi"].append(int(qi))
                cols["ids"].append(np.pad(ranked[:keep], (0, pad), constant_values=-1))
                cols["dist"].append(np.pad(dist[row, :keep], (0, pad), constant_values=np.inf))
                cols["first"].append(first)
                cols["one"].append(in_one)
                cols["ntrue"].append(len(t))
                row += 1
            nq = len(valid)
            sums += hits_at / nq * 100.0
            one_pct_sum += one_pct / nq * 100.0
            pair_r1[m, n] = hits_at[0] / nq * 100.0
            pair_r1p[m, n] = one_pct / nq * 100.0
            pair_nq[m, n] = nq
            pairs += 1
            total_q += nq
    if pairs == 0:
        raise ValueError("no run pair has a query with a true neighbour; check the evaluation sets")
    qres = QueryResults(
        database_run=np.asarray(cols["db"], np.int64), query_run=np.asarray(cols["qr"], np.int64),
        query_index=np.asarray(cols["qi"], np.int64), top_ids=np.stack(cols["ids"]).astype(np.int64),
        distances=np.stack(cols["dist"]).astype(np.float32), first_hit=np.asarray(cols["first"], np.int64),
        hit_one_percent=np.asarray(cols["one"], bool), num_true=np.asarray(cols["ntrue"], np.int64))
    recall = RecallResult(sums / pairs, one_pct_sum / pairs, pairs, total_q, metric)
    return Evaluation(recall, pair_r1, pair_r1p, pair_nq, qres, described)


def pnv_recall(database_desc: list[np.ndarray], query_desc: list[np.ndarray], query_sets: list[dict],
               num_neighbors: int = 25, metric: str = "euclidean",
               index: IndexSpec | str | Mapping | None = "numpy") -> RecallResult:
    """Recall over all ordered run pairs (see :func:`pnv_evaluate`); exact numpy brute force by default."""
    return pnv_evaluate(database_desc, query_desc, query_sets, num_neighbors, metric, index, keep=1).recall
