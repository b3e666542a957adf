"""Report files of an evaluation (``report.md``, ``report.json``, ``results.csv``, plots) and the comparison of
several evaluations (``scripts/collect_reports.py``). Every file is written atomically."""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from preprocessing.io import atomic_write_text

from .latency import machine_line

REPORT_MD, REPORT_JSON, RESULTS_CSV = "report.md", "report.json", "results.csv"
PLOTS = {"recall_curves": "recall_at_n.png", "pair_heatmap": "pair_heatmap.png", "examples": "examples.png"}


def report_files(plots: bool = True) -> dict[str, str]:
    files = {"markdown": REPORT_MD, "json": REPORT_JSON, "csv": RESULTS_CSV}
    return files | (dict(PLOTS) if plots else {})


# -- formatting ---------------------------------------------------------------------------------------------
def _f(x: Any, digits: int = 2) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    return f"{x:.{digits}f}"


def _params(n: int | None) -> str:
    return "-" if n is None else f"{n / 1e6:.2f} M"


def _ms(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x:.3f}" if x < 1 else f"{x:.1f}" if x < 100 else f"{x:.0f}"


def _latency_cell(m: Mapping[str, Any]) -> str:
    ex = (m.get("latency") or {}).get("extraction")
    if not ex:
        return "not measured"
    return f"{_ms(ex['batched_ms'])} (batch {ex['batch_size']}); {_ms(ex['batch_1_ms'])} (batch 1)"


def _size_label(n: str | int) -> str:
    n = int(n)
    return f"{n // 1_000_000}M" if n >= 1_000_000 and n % 1_000_000 == 0 else \
        f"{n // 1000}k" if n >= 1000 and n % 1000 == 0 else str(n)


def _table(header: Sequence[str], rows: Iterable[Sequence[Any]], align: Sequence[str] | None = None) -> str:
    align = align or ["---"] + ["---:"] * (len(header) - 1)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def markdown_report(summary: Mapping[str, Any]) -> str:
    """``report.md`` of an evaluation summary."""
    models = summary["models"]
    proto = summary["protocol"]
    runs = summary.get("runs", [])
    first = next(iter(models.values()))
    lines = ["# Evaluation report", ""]
    lines.append(f"Dataset: `{summary['dataset_dir']}`: {len(runs)} evaluation runs, "
                 f"{first['pairs']} ordered run pairs, {first['queries']} (query, database run) evaluations, "
                 f"database sizes {min(summary['database_sizes'])}–{max(summary['database_sizes'])} per run.")
    lines.append("")
    lines.append(f"Protocol: {proto['name']}: {proto['pairs']}; true neighbours within "
                 f"{proto['true_neighbour_radius_m']:g} m; Recall@N for N = 1..{proto['num_neighbors']} and "
                 f"Recall@1% ({proto['one_percent_rule']}), per pair hits / evaluated queries, "
                 f"{proto['mean']}.")
    lines.append("")
    lines.append(f"Ranking: **{summary['metric']}**, {summary['metric_description']}. "
                 f"Search: {summary['index']['description']}.")
    lines.append("")
    lines.append(f"Machine: {machine_line(summary['machine'])}.")
    lines.append("")
    header = ["model", "role", "R@1", "R@5", "R@10", "R@1%", "parameters", "descriptor", "model MB",
              "latency ms/image"]
    rows = [[label, m["role"], _f(m["r1"]), _f(m["r5"]), _f(m["r10"]), _f(m["r1p"]), _params(m["parameters"]),
             f"{m['descriptor_dim']} × float32 ({m['descriptor_bytes']} B)", _f(m["model_mb"], 1),
             _latency_cell(m)] for label, m in models.items()]
    base = summary.get("baselines") or {}
    for name, b in (base.get("descriptors") or {}).items():
        rows.append([f"{name} (training-free)", f"baseline, {b['modality']}", _f(b["r1"]), _f(b["r5"]),
                     _f(b["r10"]), _f(b["r1p"]), "0", f"{b['dim']} × float64", "-", "-"])
    lines += [_table(header, rows, ["---", "---"] + ["---:"] * 8), ""]
    if base:
        note = ("Training-free baselines (`crossmodal.baselines.handcrafted`, as `scripts/dataset_difficulty.py`) "
                "on the same rows and sets: a learned model below them has learned nothing useful.")
        for modality, reason in (base.get("skipped") or {}).items():
            note += f" {modality.capitalize()} baselines skipped: {reason}."
        lines += [note, ""]
    lines.append("Modalities read: " + "; ".join(f"{label}: {' + '.join(m['modalities'])}"
                                                for label, m in models.items())
                 + f". Rows required to have: {' + '.join(summary['require'])}.")
    lines.append("")

    lat_models = {k: m for k, m in models.items() if m.get("latency")}
    if lat_models:
        sizes = list(next(iter(lat_models.values()))["latency"]["matching"])
        lcfg = summary.get("latency_config", {})
        lines += ["## Latency", ""]
        lines.append(f"Descriptor extraction: the model's forward on a collated evaluation batch (image decoding, "
                     f"resizing and cloud quantisation excluded), median of {lcfg.get('repeats', '?')} runs after "
                     f"a warm-up until the time is stable, ms per image. Matching: top-{lcfg.get('k', 25)} search "
                     f"with the index above in a database of random descriptors of the model's size; single = one "
                     f"query per call, batched = {lcfg.get('batched_queries', '?')} queries per call (ms per "
                     f"query).")
        lines.append("")
        header = ["model", "extract ms/image, batch 1", "extract ms/image, batched"]
        for n in sizes:
            header += [f"match {_size_label(n)} single ms", f"match {_size_label(n)} batched ms"]
        rows = []
        for label, m in lat_models.items():
            ex, ma = m["latency"]["extraction"], m["latency"]["matching"]
            row = [label, _ms(ex["batch_1_ms"]), f"{_ms(ex['batched_ms'])} (batch {ex['batch_size']})"]
            for n in sizes:
                row += [_ms(ma[n]["single_ms"]), _ms(ma[n]["batched_ms"])]
            rows.append(row)
        lines += [_table(header, rows), ""]

    approx = {k: m for k, m in models.items() if "recall_loss_vs_flat" in m}
    if approx:
        lines += ["## Approximate search vs exact (flat)", ""]
        header = ["model", "R@1 flat", "R@1 here", "R@1 loss", "R@1% flat", "R@1% here", "R@1% loss"]
        rows = [[label, _f(m["flat_reference"]["r1"]), _f(m["r1"]), _f(m["recall_loss_vs_flat"]["r1"]),
                 _f(m["flat_reference"]["r1p"]), _f(m["r1p"]), _f(m["recall_loss_vs_flat"]["r1p"])]
                for label, m in approx.items()]
        lines += [_table(header, rows), ""]

    lines += ["## Data", ""]
    for label, m in models.items():
        miss = m.get("missing") or {}
        skipped = m.get("skipped") or {}
        note = (f"{label}: {m['rows']['database']} database and {m['rows']['queries']} query rows embedded"
                f" in {m.get('embed_s', 0):.1f} s")
        if any(miss.values()):
            note += f"; left out (rows the dataset dropped): {miss.get('database', 0)} database, " \
                    f"{miss.get('query', 0)} query entries"
        if skipped:
            note += "; dropped rows: " + ", ".join(f"{k} {v}" for k, v in sorted(skipped.items()))
        lines.append(f"- {note}; checkpoint `{m['checkpoint']}` (epoch {m.get('epoch')}).")
    lines.append("")
    files = summary.get("files") or {}
    if files:
        lines += ["## Files", ""]
        desc = {"json": "summary and per-query results (top-k ids, distances, hit, metric error)",
                "csv": "one row per model", "recall_curves": "Recall@N curves",
                "pair_heatmap": "Recall@1 per (database run, query run)",
                "examples": "example queries with their top-3 retrievals (green: true neighbour, red: wrong)"}
        for key, name in files.items():
            if key in desc:
                lines.append(f"- `{name}`: {desc[key]}")
        for key in ("recall_curves", "pair_heatmap", "examples"):
            if key in files:
                lines += ["", f"![{key}]({files[key]})"]
        lines.append("")
    return "\n".join(lines)


CSV_FIELDS = ["label", "role", "checkpoint", "model_class", "metric", "index", "r1", "r5", "r10", "r1p", "r25",
              "pairs", "queries", "parameters", "descriptor_dim", "descriptor_bytes", "model_mb",
              "extract_batch1_ms", "extract_batched_ms", "extract_batch_size"]


def csv_rows(summary: Mapping[str, Any]) -> tuple[list[str], list[dict[str, Any]]]:
    fields = list(CSV_FIELDS)
    rows = []
    for label, m in summary["models"].items():
        row = {"label": label, "role": m["role"], "checkpoint": m["checkpoint"], "model_class": m["model_class"],
               "metric": summary["metric"], "index": summary["index"]["kind"], "r1": m["r1"], "r5": m["r5"],
               "r10": m["r10"], "r1p": m["r1p"], "r25": m["recall_at"][-1], "pairs": m["pairs"],
               "queries": m["queries"], "parameters": m["parameters"], "descriptor_dim": m["descriptor_dim"],
               "descriptor_bytes": m["descriptor_bytes"], "model_mb": m["model_mb"]}
        lat = m.get("latency")
        if lat:
            ex = lat["extraction"]
            row.update(extract_batch1_ms=ex["batch_1_ms"], extract_batched_ms=ex["batched_ms"],
                       extract_batch_size=ex["batch_size"])
            for n, v in lat["matching"].items():
                for kind in ("single", "batched"):
                    key = f"match_{_size_label(n)}_{kind}_ms"
                    if key not in fields:
                        fields.append(key)
                    row[key] = v[f"{kind}_ms"]
        if "recall_loss_vs_flat" in m:
            for k in ("r1", "r1p"):
                key = f"{k}_loss_vs_flat"
                if key not in fields:
                    fields.append(key)
                row[key] = m["recall_loss_vs_flat"][k]
        rows.append(row)
    for name, b in ((summary.get("baselines") or {}).get("descriptors") or {}).items():
        rows.append({"label": name, "role": f"baseline_{b['modality']}", "metric": summary["metric"],
                     "index": "flat", "r1": b["r1"], "r5": b["r5"], "r10": b["r10"], "r1p": b["r1p"],
                     "parameters": 0, "descriptor_dim": b["dim"], "descriptor_bytes": b["dim"] * 8})
    return fields, rows


def to_csv(fields: Sequence[str], rows: Iterable[Mapping[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(fields), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    return buf.getvalue()


def write_reports(out_dir: str | Path, summary: Mapping[str, Any], results: Sequence[Any], plots: bool = True,
                  examples: int = 6, progress: bool = False) -> dict[str, Path]:
    """Write the report files of ``summary`` (and the per-query results / plots from ``results``, the
    :class:`~crossmodal.evaluation.checkpoints.ModelResult` list) into ``out_dir``."""
    from .checkpoints import per_query_records

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    if plots:
        from . import plots as plots_mod

        written.update(plots_mod.write_plots(out, results, examples=examples))
    report = dict(summary)
    report["per_query"] = {r.label: per_query_records(r.evaluation, r.dataset, r.sets, r.run_names) for r in results}
    atomic_write_text(out / REPORT_JSON, json.dumps(report, indent=1, default=str, allow_nan=False) + "\n")
    fields, rows = csv_rows(summary)
    atomic_write_text(out / RESULTS_CSV, to_csv(fields, rows))
    atomic_write_text(out / REPORT_MD, markdown_report(summary))
    written.update({"json": out / REPORT_JSON, "csv": out / RESULTS_CSV, "markdown": out / REPORT_MD})
    return written


# -- several evaluations → one table --------------------------------------------------------------------------
def find_reports(paths: Iterable[str | Path]) -> list[Path]:
    """``report.json`` files: each path is a report file, a folder holding one, or a folder searched below."""
    found: list[Path] = []
    for p in paths:
        p = Path(p)
        if p.is_file():
            found.append(p)
        elif (p / REPORT_JSON).is_file():
            found.append(p / REPORT_JSON)
        elif p.is_dir():
            below = sorted(p.rglob(REPORT_JSON))
            if not below:
                raise FileNotFoundError(f"{p}: no {REPORT_JSON} in this folder or below (run scripts/evaluate.py)")
            found += below
        else:
            raise FileNotFoundError(f"{p}: no such file or folder")
    return list(dict.fromkeys(found))


def load_report(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: cannot read an evaluation report ({exc})") from None
    if not isinstance(report, dict) or report.get("format") != "crossmodal-evaluation/1":
        raise ValueError(f"{path}: not a crossmodal evaluation report (format "
                         f"{report.get('format') if isinstance(report, dict) else None!r})")
    return report


def collect_reports(paths: Iterable[str | Path]) -> list[dict[str, Any]]:
    """One row per (report, model): run folder, label, role, metric, index, recall, size, latency, machine."""
    rows = []
    for path in find_reports(paths):
        report = load_report(path)
        _, model_rows = csv_rows(report)
        machine = report.get("machine", {})
        for row in model_rows:
            row = {"run": str(path.parent), "dataset": report.get("dataset_dir"),
                   "machine": f"{machine.get('cpu', '?')}, {machine.get('torch_threads', '?')} threads, "
                              f"{machine.get('device', 'cpu')}", **row}
            rows.append(row)
    return rows


def comparison_markdown(rows: Sequence[Mapping[str, Any]]) -> str:
    """The comparison table of :func:`collect_reports` rows (Markdown)."""
    if not rows:
        return "(no evaluations)\n"
    datasets = {r.get("dataset") for r in rows}
    header = ["run", "model", "role", "metric", "R@1", "R@5", "R@10", "R@1%", "parameters", "descriptor",
              "model MB", "ms/image (batched)", "machine"]
    if len(datasets) > 1:
        header.insert(1, "dataset")
    body = []
    for r in rows:
        metric = r["metric"] + ("" if r["index"] in ("flat", "numpy") else f" ({r['index']})")
        lat = "-" if r.get("extract_batched_ms") in (None, "") else \
            f"{_ms(float(r['extract_batched_ms']))} (batch {r['extract_batch_size']})"
        row = [r["run"], r["label"], r["role"], metric, _f(r["r1"]), _f(r["r5"]), _f(r["r10"]), _f(r["r1p"]),
               _params(r["parameters"]), str(r["descriptor_dim"]), _f(r.get("model_mb"), 1), lat, r["machine"]]
        if len(datasets) > 1:
            row.insert(1, str(r.get("dataset")))
        body.append(row)
    align = ["---"] * (4 if len(datasets) == 1 else 5) + ["---:"] * 8 + ["---"]
    return _table(header, body, align) + "\n"
