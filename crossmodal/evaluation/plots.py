"""Report plots (matplotlib's Agg canvas, no pyplot state): Recall@N curves, a per-run-pair Recall@1 heatmap per
model, and a mosaic of example queries with their top-3 retrievals marked right (green) or wrong (red)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from preprocessing.io import atomic_path

from .report import PLOTS


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", bbox_inches="tight")
    return path


def _short(run: str) -> str:
    """``2014-05-19-13-20-57`` → ``14-05-19 13:20``; other names unchanged (at most 16 characters)."""
    parts = run.split("-")
    if len(parts) == 6 and all(p.isdigit() for p in parts):
        return f"{parts[0][2:]}-{parts[1]}-{parts[2]} {parts[3]}:{parts[4]}"
    return run if len(run) <= 16 else run[:15] + "…"


def plot_recall_curves(results: Sequence[Any], path: Path) -> Path:
    fig = _figure(6.4, 4.2)
    ax = fig.add_subplot(1, 1, 1)
    for r in results:
        rec = r.evaluation.recall
        n = np.arange(1, len(rec.recall_at) + 1)
        ax.plot(n, rec.recall_at, marker="o", markersize=3,
                label=f"{r.label} ({r.role}): R@1 {rec.recall_at[0]:.1f}, R@1% {rec.recall_one_percent:.1f}")
    ax.set_xlabel("N (top-N retrievals)")
    ax.set_ylabel("Recall@N (%)")
    ax.set_xlim(1, max(len(r.evaluation.recall.recall_at) for r in results))
    ax.set_ylim(0, 100)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title(f"Recall@N, mean over run pairs ({results[0].evaluation.recall.metric})", fontsize=10)
    return _save(fig, path)


def plot_pair_heatmaps(results: Sequence[Any], path: Path) -> Path:
    k = len(results)
    runs = len(results[0].run_names)
    cell = max(0.35, min(0.6, 6.0 / max(runs, 1)))
    size = max(3.2, runs * cell + 1.6)
    fig = _figure(size * k, size)
    annotate = runs <= 10
    im = None
    for j, r in enumerate(results):
        ax = fig.add_subplot(1, k, j + 1)
        mat = np.ma.masked_invalid(np.asarray(r.evaluation.pair_recall_at_1, float))
        im = ax.imshow(mat, vmin=0, vmax=100, cmap="viridis")
        names = [_short(x) for x in r.run_names]
        ax.set_xticks(range(runs), names, rotation=90, fontsize=7)
        ax.set_yticks(range(runs), names if j == 0 else [], fontsize=7)
        ax.set_xlabel("query run")
        if j == 0:
            ax.set_ylabel("database run")
        ax.set_title(f"{r.label} ({r.role})", fontsize=9)
        if annotate:
            for (a, b), v in np.ndenumerate(np.asarray(r.evaluation.pair_recall_at_1, float)):
                if np.isfinite(v):
                    ax.text(b, a, f"{v:.0f}", ha="center", va="center", fontsize=7,
                            color="white" if v < 60 else "black")
    fig.suptitle("Recall@1 (%) per (database run, query run); blank: not evaluated", fontsize=10)
    if im is not None:
        fig.colorbar(im, ax=fig.axes, shrink=0.8, label="Recall@1 (%)")
    return _save(fig, path)


def pick_examples(hit: np.ndarray, count: int, seed: int = 0) -> np.ndarray:
    """Up to ``count`` row indices, half of them hits and half misses when both exist, in row order."""
    rng = np.random.default_rng(seed)
    hits, misses = np.flatnonzero(hit), np.flatnonzero(~hit)
    n_miss = min(len(misses), count // 2)
    n_hit = min(len(hits), count - n_miss)
    n_miss = min(len(misses), count - n_hit)
    chosen = np.concatenate([rng.choice(hits, n_hit, replace=False) if n_hit else np.zeros(0, np.int64),
                             rng.choice(misses, n_miss, replace=False) if n_miss else np.zeros(0, np.int64)])
    return np.sort(chosen.astype(np.int64))


def _load_thumb(path: str | None):
    if not path:
        return None
    try:
        from PIL import Image

        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except (OSError, ValueError):
        return None


def plot_examples(result: Any, path: Path, count: int = 6, top: int = 3, seed: int = 0) -> Path:
    ev, ds, sets = result.evaluation, result.dataset, result.sets
    qr = ev.queries
    rows = pick_examples(qr.hit_at_1, count, seed)
    cols = 1 + top
    fig = _figure(2.3 * cols, 1.9 * max(len(rows), 1) + 0.4)
    fig.suptitle(f"{result.label}: example queries and top-{top} retrievals (green: within 25 m, red: wrong)",
                 fontsize=10)
    pos = ds.positions
    for i, row in enumerate(rows):
        m, n, qi = int(qr.database_run[row]), int(qr.query_run[row]), int(qr.query_index[row])
        q_row = int(sets.query_rows[n][qi])
        panels = [(q_row, f"query, {_short(result.run_names[n])}", "black")]
        ids = qr.top_ids[row]
        for rank in range(top):
            if rank >= len(ids) or ids[rank] < 0:
                panels.append((None, "", "white"))
                continue
            db_row = int(sets.database_rows[m][ids[rank]])
            err = float(np.linalg.norm(pos[q_row] - pos[db_row]))
            ok = _is_true(result, row, rank)
            title = f"#{rank + 1} {_short(result.run_names[m])}\nd {qr.distances[row, rank]:.3g}, {err:.0f} m"
            panels.append((db_row, title, "tab:green" if ok else "tab:red"))
        for j, (ds_row, title, colour) in enumerate(panels):
            ax = fig.add_subplot(max(len(rows), 1), cols, i * cols + j + 1)
            img = _load_thumb(ds.image_paths[ds_row]) if ds_row is not None else None
            if img is not None:
                ax.imshow(img)
            else:
                ax.text(0.5, 0.5, "no image" if ds_row is not None else "", ha="center", va="center")
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_edgecolor(colour)
                spine.set_linewidth(4 if j else 1)
            ax.set_title(title, fontsize=7)
    if not len(rows):
        ax = fig.add_subplot(1, 1, 1)
        ax.text(0.5, 0.5, "no evaluated queries", ha="center", va="center")
    return _save(fig, path)


def _is_true(result: Any, row: int, rank: int) -> bool:
    """Whether the ``rank``-th retrieval of per-query row ``row`` is a true neighbour (from the query set)."""
    qr, sets = result.evaluation.queries, result.sets
    m, n, qi = int(qr.database_run[row]), int(qr.query_run[row]), int(qr.query_index[row])
    truth = sets.query_sets[n][sorted(sets.query_sets[n])[qi]].get(m, [])
    return int(qr.top_ids[row, rank]) in {int(t) for t in truth}


def write_plots(out_dir: Path, results: Sequence[Any], examples: int = 6) -> dict[str, Path]:
    """The three report plots; the example mosaic shows the first student (else the first model)."""
    out_dir = Path(out_dir)
    written = {"recall_curves": plot_recall_curves(results, out_dir / PLOTS["recall_curves"]),
               "pair_heatmap": plot_pair_heatmaps(results, out_dir / PLOTS["pair_heatmap"])}
    shown = next((r for r in results if r.role == "student"), results[0])
    written["examples"] = plot_examples(shown, out_dir / PLOTS["examples"], count=max(int(examples), 1))
    return written

