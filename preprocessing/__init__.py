"""Oxford RobotCar preprocessing: raw runs -> paired image + LiDAR-submap benchmark samples.

Sub-packages:
- ``preprocessing.robotcar``: readers for the raw RobotCar layout (timestamps, INS, LiDAR, camera).
- ``preprocessing.synthetic``: a deterministic synthetic RobotCar written in the same raw layout.

Modules ``submaps``, ``pairing``, ``splits``, ``upstream`` and ``manifest`` build the benchmark outputs;
``pipeline`` runs them end to end and ``report`` summarises what was done and skipped.
"""
