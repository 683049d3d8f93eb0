"""Category routes through TestClient (lifespan runs, tiny model, local-folder store)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from services.anomaly_map.api.main import create_app
from shared.config import AuthSettings, CommonSettings, PathSettings
from shared.http.auth import create_key
from shared.http.state import http_state
from shared.storage.filesystem import FileObjectStore
from tests.unit.anomaly_map.test_service_support import image_bytes, make_engine, make_settings

SPEC = {"map": "metal surface", "good": ["{} without holes"], "defect": ["{} with a crack"]}
LONG = "{} with a scratch defect, it appears as " + "a very long and thin bright line " * 12


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    settings = make_settings(tmp_path, data_root=tmp_path / "data")
    app = create_app(settings, store=FileObjectStore(tmp_path / "store"), load_engine=make_engine)
    with TestClient(app) as test_client:
        yield test_client


def test_put_json_creates_a_version(client: TestClient) -> None:
    # when
    response = client.put("/v1/categories/tile", json=SPEC)
    # then
    assert response.status_code == 201
    body = response.json()
    assert body["name"] == "tile"
    assert body["versions"] == [body["version"]]
    assert body["prompts"] == {"normal": 105, "anomalous": 105}


def test_put_multipart_stores_uploaded_references(client: TestClient) -> None:
    # given
    files = [("references", ("a.png", image_bytes(seed=1), "image/png"))] * 2
    # when
    response = client.put("/v1/categories/tile", data={"spec": json.dumps(SPEC)}, files=files)
    # then
    assert response.status_code == 201
    assert len(response.json()["references"]) == 2
    assert response.json()["sources"] == ["upload:a.png", "upload:a.png"]


def test_second_put_makes_a_second_version(client: TestClient) -> None:
    # given
    first = client.put("/v1/categories/tile", json=SPEC).json()
    # when
    second = client.put("/v1/categories/tile", json={**SPEC, "method": "winclip"}).json()
    shown = client.get("/v1/categories/tile").json()
    # then
    assert shown["version"] == second["version"]
    assert shown["method"] == "winclip"
    assert sorted(shown["versions"]) == sorted([first["version"], second["version"]])


def test_get_an_older_version(client: TestClient) -> None:
    # given
    first = client.put("/v1/categories/tile", json=SPEC).json()
    client.put("/v1/categories/tile", json={**SPEC, "map": "steel"})
    # when
    response = client.get("/v1/categories/tile", params={"version": first["version"]})
    # then
    assert response.json()["map"] == "metal surface"


def test_list_shows_the_latest_of_every_category(client: TestClient) -> None:
    # given
    client.put("/v1/categories/a", json=SPEC)
    client.put("/v1/categories/b", json=SPEC)
    # when
    items = client.get("/v1/categories").json()["items"]
    # then
    assert [item["name"] for item in items] == ["a", "b"]


def test_delete_then_get_is_404(client: TestClient) -> None:
    # given
    client.put("/v1/categories/tile", json=SPEC)
    # when
    deleted = client.delete("/v1/categories/tile")
    response = client.get("/v1/categories/tile")
    # then
    assert deleted.status_code == 204
    assert response.status_code == 404
    assert response.json()["code"] == "category_not_found"


def test_delete_unknown_is_404(client: TestClient) -> None:
    # when / then
    assert client.delete("/v1/categories/nope").status_code == 404


def test_prompt_too_long_is_422_listing_it(client: TestClient) -> None:
    # when
    response = client.put("/v1/categories/tile", json={**SPEC, "defect": [LONG]})
    # then
    assert response.status_code == 422
    assert response.json()["code"] == "prompt_too_long"
    assert "tile.defect[0]" in response.json()["detail"]


def test_unknown_field_is_a_validation_error(client: TestClient) -> None:
    # when
    response = client.put("/v1/categories/tile", json={**SPEC, "colour": "red"})
    # then
    assert response.status_code == 422
    assert response.json()["code"] == "validation_error"


def test_invalid_json_is_422(client: TestClient) -> None:
    # when
    response = client.put(
        "/v1/categories/tile", content=b"{not json", headers={"content-type": "application/json"}
    )
    # then
    assert response.status_code == 422
    assert response.json()["code"] == "invalid_json"


def test_wrong_content_type_is_415(client: TestClient) -> None:
    # when
    response = client.put(
        "/v1/categories/tile", content=b"map=x", headers={"content-type": "text/plain"}
    )
    # then
    assert response.status_code == 415


def test_multipart_without_spec_is_422(client: TestClient) -> None:
    # when
    response = client.put(
        "/v1/categories/tile", files=[("references", ("a.png", image_bytes(), "image/png"))]
    )
    # then
    assert response.status_code == 422
    assert response.json()["code"] == "spec_missing"


def test_corrupt_reference_upload_is_4xx_and_nothing_is_stored(client: TestClient) -> None:
    # when
    response = client.put(
        "/v1/categories/tile",
        data={"spec": json.dumps(SPEC)},
        files=[("references", ("a.png", b"\x89PNG\r\n\x1a\nxx", "image/png"))],
    )
    # then
    assert response.status_code == 422
    assert client.get("/v1/categories/tile").status_code == 404


def test_import_creates_categories_and_warns_about_samples(client: TestClient, tmp_path) -> None:
    # given
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "ok.png").write_bytes(image_bytes())
    file = {
        "plate": {
            "des": {"good": [], "defect": ["{} with a hole"]},
            "map": "plate",
            "samples": ["ok.png", "/authors/machine/x.jpg"],
        },
    }
    # when
    response = client.post("/v1/categories:import", json=file)
    # then
    assert response.status_code == 201
    assert len(response.json()["created"][0]["references"]) == 1
    assert "absolute paths" in response.json()["warnings"][0]


@pytest.fixture
def keyed(tmp_path: Path) -> Iterator[tuple[TestClient, dict[str, str]]]:
    keys = {scope: create_key(f"{scope}-key", [scope]) for scope in ("inspect", "train", "admin")}
    common = CommonSettings(
        paths=PathSettings(home=tmp_path / "home"),
        auth=AuthSettings(api_keys=[entry for _, entry in keys.values()]),
    )
    settings = make_settings(tmp_path, common=common)
    app = create_app(settings, store=FileObjectStore(tmp_path / "store"), load_engine=make_engine)
    with TestClient(app) as test_client:
        yield test_client, {scope: key for scope, (key, _) in keys.items()}


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("GET", "/v1/categories", {"inspect", "admin"}),
        ("PUT", "/v1/categories/tile", {"admin"}),
        ("DELETE", "/v1/categories/tile", {"admin"}),
        ("POST", "/v1/categories:import", {"admin"}),
        ("POST", "/v1/anomaly-maps", {"inspect", "admin"}),
        ("POST", "/v1/anomaly-map-jobs", {"train", "admin"}),
        ("POST", "/v1/evaluations", {"train", "admin"}),
    ],
)
def test_routes_need_their_scope(keyed, method: str, path: str, allowed: set[str]) -> None:
    # given
    client, keys = keyed
    # when
    statuses = {
        scope: client.request(method, path, headers={"x-api-key": key}).status_code
        for scope, key in keys.items()
    }
    # then
    assert {scope for scope, status in statuses.items() if status != 403} == allowed


def test_a_new_version_has_its_text_features_stored_before_its_first_map(
    client: TestClient,
) -> None:
    # when
    created = client.put("/v1/categories/tile", json=SPEC).json()
    # then the background task after the reply encoded and stored them
    store: FileObjectStore = http_state(client.app).store  # type: ignore[arg-type,assignment]
    stored = store.list(f"categories/tile/{created['version']}/text/")
    assert len(stored) == 1
    assert stored[0].split("/")[-1].startswith("kead-")


def test_a_tocoad_category_gets_no_text_features(client: TestClient) -> None:
    # when
    created = client.put("/v1/categories/tile", json={**SPEC, "method": "tocoad"}).json()
    # then
    store: FileObjectStore = http_state(client.app).store  # type: ignore[arg-type,assignment]
    assert store.list(f"categories/tile/{created['version']}/text/") == []
