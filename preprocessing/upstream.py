"""Pickle formats of PointNetVLAD / MinkLoc++ / DistilVPR, read and written byte-compatibly.

Training pickles map ``id -> TrainingTuple``; upstream pickles the class as ``datasets.oxford.TrainingTuple``
(MinkLoc++, DistilVPR) or ``datasets.base_datasets.TrainingTuple`` (MinkLoc3Dv2), so reading them needs a
custom unpickler, and writing them needs the class recorded under that name: :func:`write_training_tuples` does
so without importing or faking any ``datasets`` package.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np

from preprocessing.errors import InputError
from preprocessing.io import atomic_write_bytes

#: Where upstream code defines ``TrainingTuple``.
UPSTREAM_MODULES = ("datasets.oxford", "datasets.base_datasets")


class TrainingTuple:
    """Same attributes as MinkLoc++'s ``datasets.oxford.TrainingTuple``."""

    def __init__(self, id: int, timestamp: int, rel_scan_filepath: str, positives: np.ndarray,
                 non_negatives: np.ndarray, position: np.ndarray):
        if np.asarray(position).shape != (2,):
            raise ValueError("position must be (northing, easting)")
        self.id = id
        self.timestamp = timestamp
        self.rel_scan_filepath = rel_scan_filepath
        self.positives = positives
        self.non_negatives = non_negatives
        self.position = position

    def __eq__(self, other) -> bool:
        return (isinstance(other, TrainingTuple) and self.id == other.id and self.timestamp == other.timestamp
                and self.rel_scan_filepath == other.rel_scan_filepath
                and np.array_equal(self.positives, other.positives)
                and np.array_equal(self.non_negatives, other.non_negatives)
                and np.array_equal(self.position, other.position))

    def __repr__(self) -> str:
        return (f"TrainingTuple(id={self.id}, timestamp={self.timestamp}, {self.rel_scan_filepath!r}, "
                f"{len(self.positives)} positives, {len(self.non_negatives)} non-negatives)")


class _UpstreamUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if name == "TrainingTuple" and module in UPSTREAM_MODULES:
            return TrainingTuple
        return super().find_class(module, name)


class _UpstreamPickler(pickle._Pickler):  # the pure-Python pickler exposes save_global
    def __init__(self, file, module: str):
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
        self._module = module

    def reducer_override(self, obj):
        # The pure-Python pickler memoizes the shared empty ``bytes`` of every empty out-of-band buffer and then
        # trips over its own memo (CPython's ``save_picklebuffer``): empty arrays use their protocol-4 reduction.
        if isinstance(obj, np.ndarray) and obj.size == 0:
            return obj.__reduce_ex__(4)
        return NotImplemented

    def save_global(self, obj, name=None):
        if obj is TrainingTuple:
            self.save(self._module)
            self.save("TrainingTuple")
            self.write(pickle.STACK_GLOBAL)
            self.memoize(obj)
            return
        super().save_global(obj, name)


def load_pickle(path: str | Path):
    """Load any upstream pickle (training tuples, evaluation sets, lidar2image index)."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            return _UpstreamUnpickler(fh).load()
    except FileNotFoundError:
        raise InputError(f"{path}: pickle not found; run preprocessing or fix the path") from None
    except (pickle.UnpicklingError, EOFError, AttributeError, ModuleNotFoundError, ValueError) as exc:
        raise InputError(f"{path}: cannot read pickle ({type(exc).__name__}: {exc}); the file is truncated or "
                         f"not a PointNetVLAD/MinkLoc++ pickle, regenerate it") from None


def dumps_training_tuples(tuples: dict[int, TrainingTuple], module: str = "datasets.oxford") -> bytes:
    if module not in UPSTREAM_MODULES:
        raise ValueError(f"module must be one of {UPSTREAM_MODULES}")
    buf = io.BytesIO()
    _UpstreamPickler(buf, module).dump(tuples)
    return buf.getvalue()


def write_training_tuples(path: str | Path, tuples: dict[int, TrainingTuple], module: str = "datasets.oxford") -> None:
    atomic_write_bytes(path, dumps_training_tuples(tuples, module))


def write_pickle(path: str | Path, obj) -> None:
    """Plain pickle (evaluation sets, lidar2image index) written atomically."""
    atomic_write_bytes(path, pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL))
