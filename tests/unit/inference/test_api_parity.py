"""Detections served over HTTP equal ultralytics' own ``predict`` on the same weights.

Tolerances (as in test_parity for the detector itself), per image: same count and a one-to-one
match with the same class. Against ultralytics running the same ONNX file: boxes within
1e-3 px, scores within 1e-5. Against the PyTorch checkpoint the ONNX was exported from: boxes
within 0.1 px, scores within 1e-4. Images travel as PNG, so the served pixels are identical.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from services.inference.api.main import create_app
from services.inference.ml.detections import Detections
from shared.storage.filesystem import FileObjectStore
from tests.unit.inference.serving import encode, publish, settings_for

SAME_FILE_TOL = {"box_tol": 1e-3, "score_tol": 1e-5}
TORCH_TOL = {"box_tol": 0.1, "score_tol": 1e-4}
MIN_DETECTIONS = 5  # a parity test over empty answers would prove nothing
MAX_DET = 1000  # the API's cap; above the candidate count so no near-tie sits at the cut


@pytest.fixture(scope="module")
def client(yolo_files: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    tmp = tmp_path_factory.mktemp("parity")
    store = FileObjectStore(tmp / "store")
    publish(store, "v1", yolo_files.dynamic_onnx)
    with TestClient(create_app(settings_for(tmp, intra_op_threads=1), store=store)) as test_client:
        yield test_client


def _served(client: TestClient, image: np.ndarray, **query: Any) -> Detections:
    response = client.post(
        "/v1/detect", params=query, content=encode(image), headers={"content-type": "image/png"}
    )
    assert response.status_code == 200, response.text
    found = response.json()["detections"]
    return Detections(
        np.array([d["box_xyxy"] for d in found], np.float32).reshape(-1, 4),
        np.array([d["score"] for d in found], np.float32),
        np.array([d["class_id"] for d in found], np.int64),
        image.shape[:2],
    )


def _predict(path: Any, image: np.ndarray, imgsz: int, **query: Any) -> Detections:
    from ultralytics.models.yolo.model import YOLO

    result: Any = YOLO(str(path), task="detect").predict(
        np.ascontiguousarray(image[..., ::-1]), imgsz=imgsz, verbose=False, **query
    )
    boxes = result[0].boxes
    return Detections(
        boxes.xyxy.numpy(), boxes.conf.numpy(), boxes.cls.numpy().astype(np.int64), image.shape[:2]
    )


@pytest.mark.parametrize(
    "query", [{"conf": 0.1}, {"conf": 0.02, "iou": 0.5, "max_det": 100}], ids=["default", "tight"]
)
def test_served_detections_equal_ultralytics_on_the_same_onnx_file(
    client: TestClient,
    yolo_files: Any,
    parity_images: list[np.ndarray],
    assert_same_detections: Callable[..., None],
    query: dict[str, Any],
) -> None:
    for image in parity_images:
        # when
        served = _served(client, image, **query)
        reference = _predict(yolo_files.dynamic_onnx, image, yolo_files.imgsz, **query)

        # then
        assert len(reference) >= MIN_DETECTIONS
        assert_same_detections(served, reference, **SAME_FILE_TOL)


def test_served_detections_equal_ultralytics_on_the_pytorch_checkpoint(
    client: TestClient,
    yolo_files: Any,
    parity_images: list[np.ndarray],
    assert_same_detections: Callable[..., None],
) -> None:
    for image in parity_images:
        served = _served(client, image, conf=0.1, max_det=MAX_DET)
        reference = _predict(yolo_files.pt, image, yolo_files.imgsz, conf=0.1, max_det=MAX_DET)
        assert MIN_DETECTIONS <= len(reference) < MAX_DET
        assert_same_detections(served, reference, **TORCH_TOL)
