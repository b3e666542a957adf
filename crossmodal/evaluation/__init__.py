"""Place-recognition evaluation (the PointNetVLAD protocol)."""
