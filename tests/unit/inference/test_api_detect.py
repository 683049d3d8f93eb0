"""POST /v1/detect and /detect through TestClient on a published random-init YOLOv8n ONNX."""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from services.inference.api.main import create_app
from shared.storage.filesystem import FileObjectStore
from tests.unit.inference.serving import GUARD_S, FakeDetector, encode, publish, settings_for

CLASSES = [f"defect{i}" for i in range(80)]
LOOSE = {"conf": "0.1"}  # this random model scores most boxes between 0.15 and 0.8


@pytest.fixture(scope="module")
def client(yolo_files: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    tmp = tmp_path_factory.mktemp("api")
    store = FileObjectStore(tmp / "store")
    publish(store, "v1", yolo_files.dynamic_onnx, classes=CLASSES)
    with TestClient(create_app(settings_for(tmp), store=store)) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def picture(parity_images: list[np.ndarray]) -> bytes:
    return encode(parity_images[1])  # 640x480, many detections


def _post(client: TestClient, body: bytes, path: str = "/v1/detect", **query: str) -> Any:
    return client.post(path, params=query, content=body, headers={"content-type": "image/png"})


def test_detect_hops_to_no_thread_pool_for_its_dependencies(
    client: TestClient, picture: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given a record of every call FastAPI sends to starlette's thread pool (plain ``def``
    # dependencies and endpoints go there: a thread hop each, per request)
    import fastapi.dependencies.utils
    import fastapi.routing

    hops: list[str] = []
    for module in (fastapi.dependencies.utils, fastapi.routing):
        original = module.run_in_threadpool

        async def recording(func: Any, *args: Any, _run: Any = original, **kwargs: Any) -> Any:
            hops.append(getattr(func, "__name__", repr(func)))
            return await _run(func, *args, **kwargs)

        monkeypatch.setattr(module, "run_in_threadpool", recording)

    # when
    response = _post(client, picture, **LOOSE)

    # then the request was answered on the event loop (decoding has its own thread)
    assert response.status_code == 200
    assert hops == []


def test_detect_answers_boxes_in_pixels_and_normalised(client: TestClient, picture: bytes) -> None:
    # when
    response = _post(client, picture, **LOOSE)

    # then
    assert response.status_code == 200
    body = response.json()
    assert body["image"] == {"width": 640, "height": 480}
    assert body["model"] == {"name": "detector", "version": "v1"}
    assert set(body["timings"]) == {"decode_ms", "queue_wait_ms", "inference_ms", "total_ms"}
    assert len(body["detections"]) > 5
    for det in body["detections"]:
        x1, y1, x2, y2 = det["box_xyxy"]
        assert 0 <= x1 <= x2 <= 640
        assert 0 <= y1 <= y2 <= 480
        assert det["box_norm"] == pytest.approx([x1 / 640, y1 / 480, x2 / 640, y2 / 480])
        assert det["class_name"] == CLASSES[det["class_id"]]


def test_the_camera_route_multipart_and_raw_bodies_agree(
    client: TestClient, picture: bytes
) -> None:
    raw = _post(client, picture, **LOOSE).json()["detections"]
    camera = _post(client, picture, "/detect", **LOOSE).json()["detections"]
    form = client.post(
        "/v1/detect", data=LOOSE, files={"image": ("frame.png", picture, "image/png")}
    ).json()["detections"]
    assert raw == camera == form


def test_the_confidence_threshold_is_honoured(client: TestClient, picture: bytes) -> None:
    loose = _post(client, picture, conf="0.1").json()["detections"]
    strict = _post(client, picture, conf="0.5").json()["detections"]
    assert all(d["score"] > 0.5 for d in strict)
    assert len(strict) < len(loose)


def test_a_lower_iou_threshold_suppresses_more_boxes(client: TestClient, picture: bytes) -> None:
    # (IoU is checked in the network's letterboxed frame, before boxes are clipped to the
    # image, as ultralytics does: test_api_parity covers exact agreement.)
    tight = _post(client, picture, conf="0.1", iou="0.2").json()["detections"]
    loose = _post(client, picture, conf="0.1", iou="0.9").json()["detections"]
    assert 0 < len(tight) < len(loose)


def test_max_det_caps_the_answer(client: TestClient, picture: bytes) -> None:
    found = _post(client, picture, conf="0.1", max_det="2").json()["detections"]
    assert len(found) == 2


def test_the_class_filter_takes_names_and_ids(client: TestClient, picture: bytes) -> None:
    # given the two most frequent classes of the unfiltered answer
    everything = _post(client, picture, **LOOSE).json()["detections"]
    ids = sorted({d["class_id"] for d in everything})[:2]

    # when filtering by one name and one id
    wanted = f"{CLASSES[ids[0]]},{ids[1]}"
    found = _post(client, picture, conf="0.1", classes=wanted).json()["detections"]

    # then only those classes come back, all of them
    assert {d["class_id"] for d in found} == set(ids)
    assert len(found) == sum(d["class_id"] in ids for d in everything)


@pytest.mark.parametrize(
    "how", [{"query": {"annotated": "true"}}, {"headers": {"accept": "image/png"}}]
)
def test_an_annotated_png_is_returned_on_request(
    client: TestClient, picture: bytes, how: dict[str, Any]
) -> None:
    # when
    response = client.post(
        "/v1/detect",
        params={**LOOSE, **how.get("query", {})},
        content=picture,
        headers={"content-type": "image/png", **how.get("headers", {})},
    )

    # then
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/png"
    assert response.headers["x-model-version"] == "v1"
    assert int(response.headers["x-detections"]) > 0
    assert Image.open(io.BytesIO(response.content)).size == (640, 480)


@pytest.mark.parametrize(
    ("body", "content_type", "status", "code"),
    [
        (b"\x89PNG\r\n\x1a\nbroken", "image/png", 422, "corrupt_image"),
        (b"", "image/png", 422, "empty_image"),
        (
            encode(np.zeros((8, 8, 3), np.uint8), "WEBP"),
            "image/webp",
            415,
            "unsupported_image_format",
        ),
        (b"hello", "text/plain", 415, "unsupported_media_type"),
    ],
)
def test_bad_images_get_a_clear_4xx_and_the_service_keeps_serving(
    client: TestClient, picture: bytes, body: bytes, content_type: str, status: int, code: str
) -> None:
    # when
    bad = client.post("/v1/detect", content=body, headers={"content-type": content_type})

    # then
    assert (bad.status_code, bad.json()["code"]) == (status, code)
    assert _post(client, picture).status_code == 200


def test_a_form_without_an_image_field_is_refused(client: TestClient) -> None:
    response = client.post("/v1/detect", files={"picture": ("a.png", b"x", "image/png")})
    assert (response.status_code, response.json()["code"]) == (422, "image_missing")


@pytest.mark.parametrize(
    ("query", "status", "code"),
    [
        ({"version": "v404"}, 404, "model_version_not_found"),
        ({"model": "nobody"}, 404, "model_not_found"),
        ({"stage": "staging"}, 404, "model_stage_not_found"),
        ({"version": "v1", "stage": "production"}, 422, "validation_error"),
        ({"conf": "1.5"}, 422, "validation_error"),
        ({"max_det": "0"}, 422, "validation_error"),
        ({"confidence": "0.3"}, 422, "validation_error"),
        ({"classes": "rust"}, 422, "unknown_class"),
    ],
)
def test_bad_options_and_unknown_models_are_refused(
    client: TestClient, picture: bytes, query: dict[str, str], status: int, code: str
) -> None:
    response = _post(client, picture, **query)
    assert (response.status_code, response.json()["code"]) == (status, code)


def test_an_image_over_the_byte_cap_is_too_large(tmp_path: Path, picture: bytes) -> None:
    # given a 1 KiB cap
    store = FileObjectStore(tmp_path / "store")
    publish(store, "v1", b"fake")
    settings = settings_for(tmp_path, max_image_mb=1 / 1024)
    app = create_app(settings, store=store, detector_factory=lambda _: FakeDetector())

    # when
    with TestClient(app) as client:
        response = _post(client, picture)

    # then
    assert (response.status_code, response.json()["code"]) == (413, "payload_too_large")


def test_before_a_model_is_loaded_detect_is_unavailable(tmp_path: Path, picture: bytes) -> None:
    # given a followed model that has no version yet
    store = FileObjectStore(tmp_path / "store")
    with TestClient(create_app(settings_for(tmp_path), store=store)) as client:
        # when
        response = _post(client, picture)

    # then
    assert response.status_code == 503
    assert response.json()["code"] == "model_not_loaded"
    assert "Retry-After" in response.headers


def test_a_full_queue_answers_429_with_retry_after(tmp_path: Path, picture: bytes) -> None:
    # given a model held shut, one request in its batch call and one queued (the queue's size)
    store = FileObjectStore(tmp_path / "store")
    publish(store, "v1", b"fake")
    gate = threading.Event()
    settings = settings_for(tmp_path, max_batch_size=1, max_queue_delay_ms=0, max_queue=1)
    app = create_app(settings, store=store, detector_factory=lambda _: FakeDetector(gate=gate))
    with TestClient(app) as client:
        answers: list[int] = []
        senders = [
            threading.Thread(target=lambda: answers.append(_post(client, picture).status_code))
            for _ in range(2)
        ]
        senders[0].start()
        _wait_for_queue(client, in_flight=1, queued=0)
        senders[1].start()
        _wait_for_queue(client, in_flight=1, queued=1)

        # when one more arrives
        refused = _post(client, picture)
        gate.set()
        for sender in senders:
            sender.join(GUARD_S)

    # then it is refused with a hint, and the accepted ones are answered
    assert (refused.status_code, refused.json()["code"]) == (429, "overloaded")
    assert int(refused.headers["Retry-After"]) >= 1
    assert answers == [200, 200]


def _wait_for_queue(client: TestClient, *, in_flight: int, queued: int) -> None:
    for _ in range(int(GUARD_S / 0.02)):
        (model,) = client.get("/v1/models").json()["resident"]
        if (model["in_flight"], model["queue_depth"]) == (in_flight, queued):
            return
        threading.Event().wait(0.02)
    raise AssertionError("the queue never filled")
