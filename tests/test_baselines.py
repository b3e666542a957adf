"""Training-free descriptors: shapes, normalisation, invariances against naive reasoning."""

from __future__ import annotations

import numpy as np

from crossmodal.baselines.handcrafted import bev_height, hog, tiny_image


def test_descriptors_are_unit_norm_and_zero_mean():
    rng = np.random.default_rng(0)
    img = (rng.random((120, 160, 3)) * 255).astype(np.uint8)
    cloud = rng.uniform(-1, 1, (4096, 3))
    for d in (tiny_image(img), hog(img), bev_height(cloud)):
        assert abs(np.linalg.norm(d) - 1) < 1e-9 and abs(d.mean()) < 1e-9
    assert tiny_image(img).shape == (16 * 12 * 3,) and hog(img).shape == (8 * 6 * 9,)
    assert bev_height(cloud).shape == (256,)


def test_hog_ignores_a_global_contrast_change_and_tiny_image_an_offset():
    rng = np.random.default_rng(1)
    img = (rng.random((48, 64, 3)) * 200).astype(np.float64)
    darker = img * 0.5
    assert np.allclose(hog(img.astype(np.float32)), hog(darker.astype(np.float32)), atol=1e-6)
    assert np.allclose(tiny_image(img), tiny_image(img + 20.0), atol=1e-9)


def test_bev_height_takes_the_highest_point_per_cell():
    cloud = np.array([[-0.99, -0.99, 0.1], [-0.98, -0.98, 0.7], [0.99, 0.99, -0.2]])
    grid = np.full((16, 16), -1.0)
    grid[0, 0], grid[15, 15] = 0.7, -0.2
    expected = (grid.ravel() - grid.mean()) / np.linalg.norm(grid.ravel() - grid.mean())
    assert np.allclose(bev_height(cloud), expected)
