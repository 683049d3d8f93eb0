"""OnnxDetector against ultralytics' own predict on the same random-init YOLOv8n.

Tolerances (also in OnnxDetector's docstring): same number of detections and a one-to-one
match with the same class. Against ultralytics running the same ONNX file: boxes within
1e-3 px, scores within 1e-5 (observed: bit-identical). Against the PyTorch model: boxes within
0.1 px, scores within 1e-4 (observed: 0.003 px, 1.1e-5; float32 differences between runtimes).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from services.inference.ml.detections import Detections, DetectParams
from services.inference.ml.onnx_detector import OnnxDetector

SAME_FILE_TOL = {"box_tol": 1e-3, "score_tol": 1e-5}
TORCH_TOL = {"box_tol": 0.1, "score_tol": 1e-4}
MIN_DETECTIONS = 5  # a parity test over empty outputs would prove nothing


@functools.cache
def _ultralytics_model(model_path: Path) -> Any:
    from ultralytics.models.yolo.model import YOLO

    return YOLO(str(model_path), task="detect")


def _ultralytics_predict(
    model_path: Path, image: np.ndarray, params: DetectParams, imgsz: int
) -> Detections:
    predictions: Any = _ultralytics_model(model_path).predict(
        np.ascontiguousarray(image[..., ::-1]),  # ultralytics wants BGR numpy input
        conf=params.conf,
        iou=params.iou,
        max_det=params.max_det,
        imgsz=imgsz,
        verbose=False,
    )
    boxes = predictions[0].boxes
    return Detections(
        boxes.xyxy.numpy(), boxes.conf.numpy(), boxes.cls.numpy().astype(np.int64), image.shape[:2]
    )


@pytest.mark.parametrize(
    "params", [DetectParams(conf=0.1), DetectParams(conf=0.02, iou=0.5, max_det=100)]
)
@pytest.mark.parametrize("export", ["static", "dynamic"])
def test_onnx_detector_matches_ultralytics_onnx_predict(
    yolo_files: Any,
    parity_images: list[np.ndarray],
    assert_same_detections: Callable[..., None],
    export: str,
    params: DetectParams,
) -> None:
    # given
    path = yolo_files.static_onnx if export == "static" else yolo_files.dynamic_onnx
    detector = OnnxDetector(path, imgsz=yolo_files.imgsz, intra_op_threads=1)

    # when
    ours = detector.detect(parity_images, params)

    # then
    for image, got in zip(parity_images, ours, strict=True):
        ref = _ultralytics_predict(path, image, params, yolo_files.imgsz)
        assert len(ref) >= MIN_DETECTIONS
        assert_same_detections(got, ref, **SAME_FILE_TOL)


def test_onnx_detector_matches_pytorch_model_predict(
    yolo_files: Any, parity_images: list[np.ndarray], assert_same_detections: Callable[..., None]
) -> None:
    # given: max_det above the candidate count, so near-ties at the cut cannot differ
    params = DetectParams(conf=0.1, max_det=3000)
    detector = OnnxDetector(yolo_files.dynamic_onnx, imgsz=yolo_files.imgsz, intra_op_threads=1)

    # when
    ours = detector.detect(parity_images, params)

    # then
    for image, got in zip(parity_images, ours, strict=True):
        ref = _ultralytics_predict(yolo_files.pt, image, params, yolo_files.imgsz)
        assert len(ref) >= MIN_DETECTIONS
        assert_same_detections(got, ref, **TORCH_TOL)
