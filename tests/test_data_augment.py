"""Augmentations: determinism under an explicit generator, bounds, and the properties of each transform."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from crossmodal.data import (
    ColorJitter,
    Compose,
    JitterPoints,
    RandomErasing,
    RandomFlip,
    RandomRotationZ,
    RandomTranslation,
    RemoveRandomBlock,
    RemoveRandomPoints,
    cloud_train_transform,
    image_eval_transform,
    image_train_transform,
)


def cloud(seed=0, n=4096):
    return torch.from_numpy(np.random.default_rng(seed).uniform(-1, 1, (n, 3)).astype(np.float32))


def gen(seed):
    return torch.Generator().manual_seed(seed)


def image(seed=0, h=24, w=32):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def test_cloud_pipeline_deterministic_and_bounded():
    t = cloud_train_transform()
    x = cloud()
    outs = [t(x.clone(), generator=gen(s)) for s in (1, 1, 2)]
    assert torch.equal(outs[0], outs[1]) and not torch.equal(outs[0], outs[2])
    for s in range(30):
        y = t(x, generator=gen(s))
        assert y.shape == (4096, 3) and y.dtype == torch.float32
        assert torch.isfinite(y).all()
        # ±5° rotation of [-1,1]² stretches by ≤ cos5°+sin5°; translation σ 0.01; jitter ≤ 0.002
        assert y.abs().max() < 1.1 + 0.1
    assert torch.equal(x, cloud())  # input untouched
    seeded = cloud_train_transform(seed=7)
    assert torch.equal(seeded(x), cloud_train_transform(seed=7)(x))


def test_rotation_is_about_z_within_bounds():
    x = cloud()
    for s in range(20):
        y = RandomRotationZ(5.0)(x, generator=gen(s))
        torch.testing.assert_close(y[:, 2], x[:, 2])
        torch.testing.assert_close(y[:, :2].norm(dim=1), x[:, :2].norm(dim=1), rtol=1e-5, atol=1e-6)
        ang = torch.atan2(y[:, 1], y[:, 0]) - torch.atan2(x[:, 1], x[:, 0])
        ang = torch.remainder(ang + math.pi, 2 * math.pi) - math.pi
        assert ang.std() < 1e-4 and abs(float(ang.mean())) <= math.radians(5) + 1e-5


def test_flip_frequencies():
    x = cloud(n=16)
    counts = {"x": 0, "y": 0, "none": 0}
    for s in range(2000):
        y = RandomFlip()(x, generator=gen(s))
        assert torch.equal(y[:, 2], x[:, 2])
        if torch.equal(y[:, 0], -x[:, 0]):
            counts["x"] += 1
        elif torch.equal(y[:, 1], -x[:, 1]):
            counts["y"] += 1
        else:
            assert torch.equal(y, x)
            counts["none"] += 1
    assert 420 < counts["x"] < 580 and 420 < counts["y"] < 580


def test_jitter_and_translation():
    x = cloud()
    y = JitterPoints(0.001, 0.002)(x, generator=gen(0))
    d = y - x
    assert d.abs().max() <= 0.002 + 1e-7 and 0.0007 < float(d.std()) < 0.0011
    z = RandomTranslation(0.01)(x, generator=gen(0))
    shift = z - x
    torch.testing.assert_close(shift, shift[:1].expand_as(shift), atol=1e-6, rtol=0)


@pytest.mark.parametrize("fill", ["resample", "zero"])
def test_point_removal_keeps_shape(fill):
    x = cloud()
    rows = {tuple(r) for r in x.tolist()}
    removed = []
    for s in range(20):
        y = RemoveRandomPoints(0.1, fill=fill)(x, generator=gen(s))
        assert y.shape == x.shape
        changed = (y != x).any(dim=1)
        removed.append(int(changed.sum()))
        if fill == "resample":
            assert all(tuple(r) in rows for r in y[changed].tolist())  # copies of original points
        else:
            assert (y[changed] == 0).all()
    assert max(removed) <= 410 and max(removed) > 100


def test_block_removal():
    x = cloud()
    hit = 0
    for s in range(200):
        y = RemoveRandomBlock(p=0.4)(x, generator=gen(s))
        assert y.shape == x.shape and torch.isfinite(y).all()
        changed = (y != x).any(dim=1)
        if changed.any():
            hit += 1
            assert changed.float().mean() <= 0.34  # ≤ 33 % of the xy box area of a uniform cloud
            pts = x[changed]  # the removed points form one axis-aligned xy box that holds no kept point
            lo, hi = pts[:, :2].min(0).values, pts[:, :2].max(0).values
            inside = ((x[:, :2] >= lo) & (x[:, :2] <= hi)).all(dim=1)
            assert torch.equal(inside, changed)
    assert 50 < hit < 110  # p = 0.4 of 200


def test_compose_passes_one_generator():
    t = Compose([JitterPoints(0.01), lambda v: v * 2, RandomTranslation(0.1)])
    x = cloud()
    assert torch.equal(t(x, generator=gen(5)), t(x, generator=gen(5)))
    assert "JitterPoints" in repr(t)


def test_image_transforms():
    img = image()
    ev = image_eval_transform()(img)
    assert ev.shape == (3, 24, 32) and ev.dtype == torch.float32
    tr = image_train_transform()
    a, b, c = (tr(img, generator=gen(s)) for s in (0, 0, 1))
    assert a.shape == (3, 24, 32) and torch.equal(a, b) and not torch.equal(a, c)
    assert image_train_transform((48, 64))(img, generator=gen(0)).shape == (3, 48, 64)
    assert image_eval_transform((24, 32)).transforms[0](img) is img  # no resize when the size already matches


def test_color_jitter_and_erasing_match_ranges():
    img = image(h=48, w=64)
    base = torch.from_numpy(np.asarray(img, np.float32) / 255).permute(2, 0, 1)
    for s in range(10):
        out = ColorJitter(0.2, 0.0, 0.0, 0.0)(base, generator=gen(s))  # brightness only: a scale in [0.8, 1.2]
        mask = (base > 0.05) & (out < 1.0)
        ratio = out[mask] / base[mask]
        assert 0.8 - 1e-4 <= float(ratio.min()) and float(ratio.max()) <= 1.2 + 1e-4
        assert float(ratio.std()) < 1e-3
    erased = 0
    for s in range(100):
        t = torch.ones(3, 48, 64)
        out = RandomErasing(p=0.5, scale=(0.1, 0.4))(t, generator=gen(s))
        frac = float((out == 0).all(dim=0).float().mean())
        if frac > 0:
            erased += 1
            assert 0.08 <= frac <= 0.42
    assert 30 < erased < 70
