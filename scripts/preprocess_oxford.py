#!/usr/bin/env python
"""Oxford RobotCar (or the synthetic RobotCar) -> paired image + LiDAR-submap benchmark samples.

    python scripts/preprocess_oxford.py                       # synthetic default size, generated when absent
    python scripts/preprocess_oxford.py synthetic=quick       # the small size used by the tests
    python scripts/preprocess_oxford.py source=oxford source.paths.raw_root=/data/robotcar

See configs/preprocess.yaml for every option.
"""

import sys

import hydra
from hydra.core.hydra_config import HydraConfig


@hydra.main(version_base="1.3", config_path="../configs", config_name="preprocess")
def main(cfg) -> None:
    from preprocessing.cli import run

    code = run(cfg, run_dir=HydraConfig.get().runtime.output_dir)
    if code:
        sys.exit(code)


if __name__ == "__main__":
    main()
