"""Evaluate checkpoints on a preprocessed dataset's evaluation sets and write a report.

:func:`evaluate_checkpoints` is what ``scripts/evaluate.py`` and the end of a distillation run call. Each model is
built from its checkpoint (``crossmodal.training.build_model``); a student reads images only (its dataset is
built with ``modalities=["image"]``, so no LiDAR file is ever opened), a teacher reads what it has branches for.
All models are evaluated on the same rows: with ``require="auto"`` a row must have every modality some model
reads (a cloud is then only ``stat``-ed for a student's dataset, never opened).
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .latency import LatencyConfig, machine_info
from .protocol import Evaluation, one_percent_k, pnv_evaluate
from .search import METRIC_DESCRIPTIONS, IndexSpec, check_metric

log = logging.getLogger(__name__)

REPORT_FORMAT = "crossmodal-evaluation/1"
CHECKPOINT_NAMES = ("best.pt", "last.pt")


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint file, or a run folder (its ``best.pt``, else ``last.pt``)."""
    path = Path(path)
    if path.is_dir():
        for name in CHECKPOINT_NAMES:
            if (path / name).is_file():
                return path / name
        raise FileNotFoundError(f"{path}: a folder without {' or '.join(CHECKPOINT_NAMES)}; give a checkpoint file")
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    return path


def trained_dataset(paths: Sequence[str | Path]) -> Path:
    """The dataset the checkpoints were trained on (their config's ``data.root``): the default evaluation set of
    ``scripts/evaluate.py``. All must agree; a checkpoint without it, or two datasets, is an error naming the
    files and the fix (``dataset_dir=``)."""
    from crossmodal.training.checkpoint import load_checkpoint

    roots: dict[str, list[str]] = {}
    for path in paths:
        ckpt = resolve_checkpoint(path)
        data = (load_checkpoint(ckpt).get("config") or {}).get("data") or {}
        if not data.get("root"):
            raise ValueError(f"{ckpt}: the checkpoint does not record its dataset; give dataset_dir=<preprocessed "
                             f"dataset folder>")
        roots.setdefault(str(data["root"]), []).append(str(ckpt))
    if len(roots) != 1:
        found = "; ".join(f"{root} ({', '.join(files)})" for root, files in roots.items())
        raise ValueError(f"the checkpoints were trained on different datasets: {found}; choose one with "
                         f"dataset_dir=<folder>")
    return Path(next(iter(roots)))


@dataclasses.dataclass
class ModelResult:
    """Everything evaluated for one model (the report and the plots read it)."""

    label: str
    role: str
    checkpoint: Path
    summary: dict[str, Any]
    evaluation: Evaluation
    dataset: Any  #: the PairedPlaceDataset it was evaluated on
    sets: Any  #: the EvalSets (database / query rows per run)
    run_names: list[str]


def _model_size(model) -> dict[str, Any]:
    state = model.state_dict()
    nbytes = sum(t.numel() * t.element_size() for t in state.values())
    return {"parameters": int(sum(p.numel() for p in model.parameters())), "model_mb": nbytes / 1e6}


def _run_names(ds, sets) -> list[str]:
    names = []
    for m, (db, q) in enumerate(zip(sets.database_rows, sets.query_rows)):
        rows = db if len(db) else q
        names.append(ds.runs[int(rows[0])] if len(rows) else f"run {m}")
    return names


def _recall_summary(ev: Evaluation) -> dict[str, Any]:
    r = ev.recall
    return {"r1": r.at(1), "r5": r.at(5), "r10": r.at(10), "r1p": float(r.recall_one_percent),
            "recall_at": [float(x) for x in r.recall_at], "pairs": int(r.pairs), "queries": int(r.queries)}


def per_query_records(ev: Evaluation, ds, sets, run_names: Sequence[str]) -> list[dict[str, Any]]:
    """Per (query, database run): query id and run, top-k database sample ids and distances, hit at 1, rank of the
    first true neighbour (1-based; null when none in the searched depth), hit within 1 %, true-neighbour count
    and the metric error (m) between the query's position and its best match's (manifest northing / easting)."""
    qr = ev.queries
    pos, ids = ds.positions, ds.sample_ids
    out = []
    for i in range(len(qr)):
        m, n, qi = int(qr.database_run[i]), int(qr.query_run[i]), int(qr.query_index[i])
        q_row = int(sets.query_rows[n][qi])
        top = qr.top_ids[i]
        valid = top >= 0
        db_rows = sets.database_rows[m][top[valid]]
        first = int(qr.first_hit[i])
        best = pos[db_rows[0]] if len(db_rows) else None
        out.append({
            "query_id": int(ids[q_row]), "query_run": run_names[n], "database_run": run_names[m],
            "top_ids": [int(x) for x in ids[db_rows]],
            "distances": [float(f"{d:.6g}") for d in qr.distances[i][valid]],
            "hit": first == 0, "first_hit_rank": first + 1 if first >= 0 else None,
            "hit_one_percent": bool(qr.hit_one_percent[i]), "num_true": int(qr.num_true[i]),
            "error_m": None if best is None else round(float(np.linalg.norm(pos[q_row] - best)), 3),
        })
    return out


def _evaluate_descriptors(emb: np.ndarray, sets, metric: str, spec: IndexSpec, num_neighbors: int, keep: int,
                          progress: bool, label: str) -> tuple[Evaluation, dict[str, Any]]:
    db = [emb[r] for r in sets.database_rows]
    q = [emb[r] for r in sets.query_rows]
    ev = pnv_evaluate(db, q, sets.query_sets, num_neighbors, metric, spec, keep, progress, f"search {label}")
    extra: dict[str, Any] = {}
    if not spec.exact:
        flat = pnv_evaluate(db, q, sets.query_sets, num_neighbors, metric, "flat", 1, False)
        a, b = _recall_summary(flat), _recall_summary(ev)
        extra["flat_reference"] = {k: a[k] for k in ("r1", "r5", "r10", "r1p")}
        extra["recall_loss_vs_flat"] = {k: a[k] - b[k] for k in ("r1", "r5", "r10", "r1p")}
    return ev, extra


def evaluate_checkpoints(models: Mapping[str, str | Path], dataset_dir: str | Path, out_dir: str | Path, *,
                         device: str = "cpu", metric: str = "euclidean", index: Any = "flat", batch_size: int = 64,
                         num_workers: int = 2, latency: bool | Mapping[str, Any] | LatencyConfig = True,
                         plots: bool = True, progress: bool = True, require: str | Sequence[str] = "auto",
                         num_neighbors: int = 25, per_query_k: int = 10, examples: int = 6,
                         baselines: bool | Sequence[str] = True, validate_clouds: bool = False) -> dict[str, Any]:
    """Evaluate each ``label -> checkpoint`` of ``models`` on ``dataset_dir``'s evaluation sets (the PointNetVLAD
    protocol) and write ``report.md``, ``report.json`` (with per-query results), ``results.csv`` and, with
    ``plots``, ``recall_at_n.png``, ``pair_heatmap.png``, ``examples.png`` into ``out_dir``.

    Args:
        models: label (``teacher``, ``student_distilled``, ``student_alone``, ...) → checkpoint file or run folder.
        dataset_dir: preprocessing output (``manifest.parquet``, ``benchmark_datasets/oxford_evaluation_*.pickle``).
        device: ``cpu`` / ``cuda``.
        metric: ``euclidean`` (raw descriptors, PointNetVLAD / MinkLoc++) or ``cosine`` (DistilVPR).
        index: ``flat`` (exact), ``ivf`` / ``hnsw`` (approximate; their recall loss against flat is measured and
            reported), ``numpy`` (brute-force reference), or an :class:`IndexSpec` / mapping of its fields.
        latency: measure extraction and matching latency (or a :class:`LatencyConfig` / mapping).
        require: modalities every evaluated row must have; ``auto``: every modality some model reads.
        per_query_k: retrievals kept per query in ``report.json``.
        examples: queries in the example mosaic.
        baselines: evaluate the training-free descriptors of both modalities (:mod:`.baselines`) on the same
            rows and sets (``True``), of the listed modalities only, or none (``False``). A modality whose files
            are missing for some evaluated row is skipped whole, logged and named in the report.
        validate_clouds: read every cloud of the evaluated rows once and drop non-finite ones (counted and logged
            as ``cloud_nonfinite``, for every model alike) instead of stopping at the first.

    Returns the summary (what ``report.json`` holds, less the per-query results).
    """
    import torch

    from crossmodal.data import PlaceDataModule
    from crossmodal.training.checkpoint import ROLES, build_model, load_checkpoint
    from crossmodal.training.trainer import model_modalities
    from crossmodal.training.validation import embed, load_eval_sets
    from preprocessing.manifest import read_manifest

    from . import report as report_mod
    from .latency import extraction_latency, matching_latency

    if not isinstance(models, Mapping) or not models:
        raise ValueError("models is empty: give at least one label -> checkpoint path (e.g. {'student': 'best.pt'})")
    check_metric(metric)
    spec = IndexSpec.parse(index)
    lat = LatencyConfig.parse(latency)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    dataset_dir, out_dir = Path(dataset_dir), Path(out_dir)
    read_manifest(dataset_dir)  # a clear error for a folder without a manifest, before any model is built
    t_start = time.perf_counter()

    # -- load every checkpoint first: the rows every model needs depend on all of them ------------------------
    loaded = []
    for label, path in models.items():
        path = resolve_checkpoint(path)
        ckpt = load_checkpoint(path, map_location="cpu")
        role = ckpt.get("role", "teacher")
        if role not in ROLES:
            raise ValueError(f"{path}: unknown checkpoint role {role!r}; expected one of {ROLES}")
        model = build_model(ckpt)
        mods = ("image",) if role == "student" else model_modalities(model)
        loaded.append((str(label), path, ckpt, model, mods))
    if require == "auto":
        req = tuple(m for m in ("image", "cloud") if any(m in mods for *_, mods in loaded))
    else:
        req = tuple([require] if isinstance(require, str) else require)

    info = machine_info(device)
    results: list[ModelResult] = []
    matching_cache: dict[int, dict[str, Any]] = {}
    from tqdm import tqdm

    for label, path, ckpt, model, mods in tqdm(loaded, desc="models", disable=not progress or len(loaded) < 2,
                                               dynamic_ncols=True):
        role = ckpt.get("role", "teacher")
        data_cfg = dict((ckpt.get("config") or {}).get("data") or {})
        image_size = (ckpt.get("input") or {}).get("image_size") or data_cfg.get("image_size")
        dm = PlaceDataModule(dataset_dir, modalities=list(mods), require=list(req), eval_batch_size=batch_size,
                             num_workers=num_workers, image_size=image_size, augment=False,
                             quantization_size=float(data_cfg.get("quantization_size", 0.01)),
                             validate_clouds=validate_clouds and "cloud" in req)
        ds = dm.dataset("eval", augment=False)
        if len(ds) == 0:
            dropped = ", ".join(f"{k}: {v}" for k, v in sorted(ds.skipped.items())) or "none in the manifest"
            raise ValueError(f"{dataset_dir}: no usable evaluation rows with {' + '.join(req)} for {label} "
                             f"({ckpt.get('model_class')}); dropped rows: {dropped}")
        sets = load_eval_sets(ds, "eval")
        loader = dm.eval_loader("eval", masks=False)
        model = model.to(device).eval()
        t0 = time.perf_counter()
        emb = embed(model, loader, device=device, progress=progress, desc=f"embed {label}")
        embed_s = time.perf_counter() - t0
        if emb.shape[0] != len(ds):
            raise RuntimeError(f"{label}: {emb.shape[0]} descriptors for {len(ds)} rows")
        ev, extra = _evaluate_descriptors(emb, sets, metric, spec, num_neighbors, per_query_k, progress, label)
        summary: dict[str, Any] = {
            "role": role, "checkpoint": str(path), "model_class": ckpt.get("model_class"),
            "epoch": ckpt.get("epoch"), "modalities": list(mods), **_recall_summary(ev), **extra,
            **_model_size(model), "descriptor_dim": int(emb.shape[1]), "descriptor_bytes": int(emb.shape[1]) * 4,
            "image_size": list(image_size) if image_size is not None else None,
            "rows": {"database": int(sum(len(r) for r in sets.database_rows)),
                     "queries": int(sum(len(r) for r in sets.query_rows))},
            "missing": dict(sets.missing), "skipped": dict(ds.skipped), "embed_s": embed_s,
            "index": ev.index,
        }
        if lat.enabled:
            lat_loader = loader
            if lat.batch_size and lat.batch_size != batch_size:
                lat_loader = torch.utils.data.DataLoader(ds, batch_size=int(lat.batch_size), shuffle=False,
                                                         collate_fn=loader.collate_fn, num_workers=0)
            batch = next(iter(lat_loader))
            extraction = extraction_latency(model, batch, device, lat.repeats, lat.warmup)
            dim = int(emb.shape[1])
            if dim not in matching_cache:
                matching_cache[dim] = matching_latency(dim, metric, spec, lat.db_sizes, lat.k, lat.single_queries,
                                                       lat.batched_queries, lat.seed, lat.repeats, progress)
            summary["latency"] = {"extraction": extraction, "matching": matching_cache[dim]}
        model.to("cpu")
        results.append(ModelResult(label, role, path, summary, ev, ds, sets, _run_names(ds, sets)))
        log.info("%s (%s): R@1 %.2f R@5 %.2f R@10 %.2f R@1%% %.2f over %d run pairs, %d queries", label, role,
                 summary["r1"], summary["r5"], summary["r10"], summary["r1p"], summary["pairs"], summary["queries"])

    first = results[0]
    baseline_summary = None
    if baselines:
        from .baselines import MODALITIES, evaluate_baselines

        t0 = time.perf_counter()
        baseline_summary = evaluate_baselines(first.dataset, first.sets, metric, num_neighbors,
                                              MODALITIES if baselines is True else tuple(baselines))
        baseline_summary["elapsed_s"] = time.perf_counter() - t0
        for name, b in baseline_summary["descriptors"].items():
            log.info("training-free %s (%s): R@1 %.2f R@1%% %.2f", name, b["modality"], b["r1"], b["r1p"])
    db_sizes = [len(r) for r in first.sets.database_rows]
    summary = {
        "format": REPORT_FORMAT, "created": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "dataset_dir": str(dataset_dir), "out_dir": str(out_dir),
        "protocol": {
            "name": "PointNetVLAD", "true_neighbour_radius_m": 25.0, "num_neighbors": int(num_neighbors),
            "pairs": "every ordered pair of evaluation runs (database run != query run)",
            "one_percent_rule": "k = max(int(round(len(database) / 100.0)), 1), Python's round (halves to even)",
            "one_percent_k": [one_percent_k(n) for n in db_sizes],
            "mean": "unweighted mean over run pairs",
        },
        "metric": metric, "metric_description": METRIC_DESCRIPTIONS[metric],
        "index": {**spec.to_dict(), "description": first.evaluation.index},
        "require": list(req), "runs": first.run_names, "database_sizes": db_sizes,
        "machine": info, "latency_config": dataclasses.asdict(lat) | {"db_sizes": list(lat.db_sizes)},
        "models": {r.label: r.summary for r in results},
        "baselines": baseline_summary,
        "pair_recall": {r.label: {"r1": _nan_to_none(r.evaluation.pair_recall_at_1),
                                  "r1p": _nan_to_none(r.evaluation.pair_recall_one_percent),
                                  "queries": r.evaluation.pair_queries.tolist(), "runs": r.run_names}
                        for r in results},
    }
    summary["files"] = report_mod.report_files(plots)
    summary["elapsed_s"] = time.perf_counter() - t_start
    report_mod.write_reports(out_dir, summary, results, plots=plots, examples=examples, progress=progress)
    return summary


def _nan_to_none(a: np.ndarray) -> list[list[float | None]]:
    return [[None if not np.isfinite(x) else float(x) for x in row] for row in np.asarray(a, float)]
