"""Demosaicing, undistortion and frame processing of raw GBRG ``stereo/centre`` frames."""

from __future__ import annotations

import io
import warnings

import cv2
import numpy as np
import pytest
from PIL import Image

from preprocessing.robotcar.camera import (
    CorruptImage,
    bayer_mosaic,
    decode_bayer_png,
    demosaic_fast,
    demosaic_sdk,
    identity_lut,
    process_frame,
    truncate_to_uint8,
    undistort_fast,
    undistort_sdk,
)

#: GBRG: row 0 is G B G B..., row 1 is R G R G...
_GBRG = (("G", "B"), ("R", "G"))
_CH = {"R": 0, "G": 1, "B": 2}


def _colour_at(y, x):
    return _GBRG[y % 2][x % 2]


def naive_bilinear_gbrg(raw: np.ndarray) -> np.ndarray:
    """Bilinear demosaic with loops, interior pixels only (border pixels left NaN).

    A pixel keeps its own colour; a missing colour is the mean of the 4-neighbours of that colour if there are
    any, otherwise of the diagonal neighbours of that colour.
    """
    h, w = raw.shape
    out = np.full((h, w, 3), np.nan)
    for y in range(1, h - 1):
        for x in range(1, w - 1):
            own = _colour_at(y, x)
            for colour, c in _CH.items():
                if colour == own:
                    out[y, x, c] = float(raw[y, x])
                    continue
                near = [float(raw[y + dy, x + dx]) for dy, dx in ((-1, 0), (1, 0), (0, -1), (0, 1))
                        if _colour_at(y + dy, x + dx) == colour]
                if not near:
                    near = [float(raw[y + dy, x + dx]) for dy, dx in ((-1, -1), (-1, 1), (1, -1), (1, 1))
                            if _colour_at(y + dy, x + dx) == colour]
                out[y, x, c] = sum(near) / len(near)
    return out


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _decode_rgb(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as img:
        assert img.mode == "RGB"
        return np.array(img)


def _smooth_rgb(h, w):
    y, x = np.mgrid[0:h, 0:w].astype(float)
    r = 120 + 60 * np.sin(x / 17.0) * np.cos(y / 23.0)
    g = 110 + 50 * np.cos(x / 29.0 + y / 31.0)
    b = 100 + 40 * np.sin((x + y) / 41.0)
    return np.clip(np.stack([r, g, b], axis=-1), 0, 255).astype(np.uint8)


# ------------------------------------------------------------------------------------------------------------

def test_bayer_mosaic_gbrg_layout():
    rgb = np.zeros((4, 6, 3), np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 10, 20, 30
    m = bayer_mosaic(rgb, "GBRG")
    assert m.tolist()[0] == [20, 30, 20, 30, 20, 30]
    assert m.tolist()[1] == [10, 20, 10, 20, 10, 20]
    assert m.tolist()[2] == m.tolist()[0]
    with pytest.raises(ValueError):
        bayer_mosaic(rgb, "GBXG")


def test_demosaic_sdk_equals_naive_bilinear_interior():
    rng = np.random.default_rng(0)
    raw = rng.integers(0, 256, (14, 18), dtype=np.uint8)
    ref = naive_bilinear_gbrg(raw)
    got = demosaic_sdk(raw, "GBRG")
    assert got.dtype == np.float64 and got.shape == (14, 18, 3)
    np.testing.assert_array_equal(got[1:-1, 1:-1], ref[1:-1, 1:-1])


def test_demosaic_fast_within_one_level_interior():
    rng = np.random.default_rng(1)
    raw = rng.integers(0, 256, (16, 20), dtype=np.uint8)
    ref = naive_bilinear_gbrg(raw)
    got = demosaic_fast(raw, "GBRG")
    assert got.dtype == np.uint8 and got.shape == (16, 20, 3)
    diff = np.abs(got[2:-2, 2:-2].astype(float) - ref[2:-2, 2:-2])
    assert diff.max() <= 1.0


def test_constant_colour_recovered_and_opencv_pitfall():
    colour = (200, 100, 30)
    rgb = np.empty((16, 20, 3), np.uint8)
    rgb[:] = colour
    mosaic = bayer_mosaic(rgb, "GBRG")
    sdk = demosaic_sdk(mosaic, "GBRG")
    fast = demosaic_fast(mosaic, "GBRG")
    assert (sdk[1:-1, 1:-1] == colour).all()
    assert (fast[1:-1, 1:-1] == colour).all()
    # the pitfall: OpenCV's short name "BayerGB" is NOT the GBRG sensor layout (red and blue swap)
    wrong = cv2.cvtColor(mosaic, cv2.COLOR_BayerGB2RGB)
    assert not (wrong[2:-2, 2:-2] == colour).all(axis=-1).any()
    np.testing.assert_array_equal(wrong[2:-2, 2:-2], np.broadcast_to((30, 100, 200), wrong[2:-2, 2:-2].shape))
    right = cv2.cvtColor(mosaic, cv2.COLOR_BayerGR2RGB)
    np.testing.assert_array_equal(right, fast)


def test_sdk_border_overflow_exists():
    """colour-demosaicing's reflect border duplicates same-colour pixels: border values exceed 255."""
    mosaic = bayer_mosaic(np.full((8, 8, 3), 200, np.uint8), "GBRG")
    sdk = demosaic_sdk(mosaic, "GBRG")
    assert sdk.max() > 255
    assert sdk[1:-1, 1:-1].max() == 200


def test_truncate_to_uint8():
    x = np.array([255.9, 256.0, 300.7, 0.4, 0.0, 511.99, 128.5])
    assert truncate_to_uint8(x).tolist() == [255, 0, 44, 0, 0, 255, 128]
    assert truncate_to_uint8(x).dtype == np.uint8
    rng = np.random.default_rng(2)
    v = rng.uniform(0, 1000, 500)
    assert truncate_to_uint8(v).tolist() == [int(a) % 256 for a in v]


@pytest.mark.parametrize("undistort", [undistort_sdk, undistort_fast])
def test_undistort_identity_lut_is_identity(undistort):
    rng = np.random.default_rng(3)
    h, w = 12, 17
    lut = identity_lut(w, h)
    img8 = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    out = undistort(img8, lut)
    assert out.shape == img8.shape and out.dtype == img8.dtype
    np.testing.assert_array_equal(out[1:-1, 1:-1], img8[1:-1, 1:-1])
    if undistort is undistort_sdk:
        imgf = rng.uniform(0, 300, (h, w, 3))
        np.testing.assert_allclose(undistort(imgf, lut)[1:-1, 1:-1], imgf[1:-1, 1:-1], atol=1e-9)
    with pytest.raises(ValueError):
        undistort(img8, identity_lut(w, h + 1))


@pytest.mark.parametrize("undistort", [undistort_sdk, undistort_fast])
def test_undistort_shift_lut(undistort):
    """A LUT that samples from one pixel to the right shifts the image left (x_src, y_src order)."""
    rng = np.random.default_rng(4)
    h, w = 10, 12
    img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    lut = identity_lut(w, h)
    lut[:, 0] += 1.0
    out = undistort(img, lut)
    np.testing.assert_array_equal(out[:, :-1], img[:, 1:])
    lut = identity_lut(w, h)
    lut[:, 1] += 2.0
    out = undistort(img, lut)
    np.testing.assert_array_equal(out[:-2], img[2:])


@pytest.mark.parametrize("mode", ["sdk", "fast"])
def test_process_frame_shape(mode):
    h, w = 96, 128
    raw = bayer_mosaic(_smooth_rgb(h, w), "GBRG")
    out = _decode_rgb(process_frame(_png(raw), "frame.png", mode=mode))
    assert out.shape == (h // 4, w // 4, 3)
    out1 = _decode_rgb(process_frame(_png(raw), "frame.png", mode=mode, downsample=1))
    assert out1.shape == (h, w, 3)
    out_lut = _decode_rgb(process_frame(_png(raw), "frame.png", mode=mode, lut=identity_lut(w, h)))
    assert out_lut.shape == (h // 4, w // 4, 3)
    np.testing.assert_allclose(out_lut[1:-1, 1:-1].astype(float), out[1:-1, 1:-1].astype(float), atol=1)


def test_process_frame_modes_agree_on_smooth_image():
    h, w = 96, 128
    rgb = _smooth_rgb(h, w)
    raw = bayer_mosaic(rgb, "GBRG")
    sdk = _decode_rgb(process_frame(_png(raw), "f.png", mode="sdk")).astype(float)
    fast = _decode_rgb(process_frame(_png(raw), "f.png", mode="fast")).astype(float)
    assert np.abs(sdk - fast).mean() < 3
    assert np.abs(sdk[2:-2, 2:-2] - fast[2:-2, 2:-2]).max() <= 4
    # and both are close to the true (area-downsampled) colour in the interior
    truth = cv2.resize(rgb, (w // 4, h // 4), interpolation=cv2.INTER_AREA).astype(float)
    assert np.abs(fast[2:-2, 2:-2] - truth[2:-2, 2:-2]).mean() < 2


@pytest.mark.parametrize("mode", ["sdk", "fast"])
def test_process_frame_corrupt_png(mode):
    good = _png(bayer_mosaic(_smooth_rgb(32, 32), "GBRG"))
    for data in (good[: len(good) // 2], b"", b"not a png at all", good[:8]):
        with pytest.raises(CorruptImage, match="run/stereo/centre/1400000000000000.png"):
            process_frame(data, "run/stereo/centre/1400000000000000.png", mode=mode)


@pytest.mark.parametrize("mode", ["sdk", "fast"])
def test_process_frame_rejects_rgb_png(mode):
    data = _png(_smooth_rgb(16, 16))
    with pytest.raises(CorruptImage, match="single-channel") as exc:
        process_frame(data, "demosaiced.png", mode=mode)
    assert "demosaiced.png" in str(exc.value)
    with pytest.raises(CorruptImage, match="single-channel"):
        decode_bayer_png(_png(np.zeros((8, 8), np.uint16) + 1000), "sixteen.png", mode)


def test_process_frame_unknown_mode():
    with pytest.raises(ValueError, match="nearest"):
        process_frame(_png(np.zeros((8, 8), np.uint8)), "x.png", mode="nearest")


def test_sdk_parity_with_reference_pipeline():
    """The ``sdk`` path equals SDK load_image + MinkLoc++ convert_img built directly from the libraries."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from colour_demosaicing import demosaicing_CFA_Bayer_bilinear
    rng = np.random.default_rng(5)
    h, w = 96, 128
    # reflect borders can multiply a value by up to 2.25: keep raw values <= 113 so nothing exceeds 255
    raw = rng.integers(0, 114, (h, w), dtype=np.uint8)
    ref_float = demosaicing_CFA_Bayer_bilinear(raw, "GBRG")
    assert ref_float.max() < 256
    ref = Image.fromarray(ref_float.astype(np.uint8)).resize((w // 4, h // 4), Image.BICUBIC)
    got = _decode_rgb(process_frame(_png(raw), "f.png", mode="sdk"))
    np.testing.assert_array_equal(got, np.array(ref))
    # also without downsampling
    got1 = _decode_rgb(process_frame(_png(raw), "f.png", mode="sdk", downsample=1))
    np.testing.assert_array_equal(got1, ref_float.astype(np.uint8))


def test_sdk_wraps_overflowing_borders_like_numpy_x86():
    """Bright raw frames overflow at the border; the sdk path wraps them modulo 256 (truncating cast)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from colour_demosaicing import demosaicing_CFA_Bayer_bilinear
    rng = np.random.default_rng(6)
    raw = rng.integers(150, 256, (32, 48), dtype=np.uint8)
    ref_float = demosaicing_CFA_Bayer_bilinear(raw, "GBRG")
    assert ref_float.max() >= 256
    expected = np.array([[[int(v) % 256 for v in px] for px in row] for row in ref_float], np.uint8)
    got = _decode_rgb(process_frame(_png(raw), "f.png", mode="sdk", downsample=1))
    np.testing.assert_array_equal(got, expected)
