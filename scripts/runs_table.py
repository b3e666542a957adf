#!/usr/bin/env python
"""One row per training run (a teacher or a student folder): the settings that tell the runs apart, read from the
run's resolved config.yaml, and its results from summary.json.

    python scripts/runs_table.py runs/train_teacher/*/* --csv docs/results/teacher_recipe.csv   # runs → results
    python scripts/runs_table.py --results docs/results/teacher_recipe.csv                     # results → table

Unfinished runs (no summary.json) are listed on stderr and left out.
"""

from __future__ import annotations

import csv
import io
import json
import sys
from pathlib import Path

FIELDS = ("run", "model", "image_branch", "cloud_pooling", "fusion", "augment", "cloud_augment", "loss_normalize",
          "epochs", "milestones", "train_rows", "best_epoch", "val_r1", "test_r1", "wall_s")


def _get(cfg: dict, dotted: str, default=None):
    node = cfg
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    return node


def _short(target: str | None) -> str:
    return "-" if not target else target.rsplit(".", 1)[-1]


def record(folder: Path) -> dict | None:
    import yaml

    summary_file, config_file = folder / "summary.json", folder / "config.yaml"
    if not summary_file.is_file() or not config_file.is_file():
        return None
    summary = json.loads(summary_file.read_text())
    cfg = yaml.safe_load(config_file.read_text())
    model = cfg.get("teacher") or cfg.get("student") or {}
    image = model.get("image") if isinstance(model.get("image"), dict) else (model if "cloud" not in model else {})
    cloud = model.get("cloud") or {}
    test = summary.get("test_best_checkpoint") or {}
    best = summary.get("best") or {}
    return {
        "run": str(folder), "model": _short(model.get("_target_")),
        "image_branch": _short(image.get("_target_")) if image else "-",
        "cloud_pooling": cloud.get("pooling", "-") if cloud else "-", "fusion": model.get("fusion", "-"),
        "augment": _get(cfg, "data.augment"), "cloud_augment": json.dumps(_get(cfg, "data.cloud_augment") or {}),
        "loss_normalize": _get(cfg, "teacher_loss.normalize", _get(cfg, "task_loss.normalize")),
        "epochs": _get(cfg, "trainer.epochs"), "milestones": json.dumps(_get(cfg, "optimizer.milestones")),
        "train_rows": summary.get("train_rows"), "best_epoch": best.get("epoch"), "val_r1": best.get("val_r1"),
        "test_r1": test.get("r1"), "wall_s": summary.get("wall_time_this_invocation_s"),
    }


def collect(folders: list[Path]) -> list[dict]:
    rows = []
    for folder in folders:
        r = record(folder)
        if r is None:
            print(f"skipped (unfinished: no summary.json / config.yaml): {folder}", file=sys.stderr)
        else:
            rows.append(r)
    return rows


def read_results(path: Path) -> list[dict]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def results_csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=FIELDS, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in r.items()})
    return buf.getvalue()


def _num(v, digits: int = 2) -> str:
    try:
        return f"{float(v):.{digits}f}"
    except (TypeError, ValueError):
        return "-"


def table(rows: list[dict]) -> str:
    lines = [("| model | image branch | cloud pooling | fusion | augment | cloud augment overrides | L2 in loss "
              "| epochs (lr steps) | train rows | best epoch | val R@1 | test R@1 |"),
             "|---|---|---|---|---|---|---|---|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['image_branch']} | {r['cloud_pooling']} | {r['fusion']} | "
                     f"{r['augment']} | `{r['cloud_augment']}` | {r['loss_normalize']} | "
                     f"{r['epochs']} ({r['milestones']}) | "
                     f"{r['train_rows']} | {r['best_epoch']} | {_num(r['val_r1'])} | {_num(r['test_r1'])} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from crossmodal.evaluation.results import results_main

    return results_main(argv, __doc__, collect=collect, read=read_results, to_csv=results_csv, render=table)


if __name__ == "__main__":
    sys.exit(main())
