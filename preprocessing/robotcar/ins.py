"""``gps/ins.csv``: INS poses (header + 15 columns, ~50 Hz)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from preprocessing.errors import InputError, SkipLog
from preprocessing.robotcar.constants import INS_COLUMNS


@dataclasses.dataclass
class InsPoses:
    """INS samples sorted by time. ``xyzrpy`` holds (northing, easting, down, roll, pitch, yaw)."""

    timestamps: np.ndarray  # int64 microseconds, strictly increasing
    xyzrpy: np.ndarray  # float64 (N, 6)
    path: str = ""

    def __len__(self) -> int:
        return len(self.timestamps)


def read_ins(path: str | Path, skips: SkipLog | None = None) -> InsPoses:
    """Read ``ins.csv`` as the SDK does (position from columns 5:8, angles from the last three).

    Malformed rows (wrong column count, non-numeric values, non-finite numbers) and duplicate timestamps are
    skipped and recorded; out-of-order rows are kept and sorted by time. A missing file, a wrong header or no usable row raises
    :class:`InputError`.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: INS file not found; each run needs gps/ins.csv from the RobotCar 'gps' download")
    with open(path, "r", encoding="ascii", errors="replace") as fh:
        header = fh.readline().strip()
        cols = [c.strip() for c in header.split(",")]
        if len(cols) != len(INS_COLUMNS) or cols[0] != "timestamp":
            raise InputError(f"{path}: unexpected header {header[:120]!r}; expected the 15 RobotCar INS columns "
                             f"({','.join(INS_COLUMNS)})")
        ts, rows = [], []
        for lineno, line in enumerate(fh, 2):
            fields = line.strip().split(",")
            if fields == [""]:
                continue
            try:
                if len(fields) != 15:
                    raise ValueError(f"{len(fields)} columns")
                t = int(fields[0])
                vals = [float(fields[i]) for i in (5, 6, 7, 12, 13, 14)]
                if not np.all(np.isfinite(vals)):
                    raise ValueError("non-finite value")
            except ValueError as exc:
                if skips is not None:
                    skips.add("malformed_ins_row", f"{path}:{lineno}", str(exc))
                continue
            ts.append(t)
            rows.append(vals)
    if not ts:
        raise InputError(f"{path}: no usable INS rows; the file is empty or malformed, re-download gps/ins.csv")
    ts = np.asarray(ts, np.int64)
    rows = np.asarray(rows, float)
    order = np.argsort(ts, kind="stable")
    ts, rows = ts[order], rows[order]
    dup = np.concatenate([[False], np.diff(ts) <= 0])
    if dup.any() and skips is not None:
        for t in ts[dup].tolist():
            skips.add("duplicate_ins_timestamp", path, str(t))
    return InsPoses(ts[~dup], rows[~dup], str(path))
