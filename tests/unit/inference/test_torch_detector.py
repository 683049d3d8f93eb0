"""TorchDetector: the pickle gate, parity with OnnxDetector, the one-thread rule."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from services.inference.ml.detections import DetectParams
from services.inference.ml.onnx_detector import OnnxDetector
from services.inference.ml.torch_detector import TorchDetector
from shared.errors import InvalidInputError

PARAMS = DetectParams(conf=0.1, max_det=3000)


def test_loading_a_pickle_needs_an_explicit_flag(yolo_files: Any) -> None:
    with pytest.raises(InvalidInputError, match="allow_pickle"):
        TorchDetector(yolo_files.pt)


def test_a_missing_checkpoint_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="does not exist"):
        TorchDetector(tmp_path / "nope.pt", allow_pickle=True)


def test_torch_and_onnx_detectors_agree(
    yolo_files: Any, parity_images: list[np.ndarray], assert_same_detections: Callable[..., None]
) -> None:
    # given the checkpoint and its dynamic ONNX export, same input size
    torch_det = TorchDetector(
        yolo_files.pt, allow_pickle=True, device="cpu", imgsz=yolo_files.imgsz
    )
    onnx_det = OnnxDetector(yolo_files.dynamic_onnx, intra_op_threads=1)
    images = parity_images[1:3]

    # when
    from_torch = torch_det.detect(images, PARAMS)
    from_onnx = onnx_det.detect(images, PARAMS)

    # then: the PyTorch parity tolerance of test_parity.py
    assert torch_det.names == onnx_det.names
    for a, b in zip(from_torch, from_onnx, strict=True):
        assert len(a) > 0
        assert_same_detections(b, a, box_tol=0.1, score_tol=1e-4)


def test_a_second_thread_is_refused(yolo_files: Any, parity_images: list[np.ndarray]) -> None:
    # given a detector already used on this thread
    det = TorchDetector(yolo_files.pt, allow_pickle=True, device="cpu", imgsz=yolo_files.imgsz)
    det.detect(parity_images[:1], PARAMS)
    errors: list[BaseException] = []

    # when another thread calls it
    def call() -> None:
        try:
            det.detect(parity_images[:1], PARAMS)
        except RuntimeError as exc:
            errors.append(exc)

    worker = threading.Thread(target=call)
    worker.start()
    worker.join()

    # then
    assert len(errors) == 1
    assert "one instance per thread" in str(errors[0])
