"""Training-free place descriptors, one per modality, to gauge how hard a dataset is for each sensor.

- ``tiny_image``: the image shrunk to 16 x 12 RGB, zero-mean and unit-norm (Torralba's tiny images).
- ``hog``: histograms of gradient orientation (9 unsigned bins) in 8 x 8 cells of the grey image resized to
  64 x 48, square-rooted and unit-norm (gradient layout, robust to colour shifts).
- ``bev_height``: a 16 x 16 bird's-eye grid over the normalised submap, maximum height per cell, unit-norm.
"""

from __future__ import annotations

import numpy as np


def _unit(v: np.ndarray) -> np.ndarray:
    v = v.astype(np.float64).ravel()
    v = v - v.mean()
    return v / max(np.linalg.norm(v), 1e-12)


def tiny_image(rgb: np.ndarray) -> np.ndarray:
    import cv2

    return _unit(cv2.resize(rgb, (16, 12), interpolation=cv2.INTER_AREA))


def hog(rgb: np.ndarray, cell: int = 8, bins: int = 9) -> np.ndarray:
    import cv2

    grey = cv2.cvtColor(cv2.resize(rgb, (64, 48), interpolation=cv2.INTER_AREA), cv2.COLOR_RGB2GRAY)
    gy, gx = np.gradient(grey.astype(np.float64))
    magnitude = np.hypot(gx, gy)
    angle = np.mod(np.arctan2(gy, gx), np.pi)
    b = np.minimum((angle / np.pi * bins).astype(int), bins - 1)
    h, w = grey.shape
    cells = (np.arange(h)[:, None] // cell) * (w // cell) + np.arange(w)[None, :] // cell
    hist = np.zeros(((h // cell) * (w // cell), bins))
    np.add.at(hist, (cells.ravel(), b.ravel()), magnitude.ravel())
    return _unit(np.sqrt(hist))


def bev_height(cloud: np.ndarray, cells: int = 16) -> np.ndarray:
    """``cloud``: (N, 3) in [-1, 1] with z up (the benchmark's normalised submaps)."""
    ij = np.clip(((cloud[:, :2] + 1.0) / 2.0 * cells).astype(int), 0, cells - 1)
    grid = np.full((cells, cells), -1.0)
    np.maximum.at(grid, (ij[:, 0], ij[:, 1]), cloud[:, 2])
    return _unit(grid)


IMAGE_DESCRIPTORS = {"tiny_image": tiny_image, "hog": hog}
CLOUD_DESCRIPTORS = {"bev_height": bev_height}
