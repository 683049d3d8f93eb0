"""INT8 post-training quantisation (finetune's job core) against FP32 on fixed inputs.

Stated tolerance, on a seeded random YOLOv8n (the conftest's detecting model, 320 px) and
fixed images; a trained model quantises more gently than these random weights:
* class scores: median |INT8 - FP32| <= 0.005, 99th percentile <= 0.2;
* on anchors FP32 is confident about (best score > 0.5): median best-score error <= 0.2;
* box coordinates: median |error| <= 1 % of the input side.
Quantising the Detect head's post-processing too (one uint8 scale over pixel boxes and 0-1
scores) breaks the score bounds, which is why it stays FP32.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from services.finetune.ml import quantize
from services.finetune.ml.quantize import quantize_int8
from services.inference.ml.letterbox import to_input_tensor
from services.inference.ml.onnx_detector import OnnxDetector
from shared.errors import InvalidInputError
from tests.unit.inference.conftest import blocky_image


def _batches(seed: int, n: int, size: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [to_input_tensor([blocky_image(rng, size, size)]) for _ in range(n)]


def _errors(fp32: Path, int8: Path, size: int) -> dict[str, float]:
    reference = OnnxDetector(fp32, intra_op_threads=1, imgsz=size)
    quantized = OnnxDetector(int8, intra_op_threads=1, imgsz=size)
    x = np.concatenate(_batches(seed=99, n=4, size=size))
    a, b = reference.forward(x), quantized.forward(x)
    score_err = np.abs(a[:, 4:] - b[:, 4:])
    confident = a[:, 4:].max(axis=1) > 0.5
    best_err = np.abs(a[:, 4:].max(axis=1) - b[:, 4:].max(axis=1))[confident]
    assert quantized.names == reference.names  # ultralytics' metadata survived
    return {
        "score_p50": float(np.median(score_err)),
        "score_p99": float(np.percentile(score_err, 99)),
        "confident_p50": float(np.median(best_err)),
        "box_p50": float(np.median(np.abs(a[:, :4] - b[:, :4]))) / size,
    }


@pytest.fixture(scope="module")
def int8_model(yolo_files: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    calibration = _batches(seed=5, n=16, size=yolo_files.imgsz)
    out = tmp_path_factory.mktemp("int8") / "model.onnx"
    return quantize_int8(yolo_files.dynamic_onnx, out, calibration)


def test_int8_outputs_stay_within_the_stated_tolerance_of_fp32(
    yolo_files: Any, int8_model: Path
) -> None:
    errors = _errors(yolo_files.dynamic_onnx, int8_model, yolo_files.imgsz)
    assert errors["score_p50"] <= 0.005, errors
    assert errors["score_p99"] <= 0.2, errors
    assert errors["confident_p50"] <= 0.2, errors
    assert errors["box_p50"] <= 0.01, errors
    assert int8_model.stat().st_size < 0.4 * yolo_files.dynamic_onnx.stat().st_size


def test_quantising_the_head_post_processing_too_breaks_the_score_tolerance(
    yolo_files: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(quantize, "head_nodes_to_keep_fp32", lambda model: [])
    calibration = _batches(seed=5, n=16, size=yolo_files.imgsz)
    naive = quantize_int8(yolo_files.dynamic_onnx, tmp_path / "naive.onnx", calibration)
    errors = _errors(yolo_files.dynamic_onnx, naive, yolo_files.imgsz)
    assert errors["score_p50"] > 0.005 or errors["confident_p50"] > 0.2, errors


def test_quantisation_needs_calibration_images(yolo_files: Any, tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="calibration"):
        quantize_int8(yolo_files.dynamic_onnx, tmp_path / "x.onnx", [])
