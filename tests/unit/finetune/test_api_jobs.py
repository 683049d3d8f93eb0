"""Finetune API job routes: validation to clear 4xx codes, version pinning, what is enqueued."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from services.finetune.api.main import create_app
from services.finetune.config import FinetuneSettings
from services.finetune.stores.datasets import DatasetCatalog, DatasetRef
from shared.config import CommonSettings, PathSettings, StorageSettings
from shared.http.state import http_state
from shared.schemas.jobs import Queue, TaskName
from shared.storage.artifacts import ArtifactStore
from shared.storage.filesystem import FileObjectStore

AGBP = "agbp-yolov8s:20260101T000000-00000001"
AGDP = "agdp-s:20260102T000000-00000002"


class FakeSender:
    def __init__(self) -> None:
        self.sent: list[tuple[str, Any, dict[str, Any]]] = []

    def send_task(self, name: str, args: Any = None, **options: Any) -> None:
        self.sent.append((name, args, options))


def _seed(store: FileObjectStore) -> None:
    artifacts = ArtifactStore(store)
    meta = {"kind": "agbp", "backbone": "yolov8s", "key_names": "ultralytics-detector"}
    artifacts.publish(
        "agbp-yolov8s", {"backbone.pt": b"t"}, version=AGBP.split(":")[1], metadata=meta
    )
    detector = {"weights.pt": b"w", "model.onnx": b"o", "classes.json": b'["anomaly"]'}
    artifacts.publish(
        "agdp-s", detector, version=AGDP.split(":")[1], metadata={"kind": "agdp", "scale": "s"}
    )
    manifest = {"classes": ["anomaly"], "images": 10, "boxes": 9, "splits": {"train": 8, "val": 2}}
    DatasetCatalog(store).publish(DatasetRef("shapes", "v1"), {"splits.json": b"{}"}, manifest)
    store.put_bytes("pseudo/steel/pl-1/labels/a.txt", b"0 0.5 0.5 0.2 0.2\n")
    store.put_bytes("uploads/steel/a.png", b"png")


@pytest.fixture
def client(tmp_path: Path) -> Iterator[tuple[TestClient, FakeSender]]:
    store = FileObjectStore(tmp_path / "store")
    _seed(store)
    common = CommonSettings(
        paths=PathSettings(home=tmp_path / "home"), storage=StorageSettings(backend="file")
    )
    sender = FakeSender()
    with TestClient(create_app(FinetuneSettings(common=common), store=store)) as test_client:
        http_state(test_client.app).celery = sender  # type: ignore[arg-type,assignment]
        yield test_client, sender


def _agdp(**fields: Any) -> dict[str, Any]:
    return {
        "images_prefix": "uploads/steel/",
        "labels_prefix": "pseudo/steel/pl-1/",
        "backbone_artifact": "agbp-yolov8s",
        "scale": "s",
        **fields,
    }


def _finetune(**fields: Any) -> dict[str, Any]:
    return {"dataset": "shapes", "scale": "s", "model_name": "shapes-s", **fields}


def test_agdp_job_is_queued_with_pinned_backbone(client: tuple[TestClient, FakeSender]) -> None:
    # given
    http, sender = client
    # when
    response = http.post("/v1/agdp-jobs", json=_agdp(config={"epochs": 2}, frozen=4))
    # then
    assert response.status_code == 202, response.text
    record = response.json()
    assert record["state"] == "PENDING"
    assert record["params"]["backbone_artifact"] == AGBP
    assert record["params"]["artifact_name"] == "agdp-s"
    assert sender.sent == [(TaskName.FINETUNE_AGDP, [record["id"]], {"queue": Queue.FINETUNE})]


def test_unknown_config_keys_are_a_422_naming_them(client: tuple[TestClient, FakeSender]) -> None:
    # when
    response = client[0].post("/v1/agdp-jobs", json=_agdp(config={"epoch": 3, "lr": 0.1}))
    # then
    assert response.status_code == 422
    body = response.json()
    assert body["code"] == "unknown_config_keys"
    assert "'epoch' (did you mean 'epochs'?)" in body["detail"]
    assert client[1].sent == []


def test_unknown_finetune_config_keys_are_a_422(client: tuple[TestClient, FakeSender]) -> None:
    # when
    response = client[0].post("/v1/finetune-jobs", json=_finetune(config={"bogus": 1}))
    # then
    assert response.status_code == 422
    assert response.json()["code"] == "unknown_config_keys"


@pytest.mark.parametrize(
    ("config", "code"),
    [
        ({"epochs": 0}, "invalid_config"),
        ({"imgsz": 100}, "invalid_config"),
        ({"device": "cuda"}, "runtime_setting_in_config"),
        ({"scale": "m"}, "scale_mismatch"),
    ],
)
def test_bad_config_values_are_a_422(
    client: tuple[TestClient, FakeSender], config: dict[str, Any], code: str
) -> None:
    # when
    response = client[0].post("/v1/finetune-jobs", json=_finetune(config=config))
    # then
    assert response.status_code == 422
    assert response.json()["code"] == code


@pytest.mark.parametrize(
    "body",
    [
        _agdp(scale="x"),
        _agdp(frozen=7),
        _agdp(frozen=2, config={"freeze": 3}),
        _agdp(images_prefix="../etc/"),
        _agdp(surprise=True),
    ],
)
def test_malformed_agdp_requests_are_a_422(
    client: tuple[TestClient, FakeSender], body: dict[str, Any]
) -> None:
    # when
    response = client[0].post("/v1/agdp-jobs", json=body)
    # then
    assert response.status_code == 422
    assert response.json()["code"] == "validation_error"


def test_a_backbone_of_another_scale_is_refused(client: tuple[TestClient, FakeSender]) -> None:
    # when
    response = client[0].post("/v1/agdp-jobs", json=_agdp(scale="n"))
    # then
    assert response.status_code == 422
    assert response.json()["code"] == "scale_mismatch"


def test_missing_pseudo_labels_are_a_422(client: tuple[TestClient, FakeSender]) -> None:
    # when
    response = client[0].post("/v1/agdp-jobs", json=_agdp(labels_prefix="pseudo/none/"))
    # then
    assert response.status_code == 422
    assert response.json()["code"] == "labels_missing"


def test_finetune_job_pins_dataset_and_init(client: tuple[TestClient, FakeSender]) -> None:
    # when
    body = _finetune(init={"kind": "agdp", "artifact": "agdp-s:latest"}, config={"epochs": 3})
    response = client[0].post("/v1/finetune-jobs", json=body)
    # then
    assert response.status_code == 202, response.text
    params = response.json()["params"]
    assert params["dataset"] == "shapes:v1"
    assert params["init"] == {"kind": "agdp", "artifact": AGDP, "path": None}
    assert params["config"] == {"epochs": 3, "scale": "s"}
    assert client[1].sent[0][0] == TaskName.FINETUNE_TRAIN


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (_finetune(dataset="nope"), 404, "dataset_not_found"),
        (_finetune(split="test"), 422, "unknown_split"),
        (_finetune(val_split="train"), 422, "invalid_split"),
        (_finetune(init={"kind": "agdp", "artifact": "ghost:v9"}), 404, "artifact_not_found"),
        (_finetune(init={"kind": "agdp", "artifact": AGBP}), 422, "not_a_detector"),
        (_finetune(init={"kind": "agbp", "artifact": AGDP}), 422, "not_a_backbone"),
        (_finetune(scale="n", init={"kind": "agdp", "artifact": AGDP}), 422, "scale_mismatch"),
    ],
)
def test_unusable_finetune_inputs_get_clear_codes(
    client: tuple[TestClient, FakeSender], body: dict[str, Any], status: int, code: str
) -> None:
    # when
    response = client[0].post("/v1/finetune-jobs", json=body)
    # then
    assert response.status_code == status, response.text
    assert response.json()["code"] == code


def test_an_init_without_its_artifact_is_a_422(client: tuple[TestClient, FakeSender]) -> None:
    # when
    response = client[0].post("/v1/finetune-jobs", json=_finetune(init={"kind": "agbp"}))
    # then
    assert response.status_code == 422
    assert response.json()["code"] == "validation_error"


def test_evaluation_of_a_model_with_other_classes_is_refused(
    client: tuple[TestClient, FakeSender], tmp_path: Path
) -> None:
    # given a one-class model and the two-class dataset
    store: FileObjectStore = http_state(client[0].app).store  # type: ignore[arg-type,assignment]
    manifest = {"classes": ["a", "b"], "images": 2, "boxes": 2, "splits": {"val": 2}}
    DatasetCatalog(store).publish(DatasetRef("two", "v1"), {"splits.json": b"{}"}, manifest)
    # when
    response = client[0].post("/v1/evaluations", json={"model": AGDP, "dataset": "two"})
    # then
    assert response.status_code == 422
    assert response.json()["code"] == "class_mismatch"


def test_evaluation_is_queued_with_pinned_refs(client: tuple[TestClient, FakeSender]) -> None:
    # when
    response = client[0].post("/v1/evaluations", json={"model": "agdp-s", "dataset": "shapes"})
    # then
    assert response.status_code == 202, response.text
    params = {"model": AGDP, "dataset": "shapes:v1", "split": "val", "conf": 0.25}
    assert response.json()["params"] == params
    assert client[1].sent[0][0] == TaskName.FINETUNE_EVALUATE


def test_dataset_import_is_queued(client: tuple[TestClient, FakeSender]) -> None:
    # when
    body = {"name": "steel", "prefix": "uploads/steel", "format": "yolo", "mini": [5, 1, 5]}
    response = client[0].post("/v1/datasets", json=body)
    # then
    assert response.status_code == 202, response.text
    params = response.json()["params"]
    assert (params["prefix"], params["mini"]) == ("uploads/steel/", [1, 5])
    assert client[1].sent[0][0] == "finetune.import_dataset"


def test_dataset_import_from_an_empty_prefix_is_a_422(
    client: tuple[TestClient, FakeSender],
) -> None:
    # when
    body = {"name": "steel", "prefix": "uploads/nothing/", "format": "voc"}
    response = client[0].post("/v1/datasets", json=body)
    # then
    assert response.status_code == 422
    assert response.json()["code"] == "source_empty"


@pytest.mark.parametrize(
    ("given", "code"),
    [({"annotations": "labelz"}, "annotations_missing"), ({"images": "pics"}, "images_missing")],
)
def test_a_named_folder_that_holds_nothing_is_a_422_naming_it(
    client: tuple[TestClient, FakeSender], given: dict[str, str], code: str
) -> None:
    # when a folder is named that the uploaded set does not have
    body = {"name": "steel", "prefix": "uploads/steel", "format": "yolo", **given}
    response = client[0].post("/v1/datasets", json=body)
    # then
    assert response.status_code == 422, response.text
    assert response.json()["code"] == code
    assert next(iter(given.values())) in response.json()["detail"]
    assert not client[1].sent


def test_a_non_json_body_is_a_422_and_the_app_keeps_serving(
    client: tuple[TestClient, FakeSender],
) -> None:
    # when
    broken = client[0].post(
        "/v1/finetune-jobs", content=b"\x00{not json", headers={"content-type": "application/json"}
    )
    after = client[0].get("/healthz")
    # then
    assert broken.status_code == 422
    assert after.status_code == 200
    assert json.loads(after.text)["status"] == "ok"


@pytest.mark.parametrize(
    ("schema_name", "default_epochs"), [("FinetuneJobRequest", 500), ("AgdpJobRequest", 10)]
)
def test_openapi_publishes_the_training_config_schema(
    client: tuple[TestClient, FakeSender], schema_name: str, default_epochs: int
) -> None:
    """The config is documented field by field, without the worker's runtime keys."""
    test_client, _ = client
    schemas = test_client.get("/openapi.json").json()["components"]["schemas"]
    config = schemas[schema_name]["properties"]["config"]
    assert config["additionalProperties"] is False
    assert config["properties"]["epochs"]["default"] == default_epochs
    assert {"lr0", "imgsz", "freeze"} <= set(config["properties"])
    assert not {"device", "workers"} & set(config["properties"])
