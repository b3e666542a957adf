"""Recall of a teacher on the validation sets (model selection) and the evaluation sets (final figures).

The sets are PointNetVLAD-style pickles next to the clouds (``benchmark_datasets/``):
``oxford_validation_{database,query}.pickle`` (validation rows of the ``20m_10overlap`` family, split ``val``) and
``oxford_evaluation_{database,query}.pickle`` (the ``20m`` family, split ``eval``). ``database[m][i]["query"]`` and
``query[n][k]["query"]`` are cloud paths relative to the benchmark root; they are matched to the dataset's rows by
the manifest's ``cloud`` column, so the same images and clouds the dataset loads are embedded (eval transform,
the model's own modalities: the fusion teacher uses both).

Rows the dataset dropped (missing image, bad cloud) cannot be embedded: they are removed from the database (the
true-neighbour indices are renumbered) and from the queries, and counted in :attr:`EvalSets.missing`.

Under DDP (``distributed=True`` with several ranks) every rank embeds a contiguous share of the rows, the shares
are gathered, and rank 0's recall is broadcast, so every rank returns the same figures.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from crossmodal.evaluation.protocol import RecallResult, pnv_recall
from preprocessing.upstream import load_pickle

from .multistage import move_batch

log = logging.getLogger(__name__)

SET_PICKLES = {
    "val": ("oxford_validation_database.pickle", "oxford_validation_query.pickle"),
    "eval": ("oxford_evaluation_database.pickle", "oxford_evaluation_query.pickle"),
}


@dataclasses.dataclass
class EvalSets:
    """Per run: the dataset rows of its database (index order) and queries (key order), and the truth lists
    renumbered to the kept database items."""

    database_rows: list[np.ndarray]
    query_rows: list[np.ndarray]
    query_sets: list[dict[int, dict[int, list[int]]]]
    missing: dict[str, int]  #: {"database": n, "query": n} entries whose row the dataset lacks

    @property
    def num_queries(self) -> int:
        return int(sum(len(q) for q in self.query_rows))


def load_eval_sets(dataset, split: str = "val", benchmark_root: str | Path | None = None) -> EvalSets:
    """Match the ``split``'s pickles (``val`` / ``eval``) to ``dataset``'s rows (a
    :class:`~crossmodal.data.PairedPlaceDataset` of that split)."""
    if split not in SET_PICKLES:
        raise ValueError(f"split must be one of {sorted(SET_PICKLES)}, got {split!r}")
    root = Path(benchmark_root or dataset.benchmark_root)
    db_name, q_name = SET_PICKLES[split]
    database, query = load_pickle(root / db_name), load_pickle(root / q_name)
    if len(database) != len(query):
        raise ValueError(f"{root}: {db_name} has {len(database)} runs but {q_name} has {len(query)}")
    row_of = {str(p): i for i, p in enumerate(dataset.rows["cloud"])}
    missing = {"database": 0, "query": 0}
    db_rows, new_index = [], []
    for run_db in database:
        rows = np.array([row_of.get(str(run_db[i]["query"]), -1) for i in sorted(run_db)], np.int64)
        missing["database"] += int((rows < 0).sum())
        remap = np.full(len(rows), -1, np.int64)
        remap[rows >= 0] = np.arange(int((rows >= 0).sum()))
        db_rows.append(rows[rows >= 0])
        new_index.append(remap)
    q_rows, q_sets = [], []
    for run_q in query:
        rows, entries = [], {}
        for k in sorted(run_q):
            entry = run_q[k]
            r = row_of.get(str(entry["query"]), -1)
            if r < 0:
                missing["query"] += 1
                continue
            truth = {}
            for m, idx in entry.items():
                if isinstance(m, (int, np.integer)) and 0 <= int(m) < len(database):
                    mapped = new_index[int(m)][np.asarray(idx, np.int64)] if len(idx) else np.zeros(0, np.int64)
                    truth[int(m)] = [int(x) for x in mapped if x >= 0]
            entries[len(entries)] = truth
            rows.append(r)
        q_rows.append(np.asarray(rows, np.int64))
        q_sets.append(entries)
    if missing["database"] or missing["query"]:
        log.warning("%s sets: %d database and %d query entries have no dataset row (dropped rows); left out",
                    split, missing["database"], missing["query"])
    return EvalSets(db_rows, q_rows, q_sets, missing)


def shard_loader(loader: DataLoader) -> DataLoader:
    """The same loader over this rank's contiguous share of its dataset (items keep their dataset ``index``)."""
    from torch.utils.data import Subset

    from . import distributed

    start, stop = distributed.shard_range(len(loader.dataset))
    return DataLoader(Subset(loader.dataset, range(start, stop)), batch_size=loader.batch_size, shuffle=False,
                      drop_last=False, collate_fn=loader.collate_fn, num_workers=loader.num_workers,
                      pin_memory=loader.pin_memory)


@torch.no_grad()
def embed(model: nn.Module, loader: DataLoader, output: str = "descriptor", device: str | torch.device = "cpu",
          progress: bool = False, desc: str = "embed", distributed: bool = False) -> np.ndarray:
    """``[len(dataset), D]`` float32 outputs of ``model`` (eval mode, restored afterwards) over ``loader``'s
    dataset, in dataset order. ``distributed``: every rank embeds its share and every rank gets the whole
    matrix (one process: the same as without)."""
    from . import distributed as dist_

    n = len(loader.dataset)
    shard = distributed and dist_.world_size() > 1
    idx, out = _embed_rows(model, shard_loader(loader) if shard else loader, output, device, progress, desc)
    if shard:
        dims = dist_.all_reduce_sums({"d": out.shape[1] if len(idx) else 0, "k": 1 if len(idx) else 0})
        dim = round(dims["d"] / max(dims["k"], 1))
        out = out if len(idx) else torch.zeros(0, dim)
        idx, out = dist_.gather_rows(idx), dist_.gather_rows(out)
    if not len(idx):
        return np.zeros((0, 0), np.float32)
    result = np.zeros((n, out.shape[1]), np.float32)
    result[idx.numpy()] = out.numpy()
    return result


def _embed_rows(model: nn.Module, loader: DataLoader, output: str, device: str | torch.device, progress: bool,
                desc: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(dataset indices [m] int64, outputs [m, D] float32 on the CPU) of ``loader``'s items."""
    was_training = model.training
    model.eval()
    idx: list[torch.Tensor] = []
    outs: list[torch.Tensor] = []
    try:
        from tqdm import tqdm

        for batch in tqdm(loader, desc=desc, leave=False, disable=not progress, dynamic_ncols=True):
            idx.append(batch["indices"].to(torch.int64))
            outs.append(model(move_batch(batch, device))[output].float().cpu())
    finally:
        model.train(was_training)
    if not idx:
        return torch.zeros(0, dtype=torch.int64), torch.zeros(0, 0)
    return torch.cat(idx), torch.cat(outs)


def recall_from_embeddings(emb: np.ndarray, sets: EvalSets, metric: str = "euclidean") -> RecallResult:
    return pnv_recall([emb[r] for r in sets.database_rows], [emb[r] for r in sets.query_rows], sets.query_sets,
                      metric=metric)


def evaluate(model: nn.Module, loader: DataLoader, sets: EvalSets, output: str = "descriptor",
             device: str | torch.device = "cpu", metric: str = "euclidean", progress: bool = False,
             desc: str = "embed", distributed: bool = False) -> dict[str, Any]:
    """``{"r1", "r1p", "recall_at" (list), "pairs", "queries"}`` of ``model`` on ``sets`` (``distributed``: the
    rows embedded in shards, rank 0's figures on every rank)."""
    from . import distributed as dist_

    emb = embed(model, loader, output, device, progress, desc, distributed=distributed)
    result = None
    if dist_.is_main() or not distributed:
        res = recall_from_embeddings(emb, sets, metric)
        result = {"r1": float(res.recall_at[0]), "r1p": float(res.recall_one_percent),
                  "recall_at": [float(x) for x in res.recall_at], "pairs": int(res.pairs),
                  "queries": int(res.queries)}
    return dist_.broadcast_object(result) if distributed else result
