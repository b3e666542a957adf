"""Deployment of the image-only student: ONNX / TorchScript export with parity checks, and :class:`Localizer`
(embed images, a database of descriptors with positions, queries, save / load).

Names are loaded on first use (no torch / onnx import at package import).
"""

from __future__ import annotations

from crossmodal.lazy import lazy_exports

_EXPORTS = {
    "Localizer": "localizer", "Match": "localizer", "EmptyDatabaseError": "localizer",
    "DatabaseMismatchError": "localizer", "NotAStudentError": "localizer", "load_student": "localizer",
    "weights_digest": "localizer",
    "InputSpec": "inputs", "ImageInputError": "inputs", "preprocess": "inputs", "read_image": "inputs",
    "list_images": "inputs",
    "export_onnx": "export", "export_torchscript": "export", "export_student": "export", "onnx_parity": "export",
    "torchscript_parity": "export", "onnx_session": "export", "read_onnx_metadata": "export",
}

__all__ = list(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
