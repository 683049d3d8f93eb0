"""Bounded JSON requests (issue 15, findings 2 and 3): size per route, depth and key count
before parsing, short error bodies that never echo the input."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from fastapi import Body, FastAPI, Form
from fastapi.testclient import TestClient
from pydantic import BaseModel, ConfigDict

from shared.config import CommonSettings, HttpSettings, PathSettings, StorageSettings
from shared.http.app import create_service_app
from shared.http.jsonguard import JsonLimits, scan_json


class Config(BaseModel):
    model_config = ConfigDict(extra="forbid")
    epochs: int = 1


def _app(tmp_path: Path, **http: Any) -> FastAPI:
    settings = CommonSettings(
        paths=PathSettings(home=tmp_path),
        storage=StorageSettings(backend="file"),
        http=HttpSettings(**http),
    )
    app = create_service_app(
        service="demo",
        settings=settings,
        lifespan=None,
        json_route_max_bytes={"/v1/big": 8192},
    )

    @app.put("/v1/things")
    def put(body: Any = Body(...)) -> dict[str, int]:
        return {"size": len(json.dumps(body))}

    @app.post("/v1/configs")
    def post(config: Config) -> dict[str, int]:
        return {"epochs": config.epochs}

    @app.post("/v1/big")
    def big(body: Any = Body(...)) -> dict[str, int]:
        return {"size": len(json.dumps(body))}

    @app.post("/v1/form")
    def form(spec: str = Form(...)) -> dict[str, int]:
        return {"keys": len(json.loads(spec))}

    return app


@pytest.fixture
def client(tmp_path: Path) -> TestClient:
    return TestClient(_app(tmp_path, max_json_kb=4, max_json_depth=8, max_json_keys=50))


def _send(client: TestClient, path: str, raw: bytes, method: str = "POST") -> Any:
    return client.request(method, path, content=raw, headers={"content-type": "application/json"})


def test_brackets_1000_deep_answer_422_not_500(client: TestClient) -> None:
    # given the body of finding 2, when it is PUT
    response = _send(client, "/v1/things", b"[" * 1000 + b"]" * 1000, "PUT")
    # then a short 422 names the limit
    assert response.status_code == 422
    assert response.json()["code"] == "json_too_deep"
    assert "8 levels" in response.json()["detail"]


def test_nesting_at_the_limit_passes(client: TestClient) -> None:
    response = _send(client, "/v1/things", b"[" * 8 + b"]" * 8, "PUT")
    assert response.status_code == 200


def test_brackets_inside_strings_do_not_count(client: TestClient) -> None:
    raw = json.dumps({"a": "[[[[[[[[[[[[[[[[[[[[{{{{{{{{{{:::::", "b": '\\"[[[['}).encode()
    assert _send(client, "/v1/things", raw, "PUT").status_code == 200


def test_too_many_keys_answer_422_without_echoing_them(client: TestClient) -> None:
    # given finding 3's shape: an object of unknown keys
    raw = json.dumps({f"secret-key-{i}": i for i in range(51)}).encode()
    response = _send(client, "/v1/configs", raw)
    assert response.status_code == 422
    assert response.json()["code"] == "json_too_many_keys"
    assert b"secret-key" not in response.content
    assert len(response.content) < 300


def test_json_over_the_cap_is_413_naming_the_limit(client: TestClient) -> None:
    raw = json.dumps(["x" * 4100]).encode()
    response = _send(client, "/v1/things", raw, "PUT")
    assert response.status_code == 413
    assert "4096 bytes" in response.json()["detail"]


def test_a_route_with_its_own_cap_uses_it(client: TestClient) -> None:
    raw = json.dumps(["x" * 6000]).encode()
    assert _send(client, "/v1/big", raw).status_code == 200
    assert _send(client, "/v1/things", raw, "PUT").status_code == 413


def test_validation_errors_are_truncated_and_never_echo_input(tmp_path: Path) -> None:
    # given default bounds and a config with many unknown keys
    client = TestClient(_app(tmp_path))
    raw = json.dumps({f"unknown-{i}-" + "y" * 300: "input-value" for i in range(500)}).encode()
    response = _send(client, "/v1/configs", raw)
    body = response.json()
    assert response.status_code == 422
    assert len(body["errors"]) == 20
    assert body["errors_total"] == 500
    assert b"input-value" not in response.content
    assert all(len(str(part)) <= 64 for e in body["errors"] for part in e["loc"])
    assert len(response.content) < 8000


def test_a_deep_json_form_field_is_422_not_500(tmp_path: Path) -> None:
    # given a JSON string inside a multipart form (the guard cannot see it)
    client = TestClient(_app(tmp_path), raise_server_exceptions=False)
    response = client.post("/v1/form", data={"spec": "[" * 5000 + "]" * 5000})
    assert response.status_code == 422
    assert response.json()["code"] == "input_too_deep"


def test_valid_json_reaches_the_route_unchanged(client: TestClient) -> None:
    response = _send(client, "/v1/configs", b'{"epochs": 3}')
    assert response.json() == {"epochs": 3}


def test_scan_ignores_escaped_quotes_and_counts_real_keys() -> None:
    limits = JsonLimits(max_bytes=1 << 20, max_depth=3, max_keys=2)
    assert scan_json(b'{"a": "x\\"}:{:", "b": 1}', limits) is None
    problem = scan_json(b'{"a": 1, "b": 2, "c": 3}', limits)
    assert problem is not None
    assert problem.code == "json_too_many_keys"
