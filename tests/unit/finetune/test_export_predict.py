"""Dataset prediction in our format, and ONNX export that matches torch on ONNX Runtime."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest

from services.finetune.ml.yolov8.detector import Detector, build_detector
from services.finetune.ml.yolov8.export import check_onnx_matches, export_onnx
from services.finetune.ml.yolov8.predict import evaluate_detector, predict_dataset


@pytest.fixture(scope="module")
def detector() -> Detector:
    return build_detector("n", 2, class_names=("a", "b"), seed=0)


@pytest.fixture(scope="module")
def onnx_file(detector: Detector, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_onnx(detector, tmp_path_factory.mktemp("onnx") / "det.onnx", imgsz=64)


def test_export_has_fixed_opset_and_dynamic_batch(onnx_file: Path) -> None:
    # when
    model = onnx.load(str(onnx_file))
    # then
    assert [o.version for o in model.opset_import if o.domain in {"", "ai.onnx"}] == [17]
    batch_dim = model.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch_dim.dim_param == "batch"
    assert model.graph.output[0].name == "output0"


def test_onnx_runtime_matches_torch_on_a_batch(detector: Detector, onnx_file: Path) -> None:
    # given three images of different sizes in one batch
    rng = np.random.default_rng(0)
    sizes = ((64, 64), (40, 64), (64, 30))
    images = [rng.integers(0, 255, (h, w, 3), dtype=np.uint8) for h, w in sizes]
    # when
    check = check_onnx_matches(detector, onnx_file, images, imgsz=64)
    # then
    assert check.matches, check.max_abs_diff
    assert check.max_abs_diff < 1e-2


def test_predict_dataset_returns_boxes_in_image_pixels(
    detector: Detector, make_dataset: Any
) -> None:
    # given
    dataset, images = make_dataset(n=3, classes=("a", "b"), size=64)
    # when
    predictions = predict_dataset(detector, dataset, images, conf=0.0, imgsz=64, batch=2)
    # then
    assert set(predictions) == {im.file_name for im in dataset.images}
    boxes = [b for bs in predictions.values() for b in bs]
    assert boxes
    assert all(0 <= b.x1 < b.x2 <= 64 and 0 <= b.y1 < b.y2 <= 64 for b in boxes)
    assert all(b.class_id in (0, 1) and 0.0 <= b.score <= 1.0 for b in boxes)
    result = evaluate_detector(detector, dataset, images, imgsz=64)
    assert set(result.per_class) == {"a", "b"}
    assert 0.0 <= result.map50 <= 1.0


def test_onnx_check_fails_for_other_weights(onnx_file: Path) -> None:
    # given a detector whose class logits differ from the exported one's (two random
    # inits alone give nearly equal outputs: the head's bias prior dominates them)
    other = build_detector("n", 2, seed=0)
    head_bias = other.model.state_dict()["model.22.cv3.0.2.bias"]
    head_bias += 3.0
    images = [np.full((64, 64, 3), 127, np.uint8)]
    # when
    check = check_onnx_matches(other, onnx_file, images, imgsz=64)
    # then
    assert not check.matches
    assert check.max_abs_diff > 1e-3
