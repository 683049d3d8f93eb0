"""Finetune API registry routes with fake artifacts: listings, detail, promotion, scopes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from services.finetune.api.main import create_app
from services.finetune.config import FinetuneSettings
from services.finetune.stores.datasets import DatasetCatalog, DatasetRef
from services.finetune.stores.models import ModelRegistry
from shared.config import AuthSettings, CommonSettings, PathSettings, StorageSettings
from shared.http.auth import create_key
from shared.storage.artifacts import ArtifactStore
from shared.storage.filesystem import FileObjectStore

V1, V2 = "20260101T000000-00000001", "20260102T000000-00000002"
FILES = {
    "model.onnx": b"onnx",
    "classes.json": b'["scratch", "dent"]',
    "model.pt": b"pt",
    "weights.pt": b"w",
    "config.yaml": b"epochs: 1\n",
    "metrics.json": b'{"map50": 0.5}',
}


def _metadata(version: str, map50: float) -> dict[str, object]:
    lineage = {"kind": "finetune", "job_id": version, "dataset": "steel:v1", "chain": []}
    return {"kind": "finetune", "metrics": {"map50": map50}, "lineage": lineage}


@pytest.fixture
def store(tmp_path: Path) -> FileObjectStore:
    store = FileObjectStore(tmp_path / "store")
    artifacts = ArtifactStore(store)
    artifacts.publish("steel", FILES, version=V1, metadata=_metadata(V1, 0.5))
    artifacts.publish(
        "steel", {**FILES, "model.pt": b"pt2"}, version=V2, metadata=_metadata(V2, 0.6)
    )
    artifacts.publish("agbp-yolov8s", {"backbone.pt": b"b"}, version=V1, metadata={"kind": "agbp"})
    manifest = {"classes": ["a"], "images": 3, "boxes": 2, "splits": {"train": 2, "val": 1}}
    DatasetCatalog(store).publish(DatasetRef("steel", "v1"), {"splits.json": b"{}"}, manifest)
    return store


@pytest.fixture
def keys() -> dict[str, tuple[str, str]]:
    return {scope: create_key(f"{scope}-key", [scope]) for scope in ("train", "admin")}


def _client(tmp_path: Path, store: FileObjectStore, keys: list[str]) -> TestClient:
    common = CommonSettings(
        paths=PathSettings(home=tmp_path / "home"),
        storage=StorageSettings(backend="file"),
        auth=AuthSettings(api_keys=keys),
    )
    return TestClient(create_app(FinetuneSettings(common=common), store=store))


@pytest.fixture
def client(tmp_path: Path, store: FileObjectStore) -> Iterator[TestClient]:
    with _client(tmp_path, store, []) as test_client:
        yield test_client


def test_models_are_listed_with_latest_version_and_kind(client: TestClient) -> None:
    # when
    response = client.get("/v1/models")
    # then
    assert response.status_code == 200
    items = {item["name"]: item for item in response.json()["items"]}
    assert items["steel"] == {
        "name": "steel",
        "latest": V2,
        "versions": 2,
        "stages": {},
        "kind": "finetune",
    }
    assert items["agbp-yolov8s"]["kind"] == "agbp"


def test_model_detail_shows_metrics_and_lineage_per_version(client: TestClient) -> None:
    # when
    response = client.get("/v1/models/steel")
    # then
    assert response.status_code == 200
    versions = response.json()["versions"]
    assert [v["version"] for v in versions] == [V1, V2]
    assert versions[1]["metrics"] == {"map50": 0.6}
    assert versions[1]["lineage"]["dataset"] == "steel:v1"
    assert "model.onnx" in versions[1]["files"]


def test_an_unknown_model_is_a_404(client: TestClient) -> None:
    # when
    response = client.get("/v1/models/nothing")
    # then
    assert response.status_code == 404
    assert response.json()["code"] == "model_not_found"


def test_promotion_moves_the_stage_the_inference_service_follows(
    client: TestClient, store: FileObjectStore
) -> None:
    # when
    response = client.post(f"/v1/models/steel/versions/{V1}/promote", json={"stage": "production"})
    # then
    assert response.status_code == 200, response.text
    assert response.json() == {"name": "steel", "version": V1, "stage": "production"}
    stage = ArtifactStore(store).stage("steel", "production")
    assert stage is not None
    assert stage.version == V1
    assert client.get("/v1/models").json()["items"][1]["stages"] == {"production": V1}


def test_promoting_a_missing_version_is_a_404(client: TestClient) -> None:
    # when
    response = client.post("/v1/models/steel/versions/nope/promote", json={"stage": "production"})
    # then
    assert response.status_code == 404
    assert response.json()["code"] == "artifact_not_found"


def test_only_detectors_can_be_promoted(client: TestClient) -> None:
    # when
    response = client.post(
        f"/v1/models/agbp-yolov8s/versions/{V1}/promote", json={"stage": "production"}
    )
    # then
    assert response.status_code == 422
    assert response.json()["code"] == "not_a_detector"


@pytest.mark.parametrize("stage", ["", "../prod", "LATEST", "stages"])
def test_bad_stage_names_are_a_422(client: TestClient, stage: str) -> None:
    # when
    response = client.post(f"/v1/models/steel/versions/{V1}/promote", json={"stage": stage})
    # then
    assert response.status_code == 422


def test_promotion_needs_the_admin_scope(
    tmp_path: Path, store: FileObjectStore, keys: dict[str, tuple[str, str]]
) -> None:
    # given a train key (may read the registry) and an admin key
    train_key, admin_key = keys["train"][0], keys["admin"][0]
    with _client(tmp_path, store, [entry for _, entry in keys.values()]) as client:
        url = f"/v1/models/steel/versions/{V1}/promote"
        # when
        read = client.get("/v1/models", headers={"x-api-key": train_key})
        refused = client.post(url, json={"stage": "prod"}, headers={"x-api-key": train_key})
        allowed = client.post(url, json={"stage": "prod"}, headers={"x-api-key": admin_key})
    # then
    assert read.status_code == 200
    assert refused.status_code == 403
    assert allowed.status_code == 200


def test_version_detail_lists_saved_evaluations(client: TestClient, store: FileObjectStore) -> None:
    # given
    registry = ModelRegistry(store)
    ref = registry.resolve(f"steel:{V2}")
    registry.save_evaluation(ref, "steel-v1-val", {"map50": 0.42})
    # when
    response = client.get(f"/v1/models/steel/versions/{V2}")
    # then
    assert response.status_code == 200
    body = response.json()
    assert body["evaluation_results"] == [{"map50": 0.42}]
    assert body["evaluations"] == [f"models/steel/{V2}/evaluations/steel-v1-val.json"]


def test_datasets_are_listed_with_their_splits(client: TestClient) -> None:
    # when
    listing = client.get("/v1/datasets")
    detail = client.get("/v1/datasets/steel")
    # then
    assert listing.json()["items"] == [{"name": "steel", "latest": "v1", "versions": 1}]
    assert detail.json()["versions"][0]["splits"] == {"train": 2, "val": 1}


def test_an_unknown_dataset_is_a_404(client: TestClient) -> None:
    # when
    response = client.get("/v1/datasets/none")
    # then
    assert response.status_code == 404
    assert response.json()["code"] == "dataset_not_found"


@pytest.mark.parametrize("path", ["/v1/models/bad%20name", "/v1/datasets/bad%20name"])
def test_malformed_names_are_a_422_not_a_crash(client: TestClient, path: str) -> None:
    # when
    response = client.get(path)
    # then
    assert response.status_code == 422
