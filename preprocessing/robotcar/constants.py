"""Constants of the Oxford RobotCar dataset and the PointNetVLAD benchmark.

Sources: robotcar-dataset-sdk (extrinsics, camera models), mikacuy/pointnetvlad (test squares, radii),
jac99/MinkLocMultimodal (image pairing). See ``docs/robotcar-format.md``.
"""

from __future__ import annotations

import re

#: Run folder names: ``YYYY-MM-DD-HH-MM-SS``.
RUN_NAME_RE = re.compile(r"^\d{4}-\d{2}-\d{2}-\d{2}-\d{2}-\d{2}$")

#: ``extrinsics/<sensor>.txt`` contents of the real dataset: sensor pose in the vehicle frame, ``x y z roll pitch yaw``.
EXTRINSICS = {
    "stereo": (0.0, 0.0, 0.0, 0.0, 0.0, 0.0),
    "ins": (-1.7132, 0.1181, 1.1948, -0.0125, 0.0400, 0.0050),
    "lms_front": (1.7589, 0.2268, 1.0411, -0.0437, -1.4572, 0.0356),
    "ldmrs": (1.5349, 0.0090, 1.3777, 0.0205, 0.0767, -0.0299),
}

#: Camera model of ``stereo/centre`` (``models/stereo_narrow_left.txt``): fx fy cx cy at 1280 x 960.
STEREO_CENTRE_MODEL = "stereo_narrow_left"
STEREO_CENTRE_INTRINSICS = (964.828979, 964.828979, 643.788025, 484.407990)
STEREO_CENTRE_SIZE = (1280, 960)  # width, height
#: ``G_camera_image``: image frame (x right, y down, z forward) -> camera frame (x forward, y right, z down).
G_CAMERA_IMAGE = (
    (0.0, 0.0, 1.0, 0.0),
    (1.0, 0.0, 0.0, 0.0),
    (0.0, 1.0, 0.0, 0.0),
    (0.0, 0.0, 0.0, 1.0),
)
#: Bayer pattern of the stereo cameras (the mono cameras use RGGB).
BAYER_STEREO = "GBRG"

#: ``gps/ins.csv`` header (15 columns).
INS_COLUMNS = (
    "timestamp", "ins_status", "latitude", "longitude", "altitude", "northing", "easting", "down",
    "utm_zone", "velocity_north", "velocity_east", "velocity_down", "roll", "pitch", "yaw",
)

#: Points per ``lms_front`` scan (270 deg at 0.5 deg).
LMS_POINTS_PER_SCAN = 541

#: PointNetVLAD test-square centres (northing, easting) and half-width in metres (strict inequality).
TEST_SQUARES = (
    (5735712.768124, 620084.402381),
    (5735611.299219, 620540.270327),
    (5735237.358209, 620543.094379),
    (5734749.303802, 619932.693364),
)
TEST_SQUARE_HALF_WIDTH = 150.0

#: Benchmark submap constants.
SUBMAP_POINTS = 4096
SUBMAP_BYTES = SUBMAP_POINTS * 3 * 8
SUBMAP_LENGTH_M = 20.0
TRAIN_STRIDE_M = 10.0
EVAL_STRIDE_M = 20.0

#: Benchmark folder and file names.
EVAL_CLOUD_DIR = "pointcloud_20m"
EVAL_LOCATIONS_CSV = "pointcloud_locations_20m.csv"
TRAIN_CLOUD_DIR = "pointcloud_20m_10overlap"
TRAIN_LOCATIONS_CSV = "pointcloud_locations_20m_10overlap.csv"

#: Radii of the training tuples and evaluation sets (metres).
POSITIVE_RADIUS_M = 10.0
NON_NEGATIVE_RADIUS_M = 50.0
EVAL_TRUE_NEIGHBOUR_RADIUS_M = 25.0

#: ``generate_test_sets.py``: the 23 Oxford test runs are these indices of ``sorted(listdir(oxford))`` (45 runs).
PNV_TEST_RUN_INDICES = (5, 6, 7, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 22, 24, 31, 32, 33, 38, 39, 43, 44)
