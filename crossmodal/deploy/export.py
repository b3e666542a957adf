"""Export a student to ONNX and TorchScript, and check them against the eager model.

- :func:`export_onnx`: ``images [B, 3, H, W] float32 (normalised) → descriptor [B, D]``, dynamic batch, opset 17,
  through torch's TorchScript-based exporter (``dynamo=False``: the dynamo exporter needs ``onnxscript``, which is
  not a dependency). The file's metadata (``crossmodal.input``, ``crossmodal.model``, JSON) carries the input spec
  and the model's identity, so :meth:`crossmodal.deploy.Localizer.from_onnx` needs nothing else.
- :func:`export_torchscript`: ``torch.jit.trace`` of the same wrapper; the same metadata as ``_extra_files``.
- :func:`onnx_parity` / :func:`torchscript_parity`: max abs difference of the descriptors against eager PyTorch
  on the same inputs (onnxruntime, CPU).

Only image-only students export: sparse convolution (the LiDAR branch) has no ONNX export.
"""

from __future__ import annotations

import io
import json
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from preprocessing.io import atomic_path, atomic_write_bytes

from .inputs import InputSpec

INPUT_NAME, OUTPUT_NAME = "images", "descriptor"
META_INPUT, META_MODEL = "crossmodal.input", "crossmodal.model"
OPSET = 17


def _torch():
    import torch

    return torch


def descriptor_module(model):
    """``model`` wrapped to map an image tensor to its descriptor tensor (what the exports hold), in eval mode."""
    torch = _torch()

    class DescriptorOnly(torch.nn.Module):
        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, images):
            return self.net(images)["descriptor"]

    return DescriptorOnly(model).eval()


def example_input(spec: InputSpec, batch: int = 2, seed: int = 0):
    """A ``[batch, 3, H, W]`` float32 tensor of normalised random 8-bit images."""
    torch = _torch()
    from .inputs import normalize

    rng = np.random.default_rng(seed)
    h, w = spec.image_size
    return torch.from_numpy(normalize(rng.integers(0, 256, (batch, h, w, 3), dtype=np.uint8), spec))


def _metadata(spec: InputSpec, identity: Mapping[str, Any]) -> dict[str, str]:
    return {META_INPUT: json.dumps(spec.to_dict()), META_MODEL: json.dumps(dict(identity), default=str)}


def export_onnx(model, path: str | Path, spec: InputSpec, identity: Mapping[str, Any] | None = None,
                opset: int = OPSET) -> Path:
    """Write ``model`` (an image student) as ONNX to ``path`` (atomically); returns the path."""
    import onnx

    torch = _torch()
    was_training = model.training
    wrapper = descriptor_module(model)
    buf = io.BytesIO()
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # the legacy exporter's deprecation and tracer warnings
            torch.onnx.export(wrapper, (example_input(spec),), buf, dynamo=False, input_names=[INPUT_NAME],
                              output_names=[OUTPUT_NAME], opset_version=int(opset), do_constant_folding=True,
                              dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}})
    finally:
        model.train(was_training)
    proto = onnx.load_from_string(buf.getvalue())
    for key, value in _metadata(spec, identity or {}).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.producer_name = "crossmodal"
    onnx.checker.check_model(proto)
    atomic_write_bytes(path, proto.SerializeToString())
    return Path(path)


def read_onnx_metadata(path: str | Path) -> tuple[InputSpec, dict[str, Any]]:
    """The input spec and model identity stored by :func:`export_onnx`."""
    import onnx

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"ONNX model not found: {path}")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - protobuf's decode errors have no common base
        raise ValueError(f"{path}: cannot read an ONNX model ({type(exc).__name__}: {exc})") from None
    meta = {p.key: p.value for p in proto.metadata_props}
    if META_INPUT not in meta:
        raise ValueError(f"{path}: an ONNX model without {META_INPUT!r} metadata (not exported by crossmodal); "
                         f"export it with `python scripts/localize.py export`")
    return InputSpec.from_dict(json.loads(meta[META_INPUT])), json.loads(meta.get(META_MODEL, "{}"))


def export_torchscript(model, path: str | Path, spec: InputSpec, identity: Mapping[str, Any] | None = None) -> Path:
    """Write ``model`` traced with TorchScript to ``path`` (atomically), metadata as ``_extra_files``."""
    torch = _torch()
    was_training = model.training
    wrapper = descriptor_module(model)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(wrapper, (example_input(spec),), check_trace=False)
    finally:
        model.train(was_training)
    extra = {k: v.encode() for k, v in _metadata(spec, identity or {}).items()}
    with atomic_path(path) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch 2.15 deprecates TorchScript in favour of export
        torch.jit.save(traced, str(tmp), _extra_files=extra)
    return Path(path)


def onnx_session(path: str | Path, threads: int | None = None, spinning: bool = True):
    """An onnxruntime CPU session (``threads``: intra-op threads, None: onnxruntime's default; ``spinning``:
    let idle worker threads spin-wait between runs, onnxruntime's default; off when other work shares the
    cores, e.g. a benchmark alternating with PyTorch)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = int(threads)
        opts.inter_op_num_threads = 1
    if not spinning:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def _eager(model, x) -> np.ndarray:
    torch = _torch()
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            return model(x)["descriptor"].float().cpu().numpy()
    finally:
        model.train(was_training)


def onnx_parity(model, onnx_path: str | Path, inputs: Any = None, spec: InputSpec | None = None,
                batch: int = 4, threads: int | None = None) -> float:
    """Max abs difference between onnxruntime's and eager PyTorch's descriptors on ``inputs`` (a ``[B, 3, H, W]``
    float32 tensor / array; default ``batch`` random images of ``spec``'s size)."""
    torch = _torch()
    if inputs is None:
        if spec is None:
            spec = read_onnx_metadata(onnx_path)[0]
        inputs = example_input(spec, batch, seed=1)
    x = torch.as_tensor(np.asarray(inputs, np.float32))
    ref = _eager(model, x)
    out = onnx_session(onnx_path, threads).run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})[0]
    return float(np.abs(out - ref).max())


def torchscript_parity(model, ts_path: str | Path, inputs: Any = None, spec: InputSpec | None = None,
                       batch: int = 4) -> float:
    torch = _torch()
    if inputs is None:
        inputs = example_input(spec, batch, seed=1)
    x = torch.as_tensor(np.asarray(inputs, np.float32))
    ref = _eager(model, x)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        traced = torch.jit.load(str(ts_path), map_location="cpu")
    with torch.inference_mode():
        out = traced(x).float().numpy()
    return float(np.abs(out - ref).max())


def export_student(checkpoint: str | Path, out_dir: str | Path, formats: Sequence[str] = ("onnx", "torchscript"),
                   image_size: Sequence[int] | None = None, check: bool = True, batch: int = 4,
                   threads: int | None = None) -> dict[str, Any]:
    """Export a student checkpoint to ``out_dir/student.onnx`` and ``student.torchscript.pt`` (GeM exponent frozen,
    :func:`~crossmodal.deploy.localizer.freeze_for_inference`); with ``check``, the max abs differences against
    the checkpoint's own model in eager PyTorch (``parity``). A teacher checkpoint is refused."""
    from crossmodal.training.checkpoint import build_model

    from .localizer import load_student

    bad = sorted(set(formats) - {"onnx", "torchscript"})
    if bad:
        raise ValueError(f"unknown export format(s) {bad}; use onnx and/or torchscript")
    model, spec, identity, ckpt = load_student(checkpoint, image_size=image_size)
    reference = build_model(ckpt).eval()  # the unfrozen model, as trained: parity covers freezing and export
    out = Path(out_dir)
    result: dict[str, Any] = {"input": spec.to_dict(), "model": identity, "parity": {}}
    x = example_input(spec, batch, seed=1)
    if "onnx" in formats:
        result["onnx"] = str(export_onnx(model, out / "student.onnx", spec, identity))
        if check:
            result["parity"]["onnx_max_abs_diff"] = onnx_parity(reference, result["onnx"], x, threads=threads)
    if "torchscript" in formats:
        result["torchscript"] = str(export_torchscript(model, out / "student.torchscript.pt", spec, identity))
        if check:
            result["parity"]["torchscript_max_abs_diff"] = torchscript_parity(reference, result["torchscript"], x)
    if check:
        result["parity"]["inputs"] = f"{batch} random 8-bit images of {spec.size_text}, normalised"
        result["parity"]["descriptor_abs_max"] = float(np.abs(_eager(reference, x)).max())
        result["parity"]["frozen_eager_max_abs_diff"] = float(np.abs(_eager(model, x) - _eager(reference, x)).max())
    return result
