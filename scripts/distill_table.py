#!/usr/bin/env python
"""Mean ± std over seeds of distillation runs: one line per distill choice (the distilled student), plus the
student alone and the teacher, from the run folders' summary.json files.

    python scripts/distill_table.py runs/distill_sweep/<time>            # a multirun folder
    python scripts/distill_table.py runs/distill_sweep/a runs/distill_sweep/b --markdown table.md

Columns: validation Recall@1 of the selected epoch, test Recall@1 and Recall@1% (PointNetVLAD protocol), seeds.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict
from pathlib import Path


def _stats(values: list[float]) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def collect(folders: list[Path]) -> dict[str, dict[str, list[float]]]:
    groups: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    seen_alone: set[str] = set()
    teachers: set[str] = set()
    for folder in folders:
        for summary_file in sorted(folder.rglob("summary.json")):
            summary = json.loads(summary_file.read_text())
            if "rows" not in summary or "distill" not in summary:
                continue  # a model's own summary, not a distillation run
            for row, label in zip(summary["rows"], _labels(summary)):
                if label == "student alone":
                    key = row.get("run_dir") or ""
                    if key in seen_alone:
                        continue  # one student alone per seed, shared by the distill choices
                    seen_alone.add(key)
                if label == "teacher":
                    if (row.get("run_dir") or "") in teachers:
                        continue
                    teachers.add(row.get("run_dir") or "")
                g = groups[label]
                for k in ("val_r1", "test_r1", "test_r1p"):
                    if row.get(k) is not None:
                        g[k].append(float(row[k]))
                g["seeds"].append(summary.get("seed", 0))
    return groups


def _labels(summary: dict) -> list[str]:
    out = []
    for row in summary["rows"]:
        name = row["model"]
        if name.startswith("teacher"):
            out.append("teacher")
        elif name.endswith(" alone") or summary["distill"] == "none":
            out.append("student alone")
        else:
            out.append(f"distill={summary['distill']}")
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folders", nargs="+", type=Path)
    p.add_argument("--markdown", type=Path, help="also write the table to this file")
    args = p.parse_args()
    groups = collect(args.folders)
    if not groups:
        raise SystemExit(f"no distillation summary.json under {[str(f) for f in args.folders]}")
    order = sorted(groups, key=lambda k: (k != "teacher", k != "student alone", k))
    lines = ["| model | val R@1 | test R@1 | test R@1% | runs |", "|---|---:|---:|---:|---:|"]
    for k in order:
        g = groups[k]
        lines.append(f"| {k} | {_stats(g['val_r1'])} | {_stats(g['test_r1'])} | {_stats(g['test_r1p'])} | "
                     f"{len(g['seeds'])} |")
    text = "\n".join(lines)
    print(text)
    if args.markdown:
        args.markdown.write_text(text + "\n")


if __name__ == "__main__":
    main()
