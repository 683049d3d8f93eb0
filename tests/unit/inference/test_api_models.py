"""Model listing, reload, readiness, metrics, API-key scopes and local models over the API."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from services.inference.api.main import create_app
from shared.http.auth import create_key
from shared.storage.filesystem import FileObjectStore
from tests.unit.inference.serving import FakeDetector, encode, publish, settings_for

PICTURE = encode(np.full((48, 64, 3), 90, np.uint8))


@pytest.fixture
def store(tmp_path: Path) -> FileObjectStore:
    return FileObjectStore(tmp_path / "store")


def _fake_app(tmp_path: Path, store: FileObjectStore, **fields: Any) -> Any:
    settings = settings_for(tmp_path, **fields)
    return create_app(settings, store=store, detector_factory=lambda _: FakeDetector())


def _detect(client: TestClient, **kwargs: Any) -> Any:
    headers = {"content-type": "image/png", **kwargs.pop("headers", {})}
    return client.post("/v1/detect", content=PICTURE, headers=headers, **kwargs)


def test_models_lists_the_followed_stage_and_resident_models(
    tmp_path: Path, store: FileObjectStore
) -> None:
    # given
    publish(store, "v1", b"fake", classes=["scratch", "dent", "pit"])
    publish(store, "v2", b"fake-2", stage=None)
    with TestClient(_fake_app(tmp_path, store)) as client:
        _detect(client, params={"version": "v2"})

        # when
        body = client.get("/v1/models").json()

    # then
    assert body["followed"]["name"] == "detector"
    assert body["followed"]["stage"] == "production"
    assert body["followed"]["version"] == "v1"
    assert body["followed"]["error"] is None
    assert [(m["slot"], m["version"], m["follows"]) for m in body["resident"]] == [
        ("default", "v1", "production"),
        ("detector@v2", "v2", None),
    ]
    assert body["resident"][1]["items_run"] == 1
    assert body["max_resident"] == 2


def test_reload_swaps_in_a_newly_promoted_version(tmp_path: Path, store: FileObjectStore) -> None:
    # given v1 serving
    publish(store, "v1", b"fake")
    with TestClient(_fake_app(tmp_path, store)) as client:
        before = _detect(client).json()["model"]["version"]

        # when v2 is promoted and a reload is forced
        publish(store, "v2", b"fake-2")
        listed = client.post("/v1/models/reload").json()
        after = _detect(client).json()["model"]["version"]

    # then
    assert (before, listed["followed"]["version"], after) == ("v1", "v2", "v2")


def test_readiness_waits_for_the_default_model(tmp_path: Path, store: FileObjectStore) -> None:
    with TestClient(_fake_app(tmp_path, store)) as client:
        # given nothing published yet
        waiting = client.get("/readyz")

        # when a version is published and the registry re-read
        publish(store, "v1", b"fake")
        client.post("/v1/models/reload")
        ready = client.get("/readyz")

    # then
    assert waiting.status_code == 503
    assert "no published version" in waiting.json()["missing"]["model"]
    assert ready.status_code == 200


def test_metrics_report_batches_and_queues_per_model_version(
    tmp_path: Path, store: FileObjectStore
) -> None:
    publish(store, "v1", b"fake")
    with TestClient(_fake_app(tmp_path, store)) as client:
        _detect(client)
        _detect(client, params={"version": "nope"})
        text = client.get("/metrics").text

    labels = 'model="detector",version="v1"'
    assert f"agssp_inference_batch_size_count{{{labels}}} 1.0" in text
    ok = 'model="detector",outcome="ok",version="v1"'  # labels print in sorted order
    assert f"agssp_inference_requests_total{{{ok}}} 1.0" in text
    assert 'outcome="model_version_not_found"' in text
    assert f"agssp_inference_request_seconds_count{{{labels}}} 1.0" in text
    assert 'agssp_inference_queue_depth{model="detector",slot="default",version="v1"} 0.0' in text
    assert "agssp_inference_resident_models 1.0" in text


def test_a_camera_key_may_detect_but_not_manage_models(
    tmp_path: Path, store: FileObjectStore
) -> None:
    # given a camera key (inspect) and an admin key
    publish(store, "v1", b"fake")
    camera, camera_entry = create_key("camera-7", ["inspect"])
    admin, admin_entry = create_key("ops", ["admin"])
    app = _fake_app(tmp_path, store, api_keys=[camera_entry, admin_entry])
    as_camera = {"authorization": f"Bearer {camera}"}

    with TestClient(app) as client:
        # when / then
        assert _detect(client, headers=as_camera).status_code == 200
        camera_route = client.post(
            "/detect", content=PICTURE, headers={**as_camera, "content-type": "image/png"}
        )
        assert camera_route.status_code == 200
        assert client.get("/v1/models", headers=as_camera).status_code == 403
        assert client.post("/v1/models/reload", headers=as_camera).status_code == 403
        assert client.get("/v1/jobs", headers=as_camera).status_code == 403
        assert _detect(client).status_code == 401
        assert client.get("/v1/models", headers={"x-api-key": admin}).status_code == 200


def test_a_local_onnx_file_is_served_without_the_registry(
    tmp_path: Path, store: FileObjectStore, yolo_files: Any
) -> None:
    # given no registry model at all
    settings = settings_for(tmp_path, model_name="", local_model_path=str(yolo_files.dynamic_onnx))

    # when
    with TestClient(create_app(settings, store=store)) as client:
        answer = _detect(client)
        (model,) = client.get("/v1/models").json()["resident"]

    # then
    assert answer.status_code == 200
    assert answer.json()["model"]["name"] == "dynamic"
    assert answer.json()["model"]["version"].startswith("local-")
    assert (model["runtime"], model["source"]) == ("onnx", "local")


def test_a_trusted_local_checkpoint_runs_on_torch_only_with_consent(
    tmp_path: Path, store: FileObjectStore, yolo_files: Any
) -> None:
    # given a .pt and INFERENCE_ALLOW_PICKLE=true
    settings = settings_for(
        tmp_path, model_name="", local_model_path=str(yolo_files.pt), allow_pickle=True
    )

    # when
    with TestClient(create_app(settings, store=store)) as client:
        answer = _detect(client)
        (model,) = client.get("/v1/models").json()["resident"]

    # then
    assert answer.status_code == 200
    assert model["runtime"] == "torch"


def test_a_local_checkpoint_without_consent_stops_start_up(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="INFERENCE_ALLOW_PICKLE"):
        settings_for(tmp_path, local_model_path=str(tmp_path / "best.pt"))


def test_without_any_model_configured_the_app_still_starts(
    tmp_path: Path, store: FileObjectStore
) -> None:
    with TestClient(_fake_app(tmp_path, store, model_name="")) as client:
        health = client.get("/healthz")
        ready = client.get("/readyz")
        answer = _detect(client)
    assert health.status_code == 200
    assert ready.status_code == 503
    assert (answer.status_code, answer.json()["code"]) == (503, "model_not_loaded")
