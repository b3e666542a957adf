#!/usr/bin/env python
"""Collect several evaluation reports into one comparison table.

    python scripts/collect_reports.py runs/evaluate/<time1> runs/evaluate/<time2> runs/distill/
    python scripts/collect_reports.py runs/ --out comparison.md --csv comparison.csv

Each argument is a report.json, a folder holding one, or a folder searched below for them (scripts/evaluate.py
and the end of scripts/distill.py write them). Prints a Markdown table: one row per (report, model).
"""

import argparse
import sys
from pathlib import Path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="+", help="report.json files or folders holding them (searched below)")
    parser.add_argument("--out", type=Path, help="also write the Markdown table here")
    parser.add_argument("--csv", type=Path, help="also write the rows as CSV here")
    args = parser.parse_args(argv)

    from crossmodal.evaluation.report import (
        collect_reports,
        comparison_markdown,
        to_csv,
    )
    from preprocessing.io import atomic_write_text

    try:
        rows = collect_reports(args.paths)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    table = comparison_markdown(rows)
    print(table, end="")
    if args.out:
        atomic_write_text(args.out, table)
    if args.csv:
        fields = list(dict.fromkeys(k for r in rows for k in r))
        atomic_write_text(args.csv, to_csv(fields, rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
