"""Models of the cross-modal setup."""

from .minkloc3d import MinkLoc3D, load_minkowski_state_dict

__all__ = ["MinkLoc3D", "load_minkowski_state_dict"]
