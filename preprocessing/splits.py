"""Training tuples, test queries, validation and evaluation sets (``generate_training_tuples_baseline.py``,
``generate_test_sets.py``), computed from location tables.

All inputs are pandas DataFrames with columns ``run, timestamp, northing, easting`` in sorted-run then CSV order.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
from sklearn.neighbors import KDTree

from preprocessing.robotcar import constants as C


@dataclasses.dataclass
class SplitConfig:
    positive_radius_m: float = C.POSITIVE_RADIUS_M
    non_negative_radius_m: float = C.NON_NEGATIVE_RADIUS_M
    eval_radius_m: float = C.EVAL_TRUE_NEIGHBOUR_RADIUS_M
    test_squares: list = dataclasses.field(default_factory=lambda: [list(p) for p in C.TEST_SQUARES])
    test_square_half_width_m: float = C.TEST_SQUARE_HALF_WIDTH
    #: Runs whose 10overlap submaps build training tuples: ``all``, ``all_but_last`` (``sorted(runs)[:-1]``, as
    #: PointNetVLAD) or an explicit list.
    training_runs: object = "all"
    #: Runs forming the evaluation sets: ``all``, ``pointnetvlad`` (the 23 test runs, by index into the 45 sorted
    #: Oxford runs) or an explicit list.
    test_runs: object = "all"
    #: Validation carved from the training area: square cells of ``val_cell_m`` metres; a seeded ``val_fraction``
    #: of the cells holding training locations become validation; 0 reproduces the upstream training pickle.
    val_cell_m: float = 100.0
    val_fraction: float = 0.15
    val_seed: int = 0


def in_test_squares(northing, easting, squares, half_width: float) -> np.ndarray:
    """PointNetVLAD's rule: strictly inside any ``2*half_width`` square centred on a test point."""
    northing = np.asarray(northing, float)[:, None]
    easting = np.asarray(easting, float)[:, None]
    sq = np.asarray(squares, float).reshape(-1, 2)
    inside = (np.abs(northing - sq[None, :, 0]) < half_width) & (np.abs(easting - sq[None, :, 1]) < half_width)
    return inside.any(axis=1)


def select_runs(runs: list[str], rule) -> list[str]:
    """Apply a run-selection rule (see :class:`SplitConfig`) to the processed runs."""
    from preprocessing.errors import InputError

    runs = sorted(runs)
    if rule == "all" or rule is None:
        return runs
    if rule == "all_but_last":
        return runs[:-1]
    if rule == "pointnetvlad":
        if len(runs) != 45:
            raise InputError(f"test_runs=pointnetvlad indexes the 45 sorted Oxford benchmark runs, but {len(runs)} "
                             f"runs were processed; use test_runs=all or list the test runs explicitly")
        return [runs[i] for i in C.PNV_TEST_RUN_INDICES]
    if isinstance(rule, str):
        raise InputError(f"unknown run-selection rule {rule!r}; use all, all_but_last, pointnetvlad or a list")
    wanted = [str(r) for r in rule]
    missing = sorted(set(wanted) - set(runs))
    if missing:
        raise InputError(f"runs {missing} named in the split config are not among the processed runs")
    return [r for r in runs if r in set(wanted)]


def validation_cells(northing: np.ndarray, easting: np.ndarray, cell_m: float, fraction: float,
                     seed: int) -> set[tuple[int, int]]:
    """The seeded set of grid cells (indices of ``floor(coord / cell_m)``) chosen for validation."""
    if fraction <= 0 or len(northing) == 0:
        return set()
    cells = sorted(set(zip(np.floor(northing / cell_m).astype(int).tolist(),
                           np.floor(easting / cell_m).astype(int).tolist())))
    n_val = max(1, int(round(fraction * len(cells))))
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(cells), size=min(n_val, len(cells)), replace=False)
    return {cells[i] for i in sorted(chosen.tolist())}


def in_cells(northing: np.ndarray, easting: np.ndarray, cells: set, cell_m: float) -> np.ndarray:
    keys = zip(np.floor(northing / cell_m).astype(int).tolist(), np.floor(easting / cell_m).astype(int).tolist())
    return np.fromiter((k in cells for k in keys), bool, count=len(northing))


def assign_training_splits(locations: pd.DataFrame, cfg: SplitConfig) -> pd.Series:
    """``train`` / ``val`` / ``test`` / ``unused`` per 10overlap row.

    ``test``: inside a test square (any run, as upstream). ``unused``: outside the test squares in a run that is
    not a training run. ``val``: in a validation cell. ``train``: the rest.
    """
    n, e = locations["northing"].to_numpy(), locations["easting"].to_numpy()
    test = in_test_squares(n, e, cfg.test_squares, cfg.test_square_half_width_m)
    train_runs = set(select_runs(locations["run"].unique().tolist(), cfg.training_runs))
    in_train_run = locations["run"].isin(train_runs).to_numpy()
    candidates = ~test & in_train_run
    cells = validation_cells(n[candidates], e[candidates], cfg.val_cell_m, cfg.val_fraction, cfg.val_seed)
    val = in_cells(n, e, cells, cfg.val_cell_m) & candidates
    split = np.where(test, "test", np.where(~in_train_run, "unused", np.where(val, "val", "train")))
    return pd.Series(split, index=locations.index, name="split")


def radius_neighbours(positions: np.ndarray, radius: float, queries: np.ndarray | None = None) -> list[np.ndarray]:
    """Sorted int64 indices of ``positions`` within ``radius`` (inclusive) of each query (default: themselves)."""
    if len(positions) == 0:
        return [np.zeros(0, np.int64) for _ in range(0 if queries is None else len(queries))]
    tree = KDTree(positions)
    found = tree.query_radius(positions if queries is None else queries, r=radius)
    return [np.sort(np.asarray(f, np.int64)) for f in found]


def training_tuples(positions: np.ndarray, cfg: SplitConfig) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Positives (within the positive radius, self excluded) and non-negatives (within the non-negative radius,
    self included) for each row of ``positions`` ((N, 2) northing, easting), as sorted int64 row indices."""
    pos = radius_neighbours(positions, cfg.positive_radius_m)
    positives = [p[p != i] for i, p in enumerate(pos)]
    non_negatives = radius_neighbours(positions, cfg.non_negative_radius_m)
    return positives, non_negatives


@dataclasses.dataclass
class EvalSets:
    """Per-run database / query sets in PointNetVLAD's layout (lists over runs of ``{k: entry}`` dicts)."""

    runs: list[str]
    database: list[dict]
    query: list[dict]


def evaluation_sets(locations: pd.DataFrame, rel_path, query_mask: np.ndarray, radius: float) -> EvalSets:
    """Database = every row of a run; queries = its rows with ``query_mask``; for every other run m, a query's
    entry ``m`` lists the database indices of run m within ``radius`` (the run's own key is absent).

    ``rel_path(run, timestamp)`` gives the path stored under ``"query"``.
    """
    runs = sorted(locations["run"].unique().tolist())
    database, query, trees = [], [], []
    for run in runs:
        rows = locations[locations["run"] == run]
        database.append({i: {"query": rel_path(run, int(t)), "northing": float(nn), "easting": float(ee)}
                         for i, (t, nn, ee) in enumerate(rows[["timestamp", "northing", "easting"]]
                                                         .itertuples(index=False))})
        trees.append(KDTree(rows[["northing", "easting"]].to_numpy()) if len(rows) else None)
    for ri, run in enumerate(runs):
        sel = (locations["run"] == run).to_numpy()
        rows = locations[sel]
        qmask = query_mask[sel]
        entries = {}
        for t, nn, ee in rows[qmask][["timestamp", "northing", "easting"]].itertuples(index=False):
            entry = {"query": rel_path(run, int(t)), "northing": float(nn), "easting": float(ee)}
            for m, tree in enumerate(trees):
                if m == ri:
                    continue
                found = tree.query_radius(np.array([[nn, ee]]), r=radius)[0] if tree is not None else []
                entry[m] = sorted(int(x) for x in found)
            entries[len(entries)] = entry
        query.append(entries)
    return EvalSets(runs, database, query)
