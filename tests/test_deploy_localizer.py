"""Localizer: embedding equals the evaluation path, database queries, save / load, bad input, localize.py."""

from __future__ import annotations

import csv
import importlib.util
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from crossmodal.data.fake import write_fake_manifest
from crossmodal.deploy import (
    DatabaseMismatchError,
    EmptyDatabaseError,
    ImageInputError,
    Localizer,
    NotAStudentError,
)
from crossmodal.evaluation.testing import (
    make_student_checkpoint,
    make_teacher_checkpoint,
)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("loc")
    fm = write_fake_manifest(root / "data", runs=2, train_per_run=5, eval_per_run=6)  # 24 x 32 images
    student = make_student_checkpoint(root / "student.pt", "light", image_size=(24, 32), seed=0)
    other = make_student_checkpoint(root / "other.pt", "light", image_size=(24, 32), seed=1)
    eval_rows = fm.table[fm.table["split"] == "eval"]
    images = [fm.image_root / p for p in eval_rows["image"]]
    positions = eval_rows[["northing", "easting"]].to_numpy()
    return {"root": root, "student": student, "other": other, "images": images, "positions": positions,
            "loc": Localizer.from_checkpoint(student)}


def test_embedding_equals_the_evaluation_transform(env):
    import torch

    from crossmodal.data import image_eval_transform
    from crossmodal.training.checkpoint import build_model, load_checkpoint

    model = build_model(load_checkpoint(env["student"])).eval()
    tf = image_eval_transform()
    with torch.no_grad():
        ref = model(torch.stack([tf(Image.open(p).convert("RGB")) for p in env["images"][:4]]))["descriptor"]
    loc = env["loc"]
    got = loc.embed(env["images"][:4])
    np.testing.assert_allclose(got, ref.numpy(), rtol=1e-5, atol=1e-6)
    # the same images as PIL images and as uint8 arrays, one at a time
    pil = [Image.open(p).convert("RGB") for p in env["images"][:2]]
    np.testing.assert_allclose(loc.embed(pil), got[:2], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(loc.embed(np.asarray(pil[0])), got[:1], rtol=1e-5, atol=1e-6)


def test_database_queries_and_save_load(env, tmp_path):
    loc = Localizer.from_checkpoint(env["student"], index="hnsw")
    with pytest.raises(EmptyDatabaseError, match="database is empty"):
        loc.query(env["images"][0])
    assert loc.add_database(env["images"], env["positions"]) == len(env["images"])
    m = loc.query(env["images"][5], k=3)
    assert [x.rank for x in m] == [1, 2, 3]
    assert m[0].index == 5 and m[0].id == Path(env["images"][5]).name and m[0].distance < 1e-3
    assert m[0].position == tuple(env["positions"][5])
    assert m[1].distance >= m[0].distance
    loc.save_database(tmp_path / "db.npz")
    again = Localizer.from_checkpoint(env["student"])  # flat by default: the database's index kind wins
    assert again.load_database(tmp_path / "db.npz") == len(env["images"])
    assert again.index_spec.kind == "hnsw"
    assert [(x.id, x.index) for x in again.query(env["images"][5], k=3)] == [(x.id, x.index) for x in m]
    # descriptors instead of images, with ids
    desc = np.random.default_rng(0).normal(size=(3, 384)).astype(np.float32)
    d = Localizer.from_checkpoint(env["student"], metric="cosine")
    d.add_database(desc, env["positions"][:3], ids=["a", "b", "c"])
    assert [x.id for x in d.query_descriptors(desc[2:3], k=1)[0]] == ["c"]


def test_bad_images_are_named(env, tmp_path):
    loc = env["loc"]
    big = tmp_path / "big.png"
    Image.new("RGB", (64, 48)).save(big)
    with pytest.raises(ImageInputError, match=r"big.png: image is 64x48 \(W x H\), the model takes 32x24 .*resize=True"):
        loc.embed(big)
    assert Localizer.from_checkpoint(env["student"], resize=True).embed(big).shape == (1, 384)
    grey = tmp_path / "grey.png"
    Image.new("L", (32, 24)).save(grey)
    with pytest.raises(ImageInputError, match=r"grey.png: image mode 'L', the model takes 'RGB'"):
        loc.embed([env["images"][0], grey])
    with pytest.raises(ImageInputError, match="image mode 'RGBA'"):
        loc.embed(Image.new("RGBA", (32, 24)))
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20)
    with pytest.raises(ImageInputError, match="corrupt.png: cannot decode the image"):
        loc.embed(corrupt)
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(Path(env["images"][0]).read_bytes()[:200])
    with pytest.raises(ImageInputError, match="truncated.png: cannot decode"):
        loc.query(truncated) if loc.database_size else loc.embed(truncated)
    with pytest.raises(FileNotFoundError, match="missing.png: image file not found"):
        loc.embed(tmp_path / "missing.png")
    with pytest.raises(ImageInputError, match="array of dtype float32"):
        loc.embed(np.zeros((24, 32, 3), np.float32))
    with pytest.raises(ImageInputError, match="greyscale array of shape"):
        loc.embed([np.zeros((24, 32), np.uint8)])
    small = Localizer.from_checkpoint(env["student"], batch_size=2)  # the position in the whole list is named
    with pytest.raises(ImageInputError, match="image 3: a greyscale array"):
        small.embed([np.zeros((24, 32, 3), np.uint8)] * 3 + [np.zeros((24, 32), np.uint8)])


def test_teacher_and_foreign_database_are_refused(env, tmp_path):
    teacher = make_teacher_checkpoint(tmp_path / "teacher.pt")
    with pytest.raises(NotAStudentError, match="teacher.pt: a teacher checkpoint .* image-only student"):
        Localizer.from_checkpoint(teacher)
    loc = Localizer.from_checkpoint(env["student"])
    loc.add_database(env["images"][:4], env["positions"][:4])
    loc.save_database(tmp_path / "db.npz")
    other = Localizer.from_checkpoint(env["other"])  # same architecture, other weights
    with pytest.raises(DatabaseMismatchError, match=r"database built with another model .*student.pt.*other.pt.*"
                                                   r"weights SHA-256"):
        other.load_database(tmp_path / "db.npz")
    with pytest.raises(ValueError, match="dimension 16, the model gives 384-d"):
        loc.add_database(np.zeros((2, 16), np.float32), np.zeros((2, 2)))
    with pytest.raises(ValueError, match=r"positions must be \[N, 2\]"):
        loc.add_database(np.zeros((2, 384), np.float32), np.zeros((3, 2)))
    (tmp_path / "junk.npz").write_bytes(b"junk")
    with pytest.raises(ValueError, match="junk.npz: not a localizer database"):
        loc.load_database(tmp_path / "junk.npz")


def _localize():
    spec = importlib.util.spec_from_file_location("localize_script", REPO / "scripts" / "localize.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_localize_script(env, tmp_path, capsys):
    script = _localize()
    db = tmp_path / "db.npz"
    assert script.main(["build", "--checkpoint", str(env["student"]), "--dataset", str(env["root"] / "data"),
                        "--run", "2015-01-01-10-00-00", "--out", str(db), "--quiet"]) == 0
    assert "database: 6 entries, 384-d" in capsys.readouterr().out
    queries = tmp_path / "queries"
    queries.mkdir()
    for p in env["images"][:2]:  # run 1's first images: their own database entries come back first
        (queries / Path(p).name).write_bytes(Path(p).read_bytes())
    out_csv = tmp_path / "matches.csv"
    assert script.main(["query", "--checkpoint", str(env["student"]), "--database", str(db), "--queries",
                        str(queries), "--k", "2", "--out", str(out_csv), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert printed.count("best ") == 2
    rows = list(csv.DictReader(out_csv.open()))
    assert len(rows) == 4 and rows[0]["rank"] == "1" and float(rows[0]["distance"]) < 1e-3
    assert float(rows[0]["northing"]) == pytest.approx(env["positions"][0][0])
    # a teacher is refused with a clear message and exit status 2
    teacher = make_teacher_checkpoint(tmp_path / "teacher.pt")
    assert script.main(["query", "--checkpoint", str(teacher), "--database", str(db), "--queries",
                        str(queries)]) == 2
    assert "a teacher checkpoint" in capsys.readouterr().err


def test_localize_user_errors_are_one_line(tmp_path, capsys):
    script = _localize()
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"garbage")
    queries = tmp_path / "q"
    queries.mkdir()
    for command in (["query", "--database", str(tmp_path / "db.npz"), "--queries", str(queries)],
                    ["export", "--out", str(tmp_path / "out")]):
        assert script.main([*command, "--checkpoint", str(junk)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1].startswith(f"error: {junk}: cannot read a checkpoint") and "best.pt" in err[-1]
        assert not any("Traceback" in line for line in err)
    with pytest.raises(SystemExit) as info:  # argparse: one usage line, exit code 2, before anything loads
        script.main(["query", "--checkpoint", str(junk), "--database", "db.npz", "--queries", str(queries),
                     "--k", "0"])
    assert info.value.code == 2 and "argument --k: must be at least 1, got 0" in capsys.readouterr().err
