"""``extrinsics/<sensor>.txt``: one line ``x y z roll pitch yaw`` (sensor pose in the vehicle frame)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from preprocessing.errors import InputError
from preprocessing.robotcar.constants import EXTRINSICS
from preprocessing.robotcar.transforms import invert_se3, se3_from_xyzrpy


def read_extrinsics(folder: str | Path | None, sensor: str) -> np.ndarray:
    """SE(3) of ``sensor`` in the vehicle frame from ``<folder>/<sensor>.txt``; the published values when
    ``folder`` is None."""
    if folder is None:
        return se3_from_xyzrpy(EXTRINSICS[sensor])
    path = Path(folder) / f"{sensor}.txt"
    try:
        vals = [float(x) for x in path.read_text().split()]
    except FileNotFoundError:
        raise InputError(f"{path}: extrinsics file not found; point `extrinsics_dir` at the SDK's extrinsics "
                         f"folder or set it to null to use the published values") from None
    except ValueError:
        raise InputError(f"{path}: expected six numbers 'x y z roll pitch yaw'") from None
    if len(vals) != 6 or not np.all(np.isfinite(vals)):
        raise InputError(f"{path}: expected six finite numbers 'x y z roll pitch yaw', found {vals}")
    return se3_from_xyzrpy(vals)


def ins_from_laser(extrinsics_dir: str | Path | None, laser: str = "lms_front") -> np.ndarray:
    """``G_ins_laser = inv(SE3(ins.txt)) @ SE3(<laser>.txt)``: laser points into the INS pose frame."""
    return invert_se3(read_extrinsics(extrinsics_dir, "ins")) @ read_extrinsics(extrinsics_dir, laser)


def format_extrinsics(xyzrpy) -> str:
    return " ".join(f"{v:.6f}" for v in xyzrpy) + "\n"
