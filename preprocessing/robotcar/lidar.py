"""``lms_front/<ts>.bin`` scans: float64 little-endian, point-interleaved (x, y, reflectance)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from preprocessing.errors import SkipLog


class CorruptScan(ValueError):
    pass


def read_lms_scan(path: str | Path) -> np.ndarray:
    """(N, 3) array of (x, y, reflectance) in the laser frame; raises :class:`CorruptScan` on a bad file."""
    data = np.fromfile(path, dtype="<f8")
    if data.size == 0 or data.size % 3:
        raise CorruptScan(f"{path}: {data.size * 8} bytes is not a whole number of (x, y, reflectance) float64 "
                          f"triples (truncated download?)")
    scan = data.reshape(-1, 3)
    if not np.isfinite(scan).all():
        raise CorruptScan(f"{path}: scan contains NaN or infinite values")
    return scan


def try_read_lms_scan(path: str | Path, skips: SkipLog) -> np.ndarray | None:
    """:func:`read_lms_scan`, recording a ``corrupt_scan`` / ``unreadable_file`` skip instead of raising."""
    try:
        return read_lms_scan(path)
    except CorruptScan as exc:
        skips.add("corrupt_scan", path, str(exc))
    except OSError as exc:
        skips.add("unreadable_file", path, str(exc))
    return None


def scan_points_laser_frame(scan: np.ndarray, min_range: float = 0.1) -> np.ndarray:
    """Homogeneous (N, 4) points ``[x, y, 0, 1]``; returns with range below ``min_range`` (no echo) dropped."""
    xy = scan[:, :2]
    keep = np.hypot(xy[:, 0], xy[:, 1]) >= min_range
    xy = xy[keep]
    return np.column_stack([xy, np.zeros(len(xy)), np.ones(len(xy))])


def lms_scan_bytes(xy: np.ndarray, reflectance: np.ndarray) -> bytes:
    """Serialise a scan in the raw format (used by the synthetic generator)."""
    return np.column_stack([xy, reflectance]).astype("<f8").tobytes()
