"""A deterministic synthetic Oxford RobotCar written in the raw RobotCar layout.

    from preprocessing.synthetic import SyntheticConfig, generate_synthetic_robotcar
    runs = generate_synthetic_robotcar("data/synthetic/raw", SyntheticConfig(**PRESETS["quick"]), workers=2)

A procedural town along a route through the PointNetVLAD test squares is ray cast (open3d) into ``stereo/centre``
Bayer frames and ``lms_front`` push-broom scans; ``gps/ins.csv`` holds the (slightly noisy) INS poses. Runs differ
in date, sun, weather, season, exposure, parked cars and driving; the town is shared. See docs/synthetic.md.
"""

from preprocessing.synthetic.config import GENERATOR_VERSION, PRESETS, SyntheticConfig
from preprocessing.synthetic.generate import STAMP, generate_synthetic_robotcar

__all__ = ["GENERATOR_VERSION", "PRESETS", "STAMP", "SyntheticConfig", "generate_synthetic_robotcar"]
