#!/usr/bin/env python
"""A study's table from its distillation runs: mean ± 95 % confidence interval over seeds per distill choice, and
the paired difference of test Recall@1 against the student alone of the same seed (with its interval).

    python scripts/distill_table.py runs/distill_sweep/<time> --csv docs/results/study.csv   # runs → results file
    python scripts/distill_table.py --results docs/results/study.csv --markdown table.md      # results file → table

The results file (one row per model and seed: model, distill, seed, val_r1, test_r1, test_r1p, run_dir) is what
the table is generated from; docs tables name it and the command that produced it. Columns of the table:
validation Recall@1 of the selected epoch, test Recall@1 and Recall@1% (PointNetVLAD protocol), Δ test R@1 vs
the student alone (paired by seed), the share of the student-alone-to-teacher gap closed, and the seed count.
"""

from __future__ import annotations

import csv
import io
import json
import sys
from collections import defaultdict
from pathlib import Path

FIELDS = ("model", "distill", "seed", "val_r1", "test_r1", "test_r1p", "run_dir")
ALONE, TEACHER = "student alone", "teacher"


def _label(name: str, distill: str) -> str:
    if name.startswith("teacher"):
        return TEACHER
    if name.endswith(" alone") or distill == "none":
        return ALONE
    return f"distill={distill}"


def collect(folders: list[Path]) -> list[dict]:
    """One record per (model, seed) from the distillation runs' ``summary.json`` under ``folders`` (a student
    alone or a teacher shared by several runs is counted once)."""
    records, seen = [], set()
    for folder in folders:
        for summary_file in sorted(folder.rglob("summary.json")):
            summary = json.loads(summary_file.read_text())
            if "rows" not in summary or "distill" not in summary:
                continue  # a model's own summary, not a distillation run
            for row in summary["rows"]:
                label = _label(row["model"], summary["distill"])
                # the teacher is shared by every seed of a sweep; a student alone by every distill choice of a seed
                key = (label, row.get("run_dir") or str(summary_file),
                       None if label == TEACHER else summary.get("seed", 0))
                if label in (ALONE, TEACHER) and key in seen:
                    continue
                seen.add(key)
                records.append({"model": label, "distill": summary["distill"], "seed": int(summary.get("seed", 0)),
                                **{k: row.get(k) for k in ("val_r1", "test_r1", "test_r1p")},
                                "run_dir": row.get("run_dir") or str(summary_file.parent)})
    return records


def read_results(path: Path) -> list[dict]:
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        r["seed"] = int(r["seed"])
        for k in ("val_r1", "test_r1", "test_r1p"):
            r[k] = float(r[k]) if r.get(k) not in (None, "") else None
    return rows


def results_csv(records: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=FIELDS, lineterminator="\n", extrasaction="ignore")
    w.writeheader()
    for r in records:
        w.writerow({k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in r.items()})
    return buf.getvalue()


def table(records: list[dict]) -> str:
    from crossmodal.evaluation.seeds import mean_ci, paired_difference

    by_model: dict[str, dict[str, dict[int, float]]] = defaultdict(lambda: defaultdict(dict))
    for r in records:
        for k in ("val_r1", "test_r1", "test_r1p"):
            if r.get(k) is not None:
                by_model[r["model"]][k][r["seed"]] = float(r[k])
    alone = by_model.get(ALONE, {}).get("test_r1", {})
    teacher = mean_ci(list(by_model.get(TEACHER, {}).get("test_r1", {}).values()))
    order = sorted(by_model, key=lambda k: (k != TEACHER, k != ALONE, k))
    lines = ["| model | val R@1 | test R@1 | test R@1% | Δ test R@1 vs alone (paired) | gap closed | seeds |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for k in order:
        g = by_model[k]
        test = mean_ci(list(g["test_r1"].values()))
        delta, closed = "-", "-"
        if k not in (ALONE, TEACHER) and alone:
            d = paired_difference(g["test_r1"], alone)
            delta = d.format() + (" *" if d.excludes_zero() else "")
            gap = teacher.mean - mean_ci(list(alone.values())).mean
            if teacher.n and gap > 0:
                closed = f"{100.0 * d.mean / gap:.0f} %"
        lines.append(f"| {k} | {mean_ci(list(g['val_r1'].values())).format()} | {test.format()} | "
                     f"{mean_ci(list(g['test_r1p'].values())).format()} | {delta} | {closed} | "
                     f"{len(g['test_r1'])} |")
    lines += ["", ("Mean ± half-width of the 95 % confidence interval (Student's t over seeds); Δ: test R@1 minus "
                   "the student alone's of the same seed, * where its interval excludes 0; gap closed: mean Δ over "
                   "(teacher − student alone) test R@1.")]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from crossmodal.evaluation.results import results_main

    return results_main(argv, __doc__, collect=collect, read=read_results, to_csv=results_csv, render=table)


if __name__ == "__main__":
    sys.exit(main())
