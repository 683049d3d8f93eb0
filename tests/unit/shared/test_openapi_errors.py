"""Schemas that match answers (issue 15, finding 6b): every operation documents the errors
the common middleware and handlers send, with the body they really have."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.testclient import TestClient

from shared.config import CommonSettings, PathSettings, StorageSettings
from shared.http.app import create_service_app
from shared.http.openapi import COMMON_ERRORS


def _app(tmp_path: Path) -> FastAPI:
    settings = CommonSettings(
        paths=PathSettings(home=tmp_path), storage=StorageSettings(backend="file")
    )
    app = create_service_app(service="demo", settings=settings, lifespan=None)

    @app.get("/v1/things/{name}", responses={404: {"description": "no such thing"}})
    def thing(name: str, limit: int = 3) -> dict[str, str]:
        return {"name": name}

    return app


def test_every_operation_documents_the_common_errors_with_the_error_body(tmp_path: Path) -> None:
    schema = TestClient(_app(tmp_path)).get("/openapi.json").json()
    responses = schema["paths"]["/v1/things/{name}"]["get"]["responses"]
    assert set(COMMON_ERRORS) <= set(responses)
    assert responses["404"]["description"] == "no such thing"  # the route's own words stay
    for status in COMMON_ERRORS:
        body = responses[status]["content"]["application/json"]["schema"]
        assert body == {"$ref": "#/components/schemas/ErrorBody"}
    assert "Retry-After" in responses["503"]["headers"]
    assert schema["components"]["schemas"]["ErrorBody"]["required"] == ["detail", "code"]


def test_a_validation_error_answer_matches_the_documented_body(tmp_path: Path) -> None:
    client = TestClient(_app(tmp_path))
    answer = client.get("/v1/things/a?limit=x").json()
    documented = client.get("/openapi.json").json()["components"]["schemas"]["ErrorBody"]
    assert set(answer) <= set(documented["properties"])
    assert {"detail", "code"} <= set(answer)
