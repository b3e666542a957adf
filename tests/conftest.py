"""Shared fixtures: a tiny synthetic RobotCar generated once per session, and copies to damage."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DISTILL = "distilvpr_w10"  # configs/distill.yaml's default objective

#: Two runs along a 170 m street that crosses the southern edge of the P3 test square (northing 5735087.4), so
#: both training and test submaps exist; small frames keep it to a few seconds.
TINY = dict(seed=0, town_seed=0, num_runs=2, route=[[5735010.0, 620540.0], [5735180.0, 620540.0]], camera_hz=2.0,
            image_width=96, image_height=72, render_scale=1.0)


def tiny_splits():
    """Validation cells small enough that the tiny street has training and validation rows."""
    from preprocessing.splits import SplitConfig

    return SplitConfig(val_cell_m=30.0, val_fraction=0.3)


@pytest.fixture(scope="session")
def tiny_config():
    from preprocessing.synthetic import SyntheticConfig
    from preprocessing.synthetic.config import PRESETS

    return SyntheticConfig(**{**PRESETS["quick"], **TINY})


@pytest.fixture(scope="session")
def tiny_raw(tmp_path_factory, tiny_config):
    """Raw layout of the tiny synthetic RobotCar (read-only for tests: copy it with ``raw_copy`` to damage it)."""
    from preprocessing.synthetic import generate_synthetic_robotcar

    root = tmp_path_factory.mktemp("tiny_raw")
    generate_synthetic_robotcar(root, tiny_config, workers=1, progress=False)
    return root


@pytest.fixture(scope="session")
def tiny_processed(tmp_path_factory, tiny_raw):
    """The tiny RobotCar preprocessed once (``(raw_root, output_dir, report)``); do not modify."""
    from preprocessing.pipeline import Sources, preprocess

    out = tmp_path_factory.mktemp("tiny_out")
    report = preprocess(Sources(raw_root=str(tiny_raw)), out, splits=tiny_splits(), workers=1, progress=False)
    return tiny_raw, out, report


@pytest.fixture
def single_thread():
    """Correctness tests on small inputs: one thread avoids OpenMP spin-waits on a busy CPU (see docs/sparse.md)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def raw_copy(tmp_path, tiny_raw):
    dst = tmp_path / "raw"
    shutil.copytree(tiny_raw, dst)
    return dst


@pytest.fixture(scope="session")
def tiny_fusion_teacher(tmp_path_factory):
    """A fake manifest (3 runs, 12 training-family rows each) with evaluation pickles and a tiny fusion teacher
    trained one epoch on it: ``(dataset root, best.pt)``. Its descriptor is 16 (cloud) + 256 (image) = 272-d."""
    from crossmodal.data.fake import write_fake_manifest
    from crossmodal.training import train_teacher
    from crossmodal.training.testing import (
        compose_train_teacher,
        tiny_overrides,
        write_eval_pickles,
    )

    root = tmp_path_factory.mktemp("fake_teacher_data")
    # 30 m apart: batches hold places beyond the 50 m non-negative radius, so triplets form (8 m apart, a batch of
    # four places along 96 m had no negative: the teacher trained nothing)
    write_fake_manifest(root, runs=3, train_per_run=12, eval_per_run=4, spacing_m=30.0)
    write_eval_pickles(root)
    cfg = compose_train_teacher(tiny_overrides("fusion") + [f"dataset_dir={root}", "trainer.epochs=1",
                                                             "trainer.eval_test=false"])
    run = tmp_path_factory.mktemp("fake_teacher")
    train_teacher(cfg, run, name="fusion")
    return root, run / "best.pt"


@pytest.fixture(scope="session")
def fake(tmp_path_factory):
    """A fake manifest with evaluation pickles: 3 runs of 20 training-family rows 8 m apart (long enough for
    negatives, so triplet losses are not zero) and 6 evaluation rows each. Modules may define their own ``fake``."""
    from crossmodal.data.fake import write_fake_manifest
    from crossmodal.training.testing import write_eval_pickles

    root = tmp_path_factory.mktemp("fake")
    write_fake_manifest(root, runs=3, train_per_run=20, eval_per_run=6)
    write_eval_pickles(root)
    return root


def run_distill(*args: str, cwd: Path, timeout: int = 900) -> subprocess.CompletedProcess:
    """``python scripts/distill.py <args>`` in ``cwd`` (the real entry point); asserts it succeeded."""
    from crossmodal.training.testing import run_python

    return run_python(str(ROOT / "scripts" / "distill.py"), *args, cwd=cwd, timeout=timeout, threads=None)


@pytest.fixture(scope="session")
def quick_e2e(tmp_path_factory):
    """``scripts/distill.py preset=quick`` from nothing (the CI end-to-end run: generation, preprocessing, teacher,
    cache, students, evaluation), once per session: ``(work dir, run dir, log)``. Its dataset, the synthetic quick
    RobotCar, is ``work / "data" / "synthetic-quick"`` (``quick_dataset``); do not modify it."""
    work = tmp_path_factory.mktemp("e2e")
    proc = run_distill("preset=quick", "trainer.progress=false", f"data_dir={work / 'data'}",
                       f"output_root={work / 'runs'}", cwd=work)
    (run_dir,) = list((work / "runs" / "distill" / DEFAULT_DISTILL).iterdir())
    return work, run_dir, proc.stdout + proc.stderr


@pytest.fixture(scope="session")
def quick_dataset(quick_e2e):
    """The preprocessed synthetic quick dataset (read-only)."""
    root = quick_e2e[0] / "data" / "synthetic-quick"
    assert (root / "manifest.parquet").is_file()
    return root
