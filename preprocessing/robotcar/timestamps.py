"""``<sensor>.timestamps`` files: one ``<16-digit UNIX microseconds> <chunk>`` per line."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from preprocessing.errors import InputError, SkipLog


def read_timestamps(path: str | Path, skips: SkipLog | None = None) -> np.ndarray:
    """Timestamps (int64, file order) listed in ``path``.

    Malformed lines are skipped (recorded in ``skips`` when given); a missing file raises :class:`InputError`.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: timestamps file not found; check the run folder (expected from the RobotCar "
                         f"download) or remove the run from the input")
    out = []
    with open(path, "r", encoding="ascii", errors="replace") as fh:
        for lineno, line in enumerate(fh, 1):
            fields = line.split()
            if not fields:
                continue
            try:
                out.append(int(fields[0]))
            except ValueError:
                if skips is not None:
                    skips.add("malformed_timestamp_line", f"{path}:{lineno}", repr(line.strip())[:80])
    return np.asarray(out, dtype=np.int64)


def existing_frames(timestamps: np.ndarray, folder: str | Path, suffix: str,
                    skips: SkipLog | None = None) -> np.ndarray:
    """The subset of ``timestamps`` whose ``<folder>/<ts><suffix>`` exists.

    RobotCar ships runs in chunks and the timestamps file lists every frame, so absent files are normal; each is
    recorded as a ``missing_file`` skip.
    """
    folder = Path(folder)
    present = {p.name for p in folder.iterdir()} if folder.is_dir() else set()
    keep = np.fromiter((f"{t}{suffix}" in present for t in timestamps.tolist()), dtype=bool, count=len(timestamps))
    if skips is not None:
        for t in timestamps[~keep].tolist():
            skips.add("missing_file", folder / f"{t}{suffix}", "listed in the timestamps file but absent")
    return timestamps[keep]


def write_timestamps(path: str | Path, timestamps, chunk: int = 1) -> None:
    """Write a timestamps file in the RobotCar format (used by the synthetic generator)."""
    from preprocessing.io import atomic_write_text

    atomic_write_text(path, "".join(f"{int(t)} {chunk}\n" for t in timestamps))
