#!/usr/bin/env python
"""Time the synthetic RobotCar generator on a preset.

    python scripts/bench_synthetic.py quick            # into a temporary folder, removed afterwards
    python scripts/bench_synthetic.py default --workers 2 --keep data/synthetic-default/raw

Prints wall time, CPU time of this process and its workers, the load average before and after (other work on the
machine inflates the wall time), the number of files and the bytes written.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from preprocessing.synthetic import (
    PRESETS,
    SyntheticConfig,
    generate_synthetic_robotcar,
)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("preset", choices=sorted(PRESETS))
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--keep", type=Path, default=None, help="generate here and keep the output")
    ap.add_argument("--progress", action="store_true")
    args = ap.parse_args()
    root = args.keep or Path(tempfile.mkdtemp(prefix=f"synthetic-{args.preset}-"))
    load0 = os.getloadavg()
    t0, c0 = time.perf_counter(), time.process_time()
    runs = generate_synthetic_robotcar(root, SyntheticConfig.preset(args.preset), workers=args.workers,
                                       progress=args.progress)
    wall = time.perf_counter() - t0
    cpu_self = time.process_time() - c0
    ch = resource.getrusage(resource.RUSAGE_CHILDREN)
    files = [p for p in root.rglob("*") if p.is_file()]
    size = sum(p.stat().st_size for p in files)
    print(f"preset {args.preset}: {len(runs)} runs, workers {args.workers}")
    print(f"wall {wall:.1f} s; CPU main {cpu_self:.1f} s + workers {ch.ru_utime + ch.ru_stime:.1f} s")
    print(f"load average before {load0[0]:.2f}, after {os.getloadavg()[0]:.2f} (on {os.cpu_count()} cores)")
    print(f"{len(files)} files, {size / 1e6:.0f} MB under {root}")
    if args.keep is None:
        shutil.rmtree(root)
    return 0


if __name__ == "__main__":
    sys.exit(main())
