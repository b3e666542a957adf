"""The summary report of a preprocessing job (Markdown + JSON)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from preprocessing.errors import Skip
from preprocessing.io import atomic_write_json, atomic_write_text

MAX_LISTED = 50


@dataclasses.dataclass
class Report:
    raw_root: str | None = None
    output_dir: str = ""
    runs: list[str] = dataclasses.field(default_factory=list)
    runs_skipped: dict[str, str] = dataclasses.field(default_factory=dict)
    submaps: dict[str, dict[str, int]] = dataclasses.field(default_factory=dict)  # run -> set -> count
    runs_reused: list[str] = dataclasses.field(default_factory=list)
    pairs: int = 0
    images_written: int = 0
    images_reused: int = 0
    unpaired: list[dict] = dataclasses.field(default_factory=list)
    splits: dict[str, int] = dataclasses.field(default_factory=dict)
    eval_sets: dict[str, int] = dataclasses.field(default_factory=dict)
    skips: list[Skip] = dataclasses.field(default_factory=list)
    outputs: dict[str, str] = dataclasses.field(default_factory=dict)
    timings_s: dict[str, float] = dataclasses.field(default_factory=dict)
    settings: dict = dataclasses.field(default_factory=dict)

    def skip_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for s in self.skips:
            counts[s.kind] = counts.get(s.kind, 0) + 1
        return dict(sorted(counts.items()))

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        d["skip_counts"] = self.skip_counts()
        d["totals"] = {"runs": len(self.runs), "submaps": sum(sum(v.values()) for v in self.submaps.values()),
                       "pairs": self.pairs, "unpaired": len(self.unpaired), "skipped": len(self.skips)}
        return d

    def to_markdown(self) -> str:
        t = self.to_json()["totals"]
        lines = ["# Preprocessing report", "",
                 f"- raw root: `{self.raw_root}`", f"- output: `{self.output_dir}`",
                 f"- runs: {t['runs']} processed, {len(self.runs_skipped)} skipped, "
                 f"{len(self.runs_reused)} reused from an earlier run",
                 f"- submaps: {t['submaps']}", f"- paired submaps: {t['pairs']}, unpaired: {t['unpaired']}",
                 f"- images: {self.images_written} written, {self.images_reused} reused",
                 f"- skipped inputs: {t['skipped']}", ""]
        if self.timings_s:
            lines += ["## Timings", "", "| stage | seconds |", "|---|---:|"]
            lines += [f"| {k} | {v:.1f} |" for k, v in self.timings_s.items()] + [""]
        lines += ["## Submaps per run", "", "| run | 20m_10overlap | 20m |", "|---|---:|---:|"]
        for run in self.runs:
            s = self.submaps.get(run, {})
            lines.append(f"| {run} | {s.get('train', 0)} | {s.get('eval', 0)} |")
        lines.append("")
        if self.splits:
            lines += ["## Splits", "", "| split | samples |", "|---|---:|"]
            lines += [f"| {k} | {v} |" for k, v in self.splits.items()] + [""]
        if self.eval_sets:
            lines += ["## Evaluation sets", "", "| set | count |", "|---|---:|"]
            lines += [f"| {k} | {v} |" for k, v in self.eval_sets.items()] + [""]
        if self.runs_skipped:
            lines += ["## Skipped runs", "", "| folder | reason |", "|---|---|"]
            lines += [f"| {k} | {v} |" for k, v in self.runs_skipped.items()] + [""]
        if self.unpaired:
            lines += ["## Unpaired submaps", "", "| run | submap timestamp | nearest frame (s) | reason |",
                      "|---|---|---:|---|"]
            for u in self.unpaired[:MAX_LISTED]:
                lines.append(f"| {u['run']} | {u['timestamp']} | {u['nearest_dt_s']:.3f} | {u['reason']} |")
            if len(self.unpaired) > MAX_LISTED:
                lines.append(f"| ... | {len(self.unpaired) - MAX_LISTED} more in report.json | | |")
            lines.append("")
        if self.skips:
            lines += ["## Skipped inputs", "", "| reason | count |", "|---|---:|"]
            lines += [f"| {k} | {v} |" for k, v in self.skip_counts().items()]
            lines += ["", "First skipped files:", ""]
            lines += [f"- `{s.path}`: {s.kind} {s.detail}" for s in self.skips[:MAX_LISTED]] + [""]
        if self.outputs:
            lines += ["## Outputs", ""] + [f"- {k}: `{v}`" for k, v in self.outputs.items()] + [""]
        return "\n".join(lines)

    def write(self, folder: str | Path) -> tuple[Path, Path]:
        folder = Path(folder)
        md, js = folder / "report.md", folder / "report.json"
        atomic_write_json(js, self.to_json())
        atomic_write_text(md, self.to_markdown())
        return md, js
