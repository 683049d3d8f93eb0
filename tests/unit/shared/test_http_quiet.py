"""Quiet errors and HTTP hygiene (issue 15, finding 6): /readyz without a key, no internal
addresses in 503 bodies, redirects never from Host, HEAD/OPTIONS for scoped keys, CORS from
HTTP_CORS_ORIGINS, cancel limited to the service owning the job."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from shared.config import AuthSettings, CommonSettings, HttpSettings, PathSettings, StorageSettings
from shared.errors import UnavailableError
from shared.http.app import create_service_app
from shared.http.auth import create_key
from shared.http.infra import attach_infrastructure
from shared.http.jobs import jobs_router
from shared.http.quiet import relative_location, scrub
from shared.http.scopes import require_scope
from shared.http.state import http_state

Keys = dict[str, tuple[str, str]]
SECRET = "storage at http://10.1.2.3:9000 bucket 'plant-7' failed: ConnectTimeout(minio:9000)"


@pytest.fixture
def keys() -> dict[str, tuple[str, str]]:
    return {name: create_key(name, [scope]) for name, scope in
            [("camera", "inspect"), ("trainer", "train"), ("boss", "admin")]}  # fmt: skip


def _app(tmp_path: Path, keys: Keys, service: str = "pretrain") -> FastAPI:
    settings = CommonSettings(
        paths=PathSettings(home=tmp_path),
        storage=StorageSettings(backend="file"),
        auth=AuthSettings(api_keys=[entry for _, entry in keys.values()]),
        http=HttpSettings(cors_origins=["https://console.example"]),
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        attach_infrastructure(app, settings)
        yield

    app = create_service_app(
        service=service,
        settings=settings,
        lifespan=lifespan,
    )
    app.include_router(jobs_router())

    @app.get("/v1/things/", dependencies=[require_scope("inspect")])
    def things() -> list[str]:
        return ["a"]

    @app.get("/v1/down", dependencies=[require_scope("admin")])
    def down() -> None:
        raise UnavailableError(SECRET, code="storage_unavailable")

    @app.get("/v1/weird-down", dependencies=[require_scope("admin")])
    def weird() -> None:
        raise UnavailableError(SECRET, code="model_unavailable")

    def broken(app: FastAPI) -> str | None:
        return SECRET

    http_state(app).readiness_checks["storage_probe"] = broken
    return app


@pytest.fixture
def client(tmp_path: Path, keys: Keys) -> Iterator[TestClient]:
    with TestClient(_app(tmp_path, keys)) as test_client:
        yield test_client


def _h(keys: Keys, name: str) -> dict[str, str]:
    return {"X-API-Key": keys[name][0]}


def test_readyz_without_a_key_says_only_ready_or_not(client: TestClient, keys: Keys) -> None:
    quiet = client.get("/readyz")
    assert quiet.status_code == 503
    assert quiet.json()["missing"] == {"storage_probe": "not ready"}
    assert "10.1.2.3" not in quiet.text
    detailed = client.get("/readyz", headers=_h(keys, "camera"))
    assert "10.1.2.3" in detailed.json()["missing"]["storage_probe"]


def test_503_bodies_hold_no_internal_addresses(client: TestClient, keys: Keys) -> None:
    for path in ("/v1/down", "/v1/weird-down"):
        response = client.get(path, headers=_h(keys, "boss"))
        assert response.status_code == 503
        assert response.headers["retry-after"]
        for leak in ("10.1.2.3", "9000", "http://", "minio"):
            assert leak not in response.text, (path, response.text)
    assert client.get("/v1/down", headers=_h(keys, "boss")).json()["detail"] == (
        "the object store is unavailable; retry later"
    )


def test_the_trailing_slash_redirect_never_uses_the_host_header(
    client: TestClient, keys: Keys
) -> None:
    response = client.get(
        "/v1/things?x=1",
        headers={**_h(keys, "camera"), "Host": "evil.example"},
        follow_redirects=False,
    )
    assert response.status_code == 307
    assert response.headers["location"] == "/v1/things/?x=1"


def test_head_and_options_pass_for_a_correctly_scoped_key(client: TestClient, keys: Keys) -> None:
    head = client.head("/v1/things/", headers=_h(keys, "camera"))
    assert head.status_code == 200
    assert head.content == b""
    options = client.options("/v1/things/", headers=_h(keys, "camera"))
    assert options.status_code not in (401, 403)
    assert client.options("/v1/things/").status_code == 401


def test_cors_is_applied_from_the_setting(client: TestClient) -> None:
    preflight = client.options(
        "/v1/things/",
        headers={"Origin": "https://console.example", "Access-Control-Request-Method": "GET"},
    )
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == "https://console.example"
    other = client.options(
        "/v1/things/",
        headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "GET"},
    )
    assert "access-control-allow-origin" not in other.headers


def test_a_train_key_cancels_only_its_own_services_jobs(client: TestClient, keys: Keys) -> None:
    jobs = http_state(client.app).jobs  # type: ignore[arg-type]
    assert jobs is not None
    own = jobs.create(kind="agbp", task_name="pretrain.agbp", queue="pretrain", params={})
    other = jobs.create(kind="finetune", task_name="finetune.train", queue="finetune", params={})
    trainer, boss = _h(keys, "trainer"), _h(keys, "boss")
    assert client.post(f"/v1/jobs/{own.id}/cancel", headers=trainer).status_code == 202
    denied = client.post(f"/v1/jobs/{other.id}/cancel", headers=trainer)
    assert denied.status_code == 403
    assert denied.json()["code"] == "job_of_another_service"
    assert client.post(f"/v1/jobs/{other.id}/cancel", headers=boss).status_code == 202


def test_scrub_and_relative_location() -> None:
    assert "10.0.0.1" not in scrub("at 10.0.0.1:9000 and https://s3.internal/x")
    assert "s3.internal" not in scrub("https://s3.internal/x")
    assert relative_location(b"http://evil.example/a/?b=1") == b"/a/?b=1"
    assert relative_location(b"/a/") == b"/a/"
