"""crossmodal: cross-modal knowledge distillation for place recognition.

Train with camera + LiDAR, deploy with the camera alone.
"""

__version__ = "0.1.0"
