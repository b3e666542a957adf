"""Helpers for tests and examples: validation / evaluation pickles for a fake manifest
(:func:`crossmodal.data.fake.write_fake_manifest` writes no pickles)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from preprocessing.manifest import read_manifest
from preprocessing.splits import evaluation_sets
from preprocessing.upstream import write_pickle

from .validation import SET_PICKLES


def write_eval_pickles(root: str | Path, radius_m: float = 25.0) -> dict[str, Path]:
    """Write ``oxford_{validation,evaluation}_{database,query}.pickle`` for the manifest in ``root`` as
    preprocessing does: validation = the ``20m_10overlap`` ``val`` rows (all queries), evaluation = the ``20m``
    rows (queries: ``is_query``). Returns the written paths."""
    table, meta = read_manifest(root)
    bench = Path(meta["benchmark_root"])
    written = {}
    for split, family in (("val", "20m_10overlap"), ("eval", "20m")):
        rows = table[(table["split"] == split) & (table["submap_set"] == family)]
        cloud_of = dict(zip(zip(rows["run"], rows["timestamp"]), rows["cloud"]))
        qmask = np.ones(len(rows), bool) if split == "val" else rows["is_query"].to_numpy(bool)
        sets = evaluation_sets(rows, lambda r, t, paths=cloud_of: paths[(r, t)], qmask, radius_m)
        for name, obj in zip(SET_PICKLES[split], (sets.database, sets.query)):
            write_pickle(bench / name, obj)
            written[name] = bench / name
    return written


#: Overrides that make a teacher tiny and fast (seconds per epoch on the fake manifest), per teacher choice.
TINY_DATA = ["data.quantization_size=0.2", "data.batch_size=8", "data.eval_batch_size=16", "data.num_workers=0",
             "trainer.progress=false"]
TINY_CLOUD = ["teacher.cloud.planes=[8,8,8]", "teacher.cloud.feature_size=16"]


#: The machinery tests (resume, DDP, multi-stage, cache) are calibrated on MinkLoc++'s published architecture
#: (ResNet18 image branch, GeM LiDAR pooling, plain concatenation); the defaults are tested in their own modules.
TINY_ARCH = {"fusion": ["image_branch@teacher.image=resnet18", "teacher.cloud.pooling=GeM", "teacher.fusion=concat"],
             "lidar": ["teacher.cloud.pooling=GeM"], "image": ["image_branch@teacher.image=resnet18"]}


def tiny_overrides(teacher: str = "fusion") -> list[str]:
    return ([f"teacher={teacher}"] + TINY_DATA + (TINY_CLOUD if teacher in ("fusion", "lidar") else [])
            + TINY_ARCH.get(teacher, []))


def compose_train_teacher(overrides: list[str] | tuple[str, ...] = (), return_hydra_config: bool = False):
    """``configs/train_teacher.yaml`` composed with ``overrides`` (Hydra's compose API)."""
    from hydra import compose, initialize_config_dir

    configs = Path(__file__).resolve().parents[2] / "configs"
    with initialize_config_dir(str(configs), version_base="1.3"):
        return compose("train_teacher", overrides=list(overrides), return_hydra_config=return_hydra_config)


def script_env(threads: int | None = 1) -> dict[str, str]:
    """Environment for the project's scripts run as test subprocesses: the repository on ``PYTHONPATH``, no
    inherited ``MKL_*`` (deterministic mode sets its own before torch loads) or ``CROSSMODAL_*`` (data / run
    paths) variables, passive OpenMP waiting, and ``threads`` OpenMP threads (None: inherited)."""
    import os

    root = str(Path(__file__).resolve().parents[2])
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MKL_", "CROSSMODAL_"))}
    env["PYTHONPATH"] = os.pathsep.join([root, env.get("PYTHONPATH", "")])
    env["OMP_WAIT_POLICY"] = "PASSIVE"
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    return env


def folders(path: str | Path) -> list[Path]:
    """The entries of ``path`` that are not hidden (``.locks/`` of :mod:`crossmodal.pipelines.locks` aside),
    sorted."""
    return sorted(p for p in Path(path).iterdir() if not p.name.startswith("."))


def run_python(*args: str, cwd: str | Path, timeout: float = 600, threads: int | None = 1):
    """``python <args>`` in ``cwd`` with :func:`script_env` (``threads``); asserts it exited 0 (the assertion shows
    the tails of its output) and returns the ``CompletedProcess``."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, *args], cwd=cwd, env=script_env(threads), capture_output=True, text=True,
                          timeout=timeout, check=False)
    assert proc.returncode == 0, (proc.stdout[-4000:], proc.stderr[-6000:])
    return proc


#: Wall-clock fields of a training history row (they differ between two runs of the same computation).
HISTORY_TIMES = ("train_time_s", "val_time_s", "epoch_time_s")


def history_rows(history: list[dict]) -> list[dict]:
    """A checkpoint's training history without its timings, for comparing two runs."""
    return [{k: v for k, v in r.items() if k not in HISTORY_TIMES} for r in history]
