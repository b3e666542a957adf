#!/usr/bin/env python
"""Preprocessing benchmarks, measured in one run and printed as ratios.

1. Pairing throughput (frames read, demosaiced, resized and written per second), fast (OpenCV) mode against the
   SDK-identical mode as the baseline, on raw 1280x960 GBRG frames (the real camera's size). Target: >= 3x.
2. End to end: synthetic generation + preprocessing of a preset in a fresh folder, per stage, against the budget
   (default preset: 5 minutes on 2 cores; quick: seconds).

    python scripts/bench_preprocess.py                   # both, quick preset
    python scripts/bench_preprocess.py --preset default  # the 5-minute budget check
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

BUDGET_S = {"default": 300.0, "quick": 30.0}


def make_frames(folder: Path, n: int, width: int, height: int, seed: int = 0) -> list[Path]:
    import cv2

    from preprocessing.robotcar.camera import bayer_mosaic

    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        low = rng.uniform(0, 255, (height // 32, width // 32, 3)).astype(np.float32)
        rgb = cv2.resize(low, (width, height), interpolation=cv2.INTER_CUBIC)
        rgb = np.clip(rgb + rng.normal(0, 8, rgb.shape), 0, 255).astype(np.uint8)
        p = folder / f"{1400000000000000 + i * 62500}.png"
        cv2.imwrite(str(p), bayer_mosaic(rgb, "GBRG"))
        paths.append(p)
    return paths


def bench_pairing(n: int, width: int, height: int) -> None:
    from preprocessing.pipeline import convert_frames

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        src = make_frames(tmp, n, width, height)
        rates = {}
        for mode in ("sdk", "fast"):
            jobs = [(str(p), str(tmp / mode / p.name)) for p in src]
            convert_frames(jobs[:2], mode, None, 4)  # warm-up (imports)
            t0 = time.perf_counter()
            errors = [e for _, e in convert_frames(jobs, mode, None, 4) if e]
            dt = time.perf_counter() - t0
            assert not errors, errors
            rates[mode] = n / dt
    print(f"\n## Pairing throughput ({n} frames {width}x{height} -> /4, one process)")
    print("| mode | frames/s | ratio vs sdk |\n|---|---:|---:|")
    for mode in ("sdk", "fast"):
        print(f"| {mode} | {rates[mode]:.1f} | {rates[mode] / rates['sdk']:.2f}x |")
    print(f"fast/sdk = {rates['fast'] / rates['sdk']:.1f}x (target >= 3x)")


def bench_end_to_end(preset: str, workers: int) -> None:
    from preprocessing.pairing import PairingConfig
    from preprocessing.pipeline import Sources, preprocess
    from preprocessing.synthetic import SyntheticConfig, generate_synthetic_robotcar
    from preprocessing.synthetic.config import PRESETS

    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "raw"
        t0 = time.perf_counter()
        generate_synthetic_robotcar(raw, SyntheticConfig(**PRESETS[preset]), workers=workers, progress=False)
        t_gen = time.perf_counter() - t0
        t0 = time.perf_counter()
        report = preprocess(Sources(raw_root=str(raw)), Path(tmp) / "out", pairing=PairingConfig(), workers=workers,
                            progress=False)
        t_pre = time.perf_counter() - t0
        t0 = time.perf_counter()
        preprocess(Sources(raw_root=str(raw)), Path(tmp) / "out", workers=workers, progress=False)
        t_rerun = time.perf_counter() - t0
    total = t_gen + t_pre
    print(f"\n## End to end, preset {preset}, {workers} workers")
    print("| stage | seconds |\n|---|---:|")
    print(f"| synthetic generation | {t_gen:.1f} |")
    for k, v in report.timings_s.items():
        print(f"| preprocessing: {k} | {v:.1f} |")
    print(f"| preprocessing total | {t_pre:.1f} |")
    print(f"| re-run (everything reused) | {t_rerun:.1f} |")
    t = report.to_json()["totals"]
    print(f"total {total:.1f} s = {total / BUDGET_S[preset]:.2f} of the {BUDGET_S[preset]:.0f} s budget; "
          f"{t['runs']} runs, {t['submaps']} submaps, {t['pairs']} pairs, splits {report.splits}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="quick", choices=sorted(BUDGET_S))
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--frames", type=int, default=40)
    ap.add_argument("--skip", choices=["pairing", "end_to_end"], action="append", default=[])
    args = ap.parse_args()
    if "pairing" not in args.skip:
        bench_pairing(args.frames, 1280, 960)
    if "end_to_end" not in args.skip:
        bench_end_to_end(args.preset, args.workers)


if __name__ == "__main__":
    main()
