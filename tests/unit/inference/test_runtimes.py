"""Runtimes of /detect: OpenVINO agrees with ONNX Runtime; CUDA FP16 is chosen by setting."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

from services.inference.ml import onnx_detector
from services.inference.ml.letterbox import letterbox, letterbox_geometry, to_input_tensor
from services.inference.ml.onnx_detector import OnnxDetector
from shared.errors import InvalidInputError, UnavailableError

pytest.importorskip("openvino", reason="the openvino extra is not installed")


def _batch(images: list[np.ndarray], size: int) -> np.ndarray:
    geoms = [letterbox_geometry(im.shape[:2], (size, size)) for im in images]
    return to_input_tensor([letterbox(im, g) for im, g in zip(images, geoms, strict=True)])


@pytest.mark.parametrize("hint", ["latency", "throughput"])
def test_openvino_outputs_match_onnx_runtime_on_fixed_inputs(
    yolo_files: Any, parity_images: list[np.ndarray], hint: str
) -> None:
    # given one export opened by both runtimes and a batch of three fixed images
    reference = OnnxDetector(yolo_files.dynamic_onnx, intra_op_threads=1, imgsz=yolo_files.imgsz)
    ov = OnnxDetector(
        yolo_files.dynamic_onnx,
        imgsz=yolo_files.imgsz,
        backend="openvino",
        openvino_hint=hint,  # type: ignore[arg-type]
    )
    batch = _batch(parity_images[:3], yolo_files.imgsz)
    # when
    ours, theirs = ov.forward(batch), reference.forward(batch)
    # then: box rows within 0.05 px, class scores within 1e-3 (FP32 on other kernels)
    assert ours.shape == theirs.shape
    np.testing.assert_allclose(ours[:, :4], theirs[:, :4], atol=0.05)
    np.testing.assert_allclose(ours[:, 4:], theirs[:, 4:], atol=1e-3)
    assert ov.providers == ["OpenVINO:CPU"]
    assert ov.names == reference.names  # class names come from the same ONNX metadata


def test_openvino_refuses_cuda_and_fp16(yolo_files: Any) -> None:
    with pytest.raises(InvalidInputError, match="OpenVINO backend runs FP32 on the CPU"):
        OnnxDetector(yolo_files.dynamic_onnx, backend="openvino", precision="fp16")


@pytest.mark.parametrize(
    ("available", "first"),
    [
        (
            ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
            "Tensorrt",
        ),
        (["CUDAExecutionProvider", "CPUExecutionProvider"], "CUDA"),
    ],
)
def test_fp16_picks_tensorrt_where_installed_else_cuda(
    monkeypatch: pytest.MonkeyPatch, available: list[str], first: str
) -> None:
    monkeypatch.setattr(ort, "get_available_providers", lambda: available)
    providers = onnx_detector._providers("auto", "fp16")
    name, options = providers[0]
    assert name.startswith(first)
    assert options["device_id"] == 0
    assert options.get("trt_fp16_enable") is (True if first == "Tensorrt" else None)
    assert providers[-1] == "CPUExecutionProvider"
    # FP32 never takes TensorRT's FP16 path
    assert onnx_detector._providers("cuda:1", "fp32")[0] == (
        "CUDAExecutionProvider",
        {"device_id": 1},
    )


def test_fp16_on_a_cpu_host_is_refused_with_the_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    with pytest.raises(UnavailableError, match="fp16 needs CUDA"):
        onnx_detector._providers("auto", "fp16")
    assert onnx_detector._providers("auto", "fp32") == ["CPUExecutionProvider"]


def test_the_fp16_graph_keeps_fp32_inputs_and_outputs(yolo_files: Any) -> None:
    import onnx

    model = onnx.load_from_string(onnx_detector._fp16_graph(yolo_files.dynamic_onnx))
    f32, f16 = onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16
    assert model.graph.input[0].type.tensor_type.elem_type == f32
    assert model.graph.output[0].type.tensor_type.elem_type == f32
    assert {i.data_type for i in model.graph.initializer if i.data_type in (f32, f16)} == {f16}
