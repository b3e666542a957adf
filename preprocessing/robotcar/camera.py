"""``stereo/centre`` frames: raw GBRG Bayer PNGs, camera models and undistortion look-up tables.

Two processing modes turn a raw frame into the benchmark's downsampled RGB image:

- ``sdk``: identical to the RobotCar SDK's ``load_image`` followed by MinkLoc++'s ``convert_img``: PIL decode,
  colour-demosaicing's bilinear demosaic (float64), optional LUT undistortion by bilinear ``map_coordinates``,
  a truncating ``uint8`` cast (values above 255 at the border wrap, as numpy does on x86), PIL bicubic resize.
  Use it for pixel parity with published MinkLoc++ / DistilVPR images.
- ``fast``: OpenCV throughout (bilinear demosaic with the correct GBRG code, ``remap`` for undistortion, area
  resize). Interior pixels agree with ``sdk`` to rounding; borders differ (no wrap artefact).
"""

from __future__ import annotations

import dataclasses
import io
import re
import warnings
from pathlib import Path

import numpy as np

from preprocessing.errors import InputError
from preprocessing.robotcar.constants import G_CAMERA_IMAGE

MODES = ("sdk", "fast")


class CorruptImage(ValueError):
    pass


@dataclasses.dataclass
class CameraModel:
    """Pinhole intrinsics, ``G_camera_image`` and an optional undistortion LUT ((H*W, 2) source x, y)."""

    fx: float
    fy: float
    cx: float
    cy: float
    G_camera_image: np.ndarray = dataclasses.field(default_factory=lambda: np.array(G_CAMERA_IMAGE))
    lut: np.ndarray | None = None
    name: str = ""

    def scaled(self, factor: float) -> CameraModel:
        """The same camera at ``factor`` times the resolution (the LUT is not carried over)."""
        return dataclasses.replace(self, fx=self.fx * factor, fy=self.fy * factor, cx=self.cx * factor,
                                   cy=self.cy * factor, lut=None)


def read_camera_model(models_dir: str | Path, name: str, load_lut: bool = True) -> CameraModel:
    """Read ``<models_dir>/<name>.txt`` (``fx fy cx cy`` then the 4x4 ``G_camera_image``) and, when present
    and requested, ``<name>_distortion_lut.bin``."""
    path = Path(models_dir) / f"{name}.txt"
    try:
        lines = [ln.split() for ln in path.read_text().splitlines() if ln.strip()]
        intr = [float(x) for x in lines[0]]
        G = np.array([[float(x) for x in ln] for ln in lines[1:]])
    except FileNotFoundError:
        raise InputError(f"{path}: camera model not found; copy the SDK's models/ folder into the raw root "
                         f"(or set `undistort: false`)") from None
    except (ValueError, IndexError):
        raise InputError(f"{path}: malformed camera model; expected 'fx fy cx cy' then a 4x4 matrix") from None
    if len(intr) != 4 or G.shape != (4, 4):
        raise InputError(f"{path}: malformed camera model; expected 'fx fy cx cy' then a 4x4 matrix")
    lut = None
    lut_path = Path(models_dir) / f"{name}_distortion_lut.bin"
    if load_lut and lut_path.is_file():
        raw = np.fromfile(lut_path, dtype=np.float64)
        if raw.size % 2:
            raise InputError(f"{lut_path}: odd number of float64 values; the LUT is corrupt, re-download models/")
        lut = raw.reshape(2, raw.size // 2).T  # (N, 2): x_src, y_src per undistorted pixel, row-major
    return CameraModel(*intr, G_camera_image=G, lut=lut, name=name)


def camera_model_text(model: CameraModel) -> str:
    rows = [f"{model.fx:.6f} {model.fy:.6f} {model.cx:.6f} {model.cy:.6f}"]
    rows += [" ".join(f"{v:.6f}" for v in row) for row in np.asarray(model.G_camera_image)]
    return "\n".join(rows) + "\n"


def lut_bytes(lut: np.ndarray) -> bytes:
    """Serialise an (N, 2) LUT in the SDK's ``[2, N]`` float64 layout."""
    return np.ascontiguousarray(np.asarray(lut, np.float64).T).tobytes()


def identity_lut(width: int, height: int) -> np.ndarray:
    """A LUT that maps every pixel onto itself (a valid test fixture)."""
    y, x = np.mgrid[0:height, 0:width]
    return np.column_stack([x.ravel(), y.ravel()]).astype(np.float64)


# ----------------------------------------------------------------------------------------------------------------
# Bayer frames

def decode_bayer_png(data: bytes, path: str | Path = "<bytes>", mode: str = "fast") -> np.ndarray:
    """Decode a raw Bayer PNG to (H, W) uint8; raise :class:`CorruptImage` naming ``path`` on failure."""
    if mode == "sdk":
        from PIL import Image

        try:
            with Image.open(io.BytesIO(data)) as img:
                img.load()
                arr = np.array(img)
        except Exception as exc:  # PIL raises several types for truncated / invalid files
            raise CorruptImage(f"{path}: cannot decode PNG ({exc}); the file is truncated or corrupt, "
                               f"re-extract it from the run's tar chunk") from None
    else:
        import cv2

        # errors only: a corrupt file is reported by the exception below, not by libpng warnings on stderr
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
        buf = np.frombuffer(data, np.uint8)
        arr = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED) if buf.size else None
        if arr is None:
            raise CorruptImage(f"{path}: cannot decode PNG; the file is truncated or corrupt, "
                               f"re-extract it from the run's tar chunk")
    if arr.ndim != 2 or arr.dtype != np.uint8:
        raise CorruptImage(f"{path}: expected a single-channel 8-bit raw Bayer frame, got shape {arr.shape} "
                           f"{arr.dtype}; point the tool at the raw stereo/centre folder, not demosaiced images")
    return arr


def demosaic_sdk(raw: np.ndarray, pattern: str = "GBRG") -> np.ndarray:
    """colour-demosaicing's bilinear demosaic (the SDK's); float64 (H, W, 3) RGB."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from colour_demosaicing import demosaicing_CFA_Bayer_bilinear
    return demosaicing_CFA_Bayer_bilinear(raw, pattern)


#: OpenCV's Bayer codes are named after the second row's first two pixels; these are the right ones.
_CV_BAYER_CODES = {"GBRG": "COLOR_BayerGR2RGB", "RGGB": "COLOR_BayerBG2RGB", "GRBG": "COLOR_BayerGB2RGB",
                   "BGGR": "COLOR_BayerRG2RGB"}


def demosaic_fast(raw: np.ndarray, pattern: str = "GBRG") -> np.ndarray:
    """OpenCV bilinear demosaic; uint8 (H, W, 3) RGB."""
    import cv2

    return cv2.cvtColor(raw, getattr(cv2, _CV_BAYER_CODES[pattern.upper()]))


def undistort_sdk(image: np.ndarray, lut: np.ndarray) -> np.ndarray:
    """The SDK's ``CameraModel.undistort``: bilinear ``map_coordinates`` per channel, zero outside."""
    from scipy.ndimage import map_coordinates

    h, w = image.shape[:2]
    if h * w != lut.shape[0]:
        raise ValueError(f"undistortion LUT has {lut.shape[0]} entries for a {w}x{h} image")
    coords = lut[:, 1::-1].T.reshape(2, h, w)
    out = np.stack([map_coordinates(image[:, :, c], coords, order=1) for c in range(image.shape[2])], axis=-1)
    return out.astype(image.dtype)


def undistort_fast(image: np.ndarray, lut: np.ndarray) -> np.ndarray:
    """OpenCV ``remap`` with the LUT (bilinear, zero outside)."""
    import cv2

    h, w = image.shape[:2]
    if h * w != lut.shape[0]:
        raise ValueError(f"undistortion LUT has {lut.shape[0]} entries for a {w}x{h} image")
    map_x = lut[:, 0].reshape(h, w).astype(np.float32)
    map_y = lut[:, 1].reshape(h, w).astype(np.float32)
    return cv2.remap(image, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def truncate_to_uint8(image: np.ndarray) -> np.ndarray:
    """numpy's ``astype(np.uint8)`` of non-negative floats as it behaves on x86: truncate, then wrap modulo 256.

    Written out explicitly because float -> uint8 overflow is undefined in C and differs across platforms.
    """
    return (np.trunc(image).astype(np.int64) & 0xFF).astype(np.uint8)


def process_frame(data: bytes, path: str | Path, mode: str = "fast", lut: np.ndarray | None = None,
                  downsample: int = 4, pattern: str = "GBRG") -> bytes:
    """Raw Bayer PNG bytes -> demosaiced, optionally undistorted, downsampled RGB PNG bytes."""
    if mode not in MODES:
        raise ValueError(f"unknown image mode {mode!r}; choose one of {MODES}")
    raw = decode_bayer_png(data, path, mode)
    h, w = raw.shape
    if mode == "sdk":
        from PIL import Image

        rgb = demosaic_sdk(raw, pattern)
        if lut is not None:
            rgb = undistort_sdk(rgb, lut)
        img = Image.fromarray(truncate_to_uint8(rgb))
        if downsample != 1:
            img = img.resize((w // downsample, h // downsample), Image.BICUBIC)
        out = io.BytesIO()
        img.save(out, format="PNG")
        return out.getvalue()
    import cv2

    rgb = demosaic_fast(raw, pattern)
    if lut is not None:
        rgb = undistort_fast(rgb, lut)
    if downsample != 1:
        rgb = cv2.resize(rgb, (w // downsample, h // downsample), interpolation=cv2.INTER_AREA)
    ok, enc = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_PNG_COMPRESSION, 1])
    if not ok:
        raise RuntimeError(f"PNG encoding failed for {path}")
    return enc.tobytes()


def bayer_mosaic(rgb: np.ndarray, pattern: str = "GBRG") -> np.ndarray:
    """Sample an (H, W, 3) RGB image through a Bayer colour filter array -> (H, W) (the synthetic camera)."""
    pattern = pattern.upper()
    if not re.fullmatch(r"[RGB]{4}", pattern):
        raise ValueError(f"bad Bayer pattern {pattern!r}")
    out = np.empty(rgb.shape[:2], rgb.dtype)
    channel = {"R": 0, "G": 1, "B": 2}
    for k, (dy, dx) in enumerate(((0, 0), (0, 1), (1, 0), (1, 1))):
        out[dy::2, dx::2] = rgb[dy::2, dx::2, channel[pattern[k]]]
    return out
