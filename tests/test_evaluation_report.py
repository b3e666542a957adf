"""evaluate_checkpoints end to end on a tiny fake dataset: report files, per-query results, image-only students,
bad input, the comparison of several reports and the scripts."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from crossmodal.data.fake import write_fake_manifest
from crossmodal.evaluation import evaluate_checkpoints
from crossmodal.evaluation.testing import (
    make_student_checkpoint,
    make_teacher_checkpoint,
)
from crossmodal.training.testing import write_eval_pickles

REPO = Path(__file__).resolve().parents[1]
TINY_LATENCY = {"db_sizes": [500], "repeats": 1, "warmup": 0, "single_queries": 5, "batched_queries": 20}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("evalrep")
    write_fake_manifest(root / "data", runs=3, train_per_run=5, eval_per_run=8)
    write_eval_pickles(root / "data")
    ckpts = {"teacher": make_teacher_checkpoint(root / "teacher.pt"),
             "student_distilled": make_student_checkpoint(root / "light.pt", "light"),
             "student_alone": make_student_checkpoint(root / "image.pt", "image", seed=1)}
    return root, ckpts


@pytest.fixture(scope="module")
def report(setup, tmp_path_factory):
    root, ckpts = setup
    out = tmp_path_factory.mktemp("out")
    summary = evaluate_checkpoints(ckpts, root / "data", out, num_workers=0, batch_size=8, latency=TINY_LATENCY,
                                   progress=False, examples=4)
    return out, summary


def test_report_files_and_table(report):
    out, summary = report
    for name in ("report.md", "report.json", "results.csv", "recall_at_n.png", "pair_heatmap.png", "examples.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert not list(out.glob(".*.tmp"))  # atomic writes leave no temporaries
    md = (out / "report.md").read_text()
    assert "| model | role | R@1 | R@5 | R@10 | R@1% | parameters | descriptor | model MB | latency ms/image |" in md
    for label in ("teacher", "student_distilled", "student_alone"):
        assert f"| {label} |" in md
    from crossmodal.evaluation.latency import cpu_model

    assert f"Machine: {cpu_model()}" in md and " thread" in md
    assert "**euclidean**" in md and "IndexFlatL2" in md and "match 500 single ms" in md
    assert summary["models"]["teacher"]["modalities"] == ["image", "cloud"]
    assert summary["models"]["student_alone"]["modalities"] == ["image"]
    s = summary["models"]["student_alone"]
    assert s["parameters"] == 2_881_473 and s["descriptor_dim"] == 384 and s["descriptor_bytes"] == 1536
    assert s["latency"]["extraction"]["batch_size"] == 8 and s["latency"]["matching"]["500"]["single_ms"] > 0
    assert len(summary["runs"]) == 3
    lines = (out / "results.csv").read_text().splitlines()
    assert lines[0].startswith("label,role,checkpoint") and len(lines) == 4 + 3  # 3 models, 3 baselines
    assert [line.split(",")[:2] for line in lines[4:]] == [["tiny_image", "baseline_image"], ["hog", "baseline_image"],
                                                           ["bev_height", "baseline_lidar"]]
    assert "| hog (training-free) | baseline, image |" in md and "| bev_height (training-free) | baseline, lidar |" in md


def test_baselines_equal_a_direct_evaluation_on_the_same_rows(setup, report):
    """The report's training-free rows = the handcrafted descriptors of the evaluated rows through the protocol."""
    from crossmodal.baselines.handcrafted import bev_height, hog
    from crossmodal.data import PairedPlaceDataset
    from crossmodal.evaluation.testing import brute_force_recall as brute_force
    from crossmodal.training.validation import load_eval_sets

    root, _ = setup
    _, summary = report
    ds = PairedPlaceDataset(root / "data", "eval", modalities=("image", "cloud"))
    sets = load_eval_sets(ds, "eval")
    for name, fn, load in (("hog", hog, lambda i: np.asarray(ds.load_image(i))),
                           ("bev_height", bev_height, lambda i: ds.load_cloud(i).numpy())):
        desc = np.stack([fn(load(i)) for i in range(len(ds))])
        ref_at, ref_one = brute_force([desc[r] for r in sets.database_rows], [desc[r] for r in sets.query_rows],
                                      sets.query_sets)
        b = summary["baselines"]["descriptors"][name]
        assert b["r1"] == pytest.approx(ref_at[0]) and b["r5"] == pytest.approx(ref_at[4])
        assert b["r1p"] == pytest.approx(ref_one)
    assert summary["baselines"]["skipped"] == {}


def test_recall_and_per_query_results_match_a_direct_evaluation(setup, report):
    """The summary's recall equals the brute-force protocol on descriptors computed here; per-query rows agree
    with the manifest's positions."""
    import torch

    from crossmodal.data import PairedPlaceDataset
    from crossmodal.evaluation.testing import brute_force_recall as brute_force
    from crossmodal.training.checkpoint import build_model, load_checkpoint
    from crossmodal.training.validation import load_eval_sets

    root, ckpts = setup
    out, summary = report
    ds = PairedPlaceDataset(root / "data", "eval", modalities=("image",))
    sets = load_eval_sets(ds, "eval")
    model = build_model(load_checkpoint(ckpts["student_alone"])).eval()
    with torch.no_grad():
        emb = model(torch.stack([ds[i]["image"] for i in range(len(ds))]))["descriptor"].numpy()
    ref_at, ref_one = brute_force([emb[r] for r in sets.database_rows], [emb[r] for r in sets.query_rows],
                                  sets.query_sets)
    s = summary["models"]["student_alone"]
    np.testing.assert_allclose(s["recall_at"], ref_at, atol=1e-9)
    assert s["r1p"] == pytest.approx(ref_one) and s["r5"] == pytest.approx(ref_at[4])

    rep = json.loads((out / "report.json").read_text())
    rows = rep["per_query"]["student_alone"]
    assert len(rows) == s["queries"]
    pos = dict(zip(ds.sample_ids.tolist(), map(tuple, ds.positions)))
    run_of = dict(zip(ds.sample_ids.tolist(), ds.runs))
    for r in rows:
        assert len(r["top_ids"]) == len(r["distances"]) == 8  # 8 database entries per run < per_query_k
        assert all(run_of[i] == r["database_run"] for i in r["top_ids"]) and run_of[r["query_id"]] == r["query_run"]
        assert r["distances"] == sorted(r["distances"])
        assert r["error_m"] == pytest.approx(np.linalg.norm(np.subtract(pos[r["query_id"]], pos[r["top_ids"][0]])),
                                             abs=1e-3)
        assert r["hit"] == (r["first_hit_rank"] == 1)
    assert np.mean([r["hit"] for r in rows]) * 100 == pytest.approx(
        np.mean([v for row in rep["pair_recall"]["student_alone"]["r1"] for v in row if v is not None]))


def test_a_student_never_opens_a_lidar_file(setup, tmp_path, monkeypatch):
    root, ckpts = setup
    data = tmp_path / "data"
    shutil.copytree(root / "data", data)
    for cloud in (data / "benchmark_datasets").rglob("*.bin"):
        cloud.unlink()  # no LiDAR at all: an image-only student must not care

    from crossmodal.data.dataset import PairedPlaceDataset

    def refuse(*args, **kwargs):
        raise AssertionError("a LiDAR file was opened")

    monkeypatch.setattr(PairedPlaceDataset, "load_cloud", refuse)
    monkeypatch.setattr(np, "fromfile", refuse)
    summary = evaluate_checkpoints({"student": ckpts["student_distilled"]}, data, tmp_path / "out", num_workers=0,
                                   batch_size=8, latency=False, plots=False, progress=False)
    s = summary["models"]["student"]
    assert s["modalities"] == ["image"] and summary["require"] == ["image"]
    assert s["rows"] == {"database": 24, "queries": 12} and s["skipped"] == {}
    # the LiDAR baseline is skipped (and said so) rather than opening a missing file
    assert set(summary["baselines"]["descriptors"]) == {"tiny_image", "hog"}
    assert "24 of 24 evaluated rows have no lidar file" in summary["baselines"]["skipped"]["lidar"]
    assert "Lidar baselines skipped: 24 of 24" in (tmp_path / "out" / "report.md").read_text()
    # the teacher reads the clouds: the same folder gives it no rows
    with pytest.raises(ValueError, match="no usable evaluation rows with image \\+ cloud.*cloud_missing: 24"):
        evaluate_checkpoints({"teacher": ckpts["teacher"]}, data, tmp_path / "out2", num_workers=0,
                             latency=False, plots=False, progress=False)


def test_cosine_and_approximate_index_report_their_loss(setup, tmp_path):
    root, ckpts = setup
    summary = evaluate_checkpoints({"student": ckpts["student_alone"]}, root / "data", tmp_path, num_workers=0,
                                   metric="cosine", index={"kind": "hnsw", "ef_search": 16}, latency=False,
                                   plots=False, progress=False)
    s = summary["models"]["student"]
    assert summary["metric"] == "cosine" and "HNSW" in summary["index"]["description"]
    assert set(s["recall_loss_vs_flat"]) == {"r1", "r5", "r10", "r1p"}
    assert s["recall_loss_vs_flat"]["r1"] == pytest.approx(s["flat_reference"]["r1"] - s["r1"])
    md = (tmp_path / "report.md").read_text()
    assert "**cosine**" in md and "Approximate search vs exact (flat)" in md


def test_bad_input_is_named(setup, tmp_path):
    from crossmodal.training.checkpoint import CheckpointMismatchError
    from preprocessing.errors import InputError

    root, ckpts = setup
    kw = {"num_workers": 0, "latency": False, "plots": False, "progress": False}
    with pytest.raises(ValueError, match="models is empty"):
        evaluate_checkpoints({}, root / "data", tmp_path, **kw)
    with pytest.raises(FileNotFoundError, match="checkpoint not found: .*nope.pt"):
        evaluate_checkpoints({"s": tmp_path / "nope.pt"}, root / "data", tmp_path, **kw)
    with pytest.raises(FileNotFoundError, match="without best.pt or last.pt"):
        evaluate_checkpoints({"s": tmp_path}, root / "data", tmp_path, **kw)
    with pytest.raises(InputError, match="manifest not found"):
        evaluate_checkpoints({"s": ckpts["student_alone"]}, tmp_path / "nodata", tmp_path, **kw)
    with pytest.raises(ValueError, match="unknown metric 'l1'"):
        evaluate_checkpoints({"s": ckpts["student_alone"]}, root / "data", tmp_path, metric="l1", **kw)
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointMismatchError, match="junk.pt: cannot read a checkpoint"):
        evaluate_checkpoints({"s": tmp_path / "junk.pt"}, root / "data", tmp_path, **kw)


def _script(name: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"script_{name}", REPO / "scripts" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_collect_reports_builds_one_table(report, setup, tmp_path, capsys):
    out, _ = report
    root, ckpts = setup
    other = tmp_path / "runs" / "b"
    evaluate_checkpoints({"student_distilled": ckpts["student_distilled"]}, root / "data", other, num_workers=0,
                         latency=False, plots=False, progress=False, metric="cosine")
    collect = _script("collect_reports")
    assert collect.main([str(out), str(tmp_path / "runs"), "--out", str(tmp_path / "t.md"),
                         "--csv", str(tmp_path / "t.csv")]) == 0
    table = capsys.readouterr().out
    lines = [ln for ln in table.splitlines() if ln.startswith("| ")]
    assert len(lines) == 1 + 4 + 6  # header + 3 models of the first report + 1 of the second + 3 baselines each
    assert "| cosine |" in table and "| euclidean |" in table and str(other) in table
    assert (tmp_path / "t.md").read_text() == table
    assert len((tmp_path / "t.csv").read_text().splitlines()) == 11
    assert collect.main([str(tmp_path / "missing")]) == 2
    assert "no such file or folder" in capsys.readouterr().err


def test_evaluate_script(setup, tmp_path):
    root, ckpts = setup
    out = tmp_path / "ev"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "evaluate.py"), f"+models.student={ckpts['student_distilled']}",
         f"+models.teacher={ckpts['teacher']}", f"dataset_dir={root / 'data'}", f"out_dir={out}",
         "num_workers=0", "progress=false", "plots=false", "latency.enabled=false", "index.kind=ivf",
         f"hydra.run.dir={tmp_path / 'hydra'}"],
        capture_output=True, text=True, env=env, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "student (student): R@1" in proc.stdout and "teacher (teacher): R@1" in proc.stdout
    summary = json.loads((out / "report.json").read_text())
    assert summary["index"]["kind"] == "ivf" and "recall_loss_vs_flat" in summary["models"]["student"]
    assert (out / "config.yaml").is_file() and (out / "command.txt").is_file()


def test_default_dataset_is_the_checkpoints(tmp_path, monkeypatch):
    """scripts/evaluate.py without dataset_dir evaluates the dataset the checkpoints were trained on (issue 13: the
    README's line after preset=quick looked for data/synthetic-default); disagreement or no record is an error."""
    import crossmodal.training.checkpoint as checkpoint
    from crossmodal.evaluation.checkpoints import trained_dataset

    roots = {"a.pt": "/d/quick", "b.pt": "/d/quick", "c.pt": "/d/other", "d.pt": None}
    for name in roots:
        (tmp_path / name).write_bytes(b"x")
    monkeypatch.setattr(checkpoint, "load_checkpoint",
                        lambda p: {"config": {"data": {"root": roots[Path(p).name]}}})
    run = tmp_path / "run"
    run.mkdir()
    (run / "best.pt").write_bytes(b"x")
    roots["best.pt"] = "/d/quick"
    assert trained_dataset([tmp_path / "a.pt", run]) == Path("/d/quick")
    with pytest.raises(ValueError, match=r"different datasets: /d/quick .*a.pt.*; /d/other .*c.pt.*dataset_dir="):
        trained_dataset([tmp_path / "a.pt", tmp_path / "c.pt"])
    with pytest.raises(ValueError, match=r"d.pt: the checkpoint does not record its dataset; give dataset_dir="):
        trained_dataset([tmp_path / "d.pt"])


def test_validate_clouds_reaches_the_evaluation(tmp_path):
    """One switch governs every stage (issue 13): with validate_clouds a NaN evaluation cloud is dropped and
    counted for every model alike; without it the evaluation stops naming the file."""
    from crossmodal.data.dataset import CorruptCloudError

    root = tmp_path / "data"
    write_fake_manifest(root, runs=3, train_per_run=5, eval_per_run=8, nan_cloud=[5])
    write_eval_pickles(root)
    models = {"teacher": make_teacher_checkpoint(tmp_path / "teacher.pt"),
              "student": make_student_checkpoint(tmp_path / "image.pt", "image")}
    kw = {"num_workers": 0, "batch_size": 8, "latency": False, "plots": False, "progress": False}
    summary = evaluate_checkpoints(models, root, tmp_path / "ok", validate_clouds=True, **kw)
    for label in models:
        assert summary["models"][label]["skipped"] == {"cloud_nonfinite": 1}, label
    with pytest.raises(CorruptCloudError, match=r"\.bin.*validate_clouds=True"):
        evaluate_checkpoints(models, root, tmp_path / "bad", **kw)


def test_validate_clouds_reaches_the_teacher_stage():
    from crossmodal.pipelines.distill import compose_config, teacher_config

    for flag in (False, True):
        cfg = compose_config("distill", ["preset=quick", f"data.validate_clouds={str(flag).lower()}"])
        tcfg = teacher_config(cfg, Path("/d"), "fusion")
        assert tcfg.data.validate_clouds is flag
