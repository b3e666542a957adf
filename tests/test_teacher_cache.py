"""Teacher embedding cache: values equal a direct teacher forward, reuse while valid, rebuild when stale or
damaged, augmented views, view selection, coverage errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from crossmodal.training import build_model, embed, load_checkpoint
from crossmodal.training.teacher_cache import (
    TeacherCache,
    _view_draw,
    load_or_build_cache,
    read_cache,
)


@pytest.fixture(scope="module")
def teacher_run(tiny_fusion_teacher):
    return tiny_fusion_teacher


def _build(teacher_run, cache_dir, **kw):
    root, ckpt = teacher_run
    return load_or_build_cache(ckpt, root, cache_dir, progress=False, **kw)


def test_clean_view_equals_a_direct_forward_and_is_reused(teacher_run, tmp_path):
    root, ckpt_path = teacher_run
    cache, path, built = _build(teacher_run, tmp_path)
    assert built and path.is_file() and path.name.startswith("teacher-")
    assert set(cache.outputs) == {"descriptor", "cloud", "image"} and cache.views == 1
    # reference: the checkpoint's model on the clean training rows with its own data settings
    from hydra.utils import instantiate

    ckpt = load_checkpoint(ckpt_path)
    model = build_model(ckpt)
    data = dict(ckpt["config"]["data"], root=str(root), num_workers=0)
    dm = instantiate(data, _convert_="all")
    ref = embed(model, dm.eval_loader("train", masks=False), "descriptor")
    ids = dm.dataset("train", augment=False).sample_ids
    np.testing.assert_allclose(cache.lookup(ids, "descriptor").numpy(), ref, rtol=1e-5, atol=1e-6)
    assert torch.equal(cache.lookup(ids, "descriptor"),
                       torch.cat([cache.lookup(ids, "cloud"), cache.lookup(ids, "image")], dim=1))
    mtime = path.stat().st_mtime_ns
    again, path2, built2 = _build(teacher_run, tmp_path)
    assert not built2 and path2 == path and path.stat().st_mtime_ns == mtime
    assert again.meta["key"] == cache.meta["key"]
    assert torch.equal(again.tensors["descriptor"], cache.tensors["descriptor"])


def test_stale_or_damaged_cache_is_rebuilt(teacher_run, tmp_path):
    cache, path, _ = _build(teacher_run, tmp_path)
    # another view setting: another key and file
    _, path_views, built = _build(teacher_run, tmp_path, views=1)
    assert built and path_views != path
    # a damaged file under the right name is rebuilt, not trusted
    path.write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="not a readable teacher cache"):
        read_cache(path)
    rebuilt, path3, built3 = _build(teacher_run, tmp_path)
    assert built3 and path3 == path
    assert torch.equal(rebuilt.tensors["descriptor"], cache.tensors["descriptor"])
    # a file whose recorded key differs (e.g. copied from elsewhere) is rebuilt
    from crossmodal.training.teacher_cache import save_cache

    save_cache(path, TeacherCache(cache.sample_ids, cache.tensors, dict(cache.meta, key="other")))
    assert _build(teacher_run, tmp_path)[2]


def test_a_changed_teacher_checkpoint_gets_a_new_cache(teacher_run, tmp_path):
    root, ckpt_path = teacher_run
    _, path, _ = _build(teacher_run, tmp_path)
    ckpt = load_checkpoint(ckpt_path)
    ckpt["model"] = {k: (v + 0.01 if v.is_floating_point() else v) for k, v in ckpt["model"].items()}
    other = tmp_path / "other.pt"
    torch.save(ckpt, other)
    _, path2, built = load_or_build_cache(other, root, tmp_path, progress=False)
    assert built and path2 != path


def test_augmented_views_and_selection(teacher_run, tmp_path):
    cache, _, _ = _build(teacher_run, tmp_path, views=2)
    assert cache.views == 3
    d = cache.tensors["descriptor"]
    assert not torch.allclose(d[0], d[1]) and not torch.allclose(d[1], d[2])
    ids = cache.sample_ids[::-1].copy()
    rows = cache.rows_of(ids)
    assert torch.equal(cache.lookup(ids, select="clean"), d[0, rows])
    torch.testing.assert_close(cache.lookup(ids, select="mean"), d[:, rows].mean(0))
    r0 = cache.lookup(ids, select="random", epoch=0, seed=0)
    assert torch.equal(r0, cache.lookup(ids, select="random", epoch=0, seed=0))
    views = _view_draw(ids, 0, 0, 3)
    assert torch.equal(r0, d[views, rows])
    assert set(np.unique(views)) <= {0, 1, 2} and len(np.unique(views)) > 1
    assert not np.array_equal(views, _view_draw(ids, 1, 0, 3))
    with pytest.raises(ValueError, match="select"):
        cache.lookup(ids, select="first")


def test_rows_not_in_the_cache_are_named(teacher_run, tmp_path):
    cache, _, _ = _build(teacher_run, tmp_path)
    with pytest.raises(KeyError, match="1 of 2 samples are not in the teacher cache"):
        cache.rows_of(np.array([cache.sample_ids[0], 10**9]))
    with pytest.raises(KeyError, match="not 'lidar'"):
        cache.lookup(cache.sample_ids[:2], "lidar")


def test_a_student_checkpoint_is_not_a_teacher(teacher_run, tmp_path):
    root, ckpt_path = teacher_run
    ckpt = load_checkpoint(ckpt_path)
    ckpt["role"] = "student"
    bad = tmp_path / "student.pt"
    torch.save(ckpt, bad)
    with pytest.raises(ValueError, match="a student checkpoint .* where a teacher checkpoint is expected"):
        load_or_build_cache(bad, root, tmp_path, progress=False)
