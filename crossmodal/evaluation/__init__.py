"""Place-recognition evaluation: the PointNetVLAD protocol, faiss search, reports, plots and latency.

- :func:`evaluate_checkpoints`: checkpoints → ``report.md`` / ``report.json`` / ``results.csv`` / plots.
- :func:`pnv_evaluate` / :func:`pnv_recall`: the protocol on descriptors (per-pair and per-query results).
- :class:`SearchIndex` / :class:`IndexSpec`: faiss flat / IVF / HNSW or numpy brute force.
- :func:`collect_reports` / :func:`comparison_markdown`: several evaluations → one table.

Names are loaded on first use (no torch / faiss / matplotlib import at package import).
"""

from __future__ import annotations

from crossmodal.lazy import lazy_exports

_EXPORTS = {
    "evaluate_checkpoints": "checkpoints", "resolve_checkpoint": "checkpoints", "per_query_records": "checkpoints",
    "pnv_evaluate": "protocol", "pnv_recall": "protocol", "one_percent_k": "protocol", "RecallResult": "protocol",
    "Evaluation": "protocol", "QueryResults": "protocol",
    "IndexSpec": "search", "SearchIndex": "search", "build_index": "search", "METRICS": "search",
    "LatencyConfig": "latency", "machine_info": "latency", "machine_line": "latency",
    "extraction_latency": "latency", "matching_latency": "latency",
    "collect_reports": "report", "comparison_markdown": "report", "markdown_report": "report",
    "find_reports": "report",
}

__all__ = list(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
