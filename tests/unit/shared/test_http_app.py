"""The common app: probes, API-key scopes on the raw path, error mapping, request ids."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from shared.config import AuthSettings, CommonSettings, PathSettings, StorageSettings
from shared.errors import NotFoundError, UnavailableError
from shared.http.app import create_service_app
from shared.http.auth import create_key, hash_key
from shared.http.infra import attach_infrastructure
from shared.http.jobs import jobs_router
from shared.http.scopes import require_scope
from shared.http.state import http_state


def _settings(tmp_path: Path, keys: list[str]) -> CommonSettings:
    return CommonSettings(
        paths=PathSettings(home=tmp_path),
        auth=AuthSettings(api_keys=keys),
        storage=StorageSettings(backend="file"),
    )


def _app(settings: CommonSettings) -> FastAPI:
    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> Iterator[None]:  # type: ignore[misc]
        attach_infrastructure(app, settings)
        yield

    app = create_service_app(
        service="demo",
        settings=settings,
        lifespan=lifespan,
    )
    app.include_router(jobs_router())

    @app.post("/detect", dependencies=[require_scope("inspect")])
    def detect() -> dict[str, str]:
        return {"ok": "yes"}

    @app.get("/v1/things/{name}", dependencies=[require_scope("inspect")])
    def thing(name: str) -> dict[str, str]:
        raise NotFoundError(f"thing {name!r} not found", code="thing_not_found")

    @app.get("/v1/down", dependencies=[require_scope("inspect")])
    def down() -> dict[str, str]:
        raise UnavailableError("storage is down", retry_after_s=7)

    return app


@pytest.fixture
def keys() -> dict[str, str]:
    camera, camera_entry = create_key("camera", ["inspect"])
    trainer, trainer_entry = create_key("ml", ["train"])
    return {"camera": camera, "trainer": trainer, "entries": f"{camera_entry}\n{trainer_entry}"}


@pytest.fixture
def client(tmp_path: Path, keys: dict[str, str]) -> Iterator[TestClient]:
    settings = _settings(tmp_path, keys["entries"].split("\n"))
    with TestClient(_app(settings)) as test_client:
        yield test_client


def test_health_readiness_and_metrics_stay_open(client: TestClient) -> None:
    assert client.get("/healthz").status_code == 200
    ready = client.get("/readyz")
    assert ready.status_code == 200, ready.json()
    assert ready.json()["ready"] is True
    assert "agssp_http_requests_total" in client.get("/metrics").text


def test_camera_key_can_detect_but_not_list_jobs(client: TestClient, keys: dict[str, str]) -> None:
    headers = {"X-API-Key": keys["camera"]}
    assert client.post("/detect", headers=headers).status_code == 200
    denied = client.get("/v1/jobs", headers=headers)
    assert denied.status_code == 403
    assert denied.json()["code"] == "forbidden"


def test_train_key_lists_jobs_with_bearer_header(client: TestClient, keys: dict[str, str]) -> None:
    response = client.get("/v1/jobs", headers={"Authorization": f"Bearer {keys['trainer']}"})
    assert response.status_code == 200  # the shared jobs router declares train


def test_missing_or_unknown_key_is_401(client: TestClient) -> None:
    missing = client.post("/detect")
    assert missing.status_code == 401
    assert missing.headers["www-authenticate"] == "Bearer"
    assert set(missing.json()) == {"detail", "code", "request_id"}
    assert client.post("/detect", headers={"X-API-Key": "nope"}).json()["code"] == "unauthorized"


def test_domain_errors_map_to_status_code_and_request_id(tmp_path: Path) -> None:
    with TestClient(_app(_settings(tmp_path, []))) as client:
        missing = client.get("/v1/things/x", headers={"X-Request-ID": "req-123"})
        down = client.get("/v1/down")
    assert missing.status_code == 404
    assert missing.json() == {
        "detail": "thing 'x' not found",
        "code": "thing_not_found",
        "request_id": "req-123",
    }
    assert missing.headers["x-request-id"] == "req-123"
    assert down.status_code == 503
    assert down.headers["retry-after"] == "7"


def test_unknown_job_is_404_with_code(tmp_path: Path) -> None:
    with TestClient(_app(_settings(tmp_path, []))) as client:
        response = client.get("/v1/jobs/20260101T000000-deadbeef")
    assert response.status_code == 404
    assert response.json()["code"] == "job_not_found"


def test_readyz_names_a_missing_dependency(tmp_path: Path) -> None:
    app = _app(_settings(tmp_path, []))
    with TestClient(app) as client:
        http_state(app).not_ready["weights"] = "ViT-B-16-plus-240 missing in /models"
        response = client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["missing"] == {"weights": "ViT-B-16-plus-240 missing in /models"}


def test_keys_are_stored_hashed() -> None:
    key, entry = create_key("cam", ["inspect"])
    name, digest, scopes = entry.split(":")
    assert key not in entry
    assert digest == hash_key(key)
    assert (name, scopes) == ("cam", "inspect")
