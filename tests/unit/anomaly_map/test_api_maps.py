"""``POST /v1/anomaly-maps`` through TestClient: representations, errors, readiness."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from services.anomaly_map.api.main import create_app
from shared.config import CommonSettings, HttpSettings, PathSettings
from shared.storage.filesystem import FileObjectStore
from tests.unit.anomaly_map.test_service_support import image_bytes, make_engine, make_settings

SPEC = {"map": "metal surface", "good": ["{} without holes"], "defect": ["{} with a crack"]}


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    common = CommonSettings(
        paths=PathSettings(home=tmp_path / "home"), http=HttpSettings(max_body_mb=1.0)
    )
    settings = make_settings(tmp_path, common=common, max_image_mb=0.5)
    app = create_app(settings, store=FileObjectStore(tmp_path / "store"), load_engine=make_engine)
    with TestClient(app) as test_client:
        files = [("references", ("a.png", image_bytes(seed=1), "image/png"))]
        test_client.put("/v1/categories/tile", data={"spec": json.dumps(SPEC)}, files=files)
        yield test_client


def _multipart(client: TestClient, image: bytes, accept: str = "application/json", **fields: str):
    return client.post(
        "/v1/anomaly-maps",
        files={"image": ("x.png", image, "image/png")},
        data={"category": "tile", **fields},
        headers={"accept": accept},
    )


def test_json_map_is_base64_float32_of_the_grid(client: TestClient) -> None:
    # when
    response = _multipart(client, image_bytes(seed=3))
    # then
    assert response.status_code == 200
    body = response.json()
    values = np.frombuffer(base64.b64decode(body["map"]["data"]), dtype="<f4")
    assert body["map_shape"] == [5, 5]
    assert values.reshape(body["map"]["shape"]).shape == (5, 5)
    assert body["mode"] == "kead"
    assert body["image_score"] == pytest.approx(float(response.headers["x-image-score"]), abs=1e-5)


def test_list_encoding_gives_nested_lists(client: TestClient) -> None:
    # when
    body = _multipart(client, image_bytes(seed=3), map_encoding="list").json()
    # then
    assert len(body["map"]["data"]) == 5
    assert len(body["map"]["data"][0]) == 5


def test_raw_body_with_query_parameters(client: TestClient) -> None:
    # when
    response = client.post(
        "/v1/anomaly-maps",
        params={"category": "tile", "resolution": "image", "overlay": "true"},
        content=image_bytes(30, 40, seed=3),
        headers={"content-type": "image/png"},
    )
    # then
    body = response.json()
    assert response.status_code == 200
    assert body["map_shape"] == [30, 40]
    assert base64.b64decode(body["overlay_png_base64"]).startswith(b"\x89PNG")


def test_npy_accept_returns_the_map_file_with_the_score_header(client: TestClient) -> None:
    # when
    response = _multipart(client, image_bytes(seed=3), accept="application/x-npy")
    # then
    assert response.headers["content-type"] == "application/x-npy"
    array = np.load(io.BytesIO(response.content), allow_pickle=False)
    assert array.shape == (5, 5)
    assert array.dtype == np.float32
    assert float(response.headers["x-image-score"]) >= 0


def test_octet_stream_accept_returns_npy_bytes(client: TestClient) -> None:
    # when
    response = _multipart(client, image_bytes(seed=3), accept="application/octet-stream")
    # then
    assert response.headers["content-type"] == "application/octet-stream"
    assert response.content.startswith(b"\x93NUMPY")


def test_png_accept_returns_the_overlay(client: TestClient) -> None:
    # when
    response = _multipart(client, image_bytes(30, 40, seed=3), accept="image/png")
    # then
    assert response.headers["content-type"] == "image/png"
    assert response.content.startswith(b"\x89PNG")


def test_unsupported_accept_is_406(client: TestClient) -> None:
    # when
    response = _multipart(client, image_bytes(), accept="text/html")
    # then
    assert response.status_code == 406
    assert response.json()["code"] == "not_acceptable"


def test_unknown_category_is_404(client: TestClient) -> None:
    # when
    response = _multipart(client, image_bytes(), category="nope")
    # then
    assert response.status_code == 404
    assert response.json()["code"] == "category_not_found"


def test_truncated_image_is_422_and_the_service_keeps_serving(client: TestClient) -> None:
    # when
    bad = _multipart(client, image_bytes()[:80])
    good = _multipart(client, image_bytes(seed=3))
    # then
    assert bad.status_code == 422
    assert bad.json()["code"] == "corrupt_image"
    assert good.status_code == 200


def test_not_an_image_is_415(client: TestClient) -> None:
    # when
    response = _multipart(client, b"hello, I am text")
    # then
    assert response.status_code == 415


def test_image_over_the_byte_cap_is_413(client: TestClient) -> None:
    # when
    response = client.post(
        "/v1/anomaly-maps?category=tile",
        content=b"\x89PNG" + b"\0" * 700_000,
        headers={"content-type": "image/png"},
    )
    # then
    assert response.status_code == 413


def test_body_over_the_http_cap_is_413(client: TestClient) -> None:
    # when
    response = _multipart(client, b"\0" * 1_200_000)
    # then
    assert response.status_code == 413
    assert response.json()["code"] == "payload_too_large"


def test_wrong_content_type_is_415(client: TestClient) -> None:
    # when
    response = client.post(
        "/v1/anomaly-maps?category=tile",
        content=b"{}",
        headers={"content-type": "application/json"},
    )
    # then
    assert response.status_code == 415


def test_bad_parameter_is_422(client: TestClient) -> None:
    # when
    response = _multipart(client, image_bytes(), mode="magic")
    # then
    assert response.status_code == 422
    assert response.json()["code"] == "validation_error"


def test_multipart_without_image_is_422(client: TestClient) -> None:
    # when
    response = client.post(
        "/v1/anomaly-maps", data={"category": "tile"}, files={"other": ("x", b"1", "text/plain")}
    )
    # then
    assert response.status_code == 422
    assert response.json()["code"] == "image_missing"


def test_tiled_request_reports_its_tiles(client: TestClient) -> None:
    # when
    body = _multipart(client, image_bytes(40, 160, seed=3), tile="40").json()
    # then
    assert body["tiles"] >= 4
    assert body["map_shape"] == [5, 20]
    assert body["zero_shot_score"] is None


def test_missing_weights_leave_the_app_ready_for_tocoad_only(tmp_path: Path) -> None:
    # given
    settings = make_settings(tmp_path, allow_random_weights=False)
    app = create_app(settings, store=FileObjectStore(tmp_path / "store"))
    with TestClient(app) as client:
        client.put("/v1/categories/tile", json=SPEC)
        # when
        ready = client.get("/readyz")
        mapped = _multipart(client, image_bytes())
        health = client.get("/healthz")
    # then the service is ready, and says per method what can serve
    methods = ready.json()["details"]["methods"]
    assert ready.status_code == 200
    assert methods["tocoad"]["ready"] is True
    assert methods["kead"]["ready"] is False
    assert "tiny-vit" in methods["kead"]["reason"]
    assert str(tmp_path / "home" / "models" / "open_clip" / "tiny-vit") in methods["kead"]["reason"]
    assert mapped.status_code == 503
    assert mapped.json()["code"] == "model_weights_missing"
    assert health.status_code == 200


def test_ready_when_the_model_is_loaded(client: TestClient) -> None:
    # when
    response = client.get("/readyz")
    # then
    assert response.json()["missing"] == {}
    assert response.json()["details"]["methods"]["kead"]["ready"] is True
