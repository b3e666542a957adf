"""ONNX / TorchScript export of students: parity with eager PyTorch (onnxruntime), metadata, dynamic batch."""

from __future__ import annotations

import json

import numpy as np
import pytest

from crossmodal.deploy import (
    Localizer,
    NotAStudentError,
    export_student,
    onnx_parity,
    onnx_session,
    read_onnx_metadata,
    weights_digest,
)
from crossmodal.evaluation.testing import (
    make_student_checkpoint,
    make_teacher_checkpoint,
)

SIZE = (48, 64)


@pytest.fixture(scope="module", params=["light", "image"])
def exported(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(f"export_{request.param}")
    ckpt = make_student_checkpoint(root / "student.pt", request.param, image_size=SIZE, seed=3)
    return ckpt, export_student(ckpt, root / "deploy", batch=3)


def test_onnx_and_torchscript_match_eager_pytorch(exported):
    _, result = exported
    parity = result["parity"]
    assert parity["onnx_max_abs_diff"] < 1e-4 * max(1.0, parity["descriptor_abs_max"])
    assert parity["torchscript_max_abs_diff"] < 1e-5 * max(1.0, parity["descriptor_abs_max"])
    assert parity["descriptor_abs_max"] > 0


def test_onnx_metadata_and_dynamic_batch(exported):
    import torch

    from crossmodal.training.checkpoint import build_model, load_checkpoint

    ckpt_path, result = exported
    spec, identity = read_onnx_metadata(result["onnx"])
    ckpt = load_checkpoint(ckpt_path)
    assert spec.image_size == SIZE and spec.mode == "RGB"
    assert identity["weights_sha256"] == weights_digest(ckpt["model"])
    assert identity["model_class"] == ckpt["model_class"]
    session = onnx_session(result["onnx"], threads=1)
    model = build_model(ckpt).eval()
    for batch in (1, 5):  # exported at batch 2: the batch axis is dynamic
        x = np.random.default_rng(batch).normal(size=(batch, 3, *SIZE)).astype(np.float32)
        out = session.run(None, {"images": x})[0]
        assert out.shape == (batch, 384)
        with torch.no_grad():
            ref = model(torch.from_numpy(x))["descriptor"].numpy()
        assert np.abs(out - ref).max() < 1e-4 * max(1.0, np.abs(ref).max())
    assert onnx_parity(model, result["onnx"], batch=2) < 1e-4 * max(1.0, result["parity"]["descriptor_abs_max"])
    extra = {"crossmodal.input": ""}
    with pytest.warns(FutureWarning):  # torch 2.15 deprecates TorchScript; the export still loads
        torch.jit.load(result["torchscript"], _extra_files=extra)
    assert json.loads(extra["crossmodal.input"])["image_size"] == list(SIZE)


def test_onnx_localizer_equals_the_pytorch_one(exported):
    ckpt, result = exported
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (*SIZE, 3), dtype=np.uint8) for _ in range(3)]
    a = Localizer.from_checkpoint(ckpt).embed(images)
    b = Localizer.from_onnx(result["onnx"], threads=1).embed(images)
    assert a.shape == b.shape == (3, 384)
    assert np.abs(a - b).max() < 1e-4 * max(1.0, np.abs(a).max())


def test_a_teacher_is_not_exported(tmp_path):
    teacher = make_teacher_checkpoint(tmp_path / "teacher.pt")
    with pytest.raises(NotAStudentError, match="a teacher checkpoint .*FusionTeacher.*image-only student"):
        export_student(teacher, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    with pytest.raises(ValueError, match="not exported by crossmodal"):
        import onnx
        from onnx import TensorProto, helper

        graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                                  [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
        onnx.save(helper.make_model(graph), str(tmp_path / "foreign.onnx"))
        read_onnx_metadata(tmp_path / "foreign.onnx")
