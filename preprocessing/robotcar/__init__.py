"""Readers (and, for the synthetic generator, writers) of the raw Oxford RobotCar layout."""
