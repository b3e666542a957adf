"""The command-line flow shared by the study-table scripts (``scripts/distill_table.py``, ``scripts/runs_table.py``):
run folders → records → a results CSV (the file a docs table is generated from) → a Markdown table, or the results
CSV → the same table."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

Records = list[dict[str, Any]]


def results_main(argv: list[str] | None, description: str, *, collect: Callable[[list[Path]], Records],
                 read: Callable[[Path], Records], to_csv: Callable[[Records], str],
                 render: Callable[[Records], str]) -> int:
    """Parse ``folders... | --results FILE``, ``--csv``, ``--markdown`` and run :func:`results_cli`."""
    import argparse

    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folders", nargs="*", type=Path, help="run folders (searched for their summary.json)")
    p.add_argument("--results", type=Path, help="read the records from this results CSV instead of run folders")
    p.add_argument("--csv", type=Path, help="write the records (the results file) here")
    p.add_argument("--markdown", type=Path, help="also write the table to this file")
    args = p.parse_args(argv)
    return results_cli(args.folders, args.results, args.csv, args.markdown, collect=collect, read=read,
                       to_csv=to_csv, render=render)


def results_cli(folders: list[Path], results: Path | None, csv_out: Path | None, markdown_out: Path | None, *,
                collect: Callable[[list[Path]], Records], read: Callable[[Path], Records],
                to_csv: Callable[[Records], str], render: Callable[[Records], str]) -> int:
    """Exit code 0 after printing the table (and writing ``csv_out`` / ``markdown_out`` atomically); 2 with a
    one-line error for a bad invocation, a missing results file or no records."""
    from preprocessing.io import atomic_write_text

    if bool(folders) == bool(results):
        print("error: give run folders or --results FILE (one of the two)", file=sys.stderr)
        return 2
    if results is not None:
        if not results.is_file():
            print(f"error: {results}: no such results file", file=sys.stderr)
            return 2
        records = read(results)
    else:
        records = collect(folders)
    if not records:
        source = str(results) if results is not None else ", ".join(str(f) for f in folders)
        print(f"error: no records in {source} (no finished run, or an empty results file)", file=sys.stderr)
        return 2
    if csv_out is not None:
        csv_out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(csv_out, to_csv(records))
    text = render(records)
    print(text)
    if markdown_out is not None:
        atomic_write_text(markdown_out, text + "\n")
    return 0
