"""The one image upload (shared/http/uploads.py): both body forms, the byte cap, options,
``Accept`` negotiation, and the OpenAPI of the services' image routes."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import pytest
from fastapi import Depends, FastAPI, Request
from fastapi.testclient import TestClient
from pydantic import BaseModel, ConfigDict

from shared.config import CommonSettings, PathSettings
from shared.http.app import create_service_app
from shared.http.scopes import open_route
from shared.http.uploads import ImageUpload, image_upload, image_upload_openapi, negotiate
from tests.unit.shared.service_apps import anomaly_map_app, inference_app

CAP = 64


class Options(BaseModel):
    model_config = ConfigDict(extra="forbid")

    label: str
    tags: list[str] = []


_FORMATS = {"application/json": "json", "*/*": "json", "image/png": "png"}


def _format(request: Request) -> str:
    return negotiate(request, _FORMATS, "json", refuse_others=True)


UploadDep = Annotated[
    ImageUpload[Options], Depends(image_upload(Options, lambda _: CAP, multi=("tags",)))
]
FormatDep = Annotated[str, Depends(_format)]


def _app(tmp_path: Path) -> FastAPI:
    settings = CommonSettings(paths=PathSettings(home=tmp_path))
    app = create_service_app(service="demo", settings=settings, lifespan=None)

    @app.post("/v1/image", dependencies=[open_route()], openapi_extra=image_upload_openapi(Options))
    def take(body: UploadDep, fmt: FormatDep) -> dict[str, object]:
        return {"size": len(body.data), "label": body.params.label, "tags": body.params.tags,
                "format": fmt}  # fmt: skip

    return app


@pytest.fixture
def client(tmp_path: Path) -> TestClient:
    return TestClient(_app(tmp_path))


def test_a_raw_image_body_with_query_options(client: TestClient) -> None:
    response = client.post(
        "/v1/image?label=a&tags=x&tags=y", content=b"\x89PNG", headers={"content-type": "image/png"}
    )
    assert response.json() == {"size": 4, "label": "a", "tags": ["x", "y"], "format": "json"}


def test_a_multipart_image_whose_form_fields_win_over_the_query(client: TestClient) -> None:
    response = client.post(
        "/v1/image?label=query",
        files={"image": ("a.png", b"abc", "image/png")},
        data={"label": "form"},
    )
    assert response.json()["label"] == "form"
    assert response.json()["size"] == 3


def test_the_raw_body_cap_and_the_refusals(client: TestClient) -> None:
    too_big = client.post("/v1/image?label=a", content=b"x" * (CAP + 1),
                          headers={"content-type": "image/png"})  # fmt: skip
    assert too_big.status_code == 413
    text = client.post("/v1/image?label=a", content=b"x", headers={"content-type": "text/plain"})
    assert (text.status_code, text.json()["code"]) == (415, "unsupported_media_type")
    no_file = client.post("/v1/image?label=a", files={"other": ("a", b"x")})
    assert no_file.json()["code"] == "image_missing"
    bad = client.post("/v1/image", content=b"x", headers={"content-type": "image/png"})
    assert bad.status_code == 422
    assert bad.json()["errors"][0]["loc"] == ["query", "label"]


def test_accept_picks_the_representation_or_refuses_with_406(client: TestClient) -> None:
    def ask(accept: str) -> tuple[int, object]:
        answer = client.post("/v1/image?label=a", content=b"x",
                             headers={"content-type": "image/png", "accept": accept})  # fmt: skip
        return answer.status_code, answer.json().get("format") or answer.json()["code"]

    assert ask("text/html, image/png;q=0.9") == (200, "png")
    assert ask("*/*") == (200, "json")
    assert ask("text/html") == (406, "not_acceptable")


def test_the_openapi_describes_both_bodies_and_the_options(client: TestClient) -> None:
    operation = client.app.openapi()["paths"]["/v1/image"]["post"]  # type: ignore[attr-defined]
    content = operation["requestBody"]["content"]
    assert set(content) == {"multipart/form-data", "image/*"}
    assert content["multipart/form-data"]["schema"]["required"] == ["image", "label"]
    assert {p["name"] for p in operation["parameters"]} == {"label", "tags"}


@pytest.mark.parametrize(
    ("factory", "paths"),
    [(anomaly_map_app, ["/v1/anomaly-maps"]), (inference_app, ["/detect", "/v1/detect"])],
)
def test_every_image_route_documents_both_bodies(tmp_path: Path, factory, paths) -> None:  # type: ignore[no-untyped-def]
    app = factory(tmp_path, CommonSettings(paths=PathSettings(home=tmp_path / "home")))
    for path in paths:
        operation = app.openapi()["paths"][path]["post"]
        content = operation["requestBody"]["content"]
        assert set(content) == {"multipart/form-data", "image/*"}, path
        assert "image" in content["multipart/form-data"]["schema"]["properties"]
        assert operation["parameters"], path
