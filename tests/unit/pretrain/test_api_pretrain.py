"""The pretrain API over TestClient: job submission, validation errors, reads, scopes."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from services.pretrain.api.main import create_app
from services.pretrain.config import PretrainSettings
from services.pretrain.params import AGBP_CONFIG_KEYS, DEFAULT_BACKBONE
from shared.config import AuthSettings, CommonSettings, PathSettings
from shared.http.auth import create_key
from shared.jobs.store import JobStore
from shared.schemas.backbones import backbone_names
from shared.schemas.dataset_maps import DatasetMapManifest, manifest_key
from shared.schemas.jobs import JobState
from shared.storage.artifacts import ArtifactStore
from shared.storage.filesystem import FileObjectStore

SOURCE = {"category": "steel", "images_prefix": "img/steel", "maps_prefix": "maps/steel/j1/"}
PSEUDO = {"category": "steel", "images_prefix": "img/steel/", "maps_prefix": "maps/steel/j1/"}


@pytest.fixture
def store(tmp_path: Path) -> FileObjectStore:
    return FileObjectStore(tmp_path / "store")


def _settings(tmp: Path, keys: list[str] | None = None) -> PretrainSettings:
    common = CommonSettings(
        paths=PathSettings(home=tmp / "home"), auth=AuthSettings(api_keys=keys or [])
    )
    return PretrainSettings(common=common)


@pytest.fixture
def client(tmp_path: Path, store: FileObjectStore) -> Iterator[TestClient]:
    with TestClient(create_app(_settings(tmp_path), store=store)) as client:
        yield client


def _agbp(**fields: Any) -> dict[str, Any]:
    return {"sources": [SOURCE], "config": {"backbone": "yolov8n", "epochs": 2}} | fields


def test_a_valid_pretrain_job_is_accepted_and_recorded(
    client: TestClient, store: FileObjectStore
) -> None:
    # when
    response = client.post("/v1/pretrain-jobs", json=_agbp())
    # then
    assert response.status_code == 202, response.text
    body = response.json()
    assert body["state"] == JobState.PENDING
    assert body["kind"] == "agbp"
    assert body["queue"] == "pretrain"
    assert body["task_name"] == "pretrain.agbp"
    assert body["params"]["artifact_name"] == "agbp-yolov8n"
    assert body["params"]["sources"][0]["images_prefix"] == "img/steel/"
    assert JobStore(store).get(body["id"]).params == body["params"]


def test_unknown_config_keys_are_refused_by_name_with_a_suggestion(client: TestClient) -> None:
    # when
    response = client.post("/v1/pretrain-jobs", json=_agbp(config={"lrr": 0.1, "zzz": 1}))
    # then
    assert response.status_code == 422
    body = response.json()
    assert body["code"] == "unknown_config_keys"
    assert "'lrr' (did you mean 'lr'?)" in body["detail"]
    assert "'zzz'" in body["detail"]


@pytest.mark.parametrize(
    "config",
    [{"backbone": "vgg16"}, {"epochs": 0}, {"input_size": 100}, {"frozen_stages": 4}],
    ids=["unknown-backbone", "zero-epochs", "not-multiple-of-32", "everything-frozen"],
)
def test_invalid_config_values_are_refused(client: TestClient, config: dict[str, Any]) -> None:
    response = client.post("/v1/pretrain-jobs", json=_agbp(config=config))
    assert response.status_code == 422
    assert response.json()["code"] in ("invalid_config", "invalid_input")


def test_fewer_classes_than_categories_are_refused(client: TestClient) -> None:
    second = SOURCE | {"category": "pipe", "images_prefix": "img/pipe/"}
    response = client.post(
        "/v1/pretrain-jobs", json=_agbp(sources=[SOURCE, second], config={"num_classes": 1})
    )
    assert response.status_code == 422
    assert "num_classes 1 < 2 categories" in response.json()["detail"]


def test_a_batch_larger_than_the_listed_maps_is_refused_at_submission(
    client: TestClient, store: FileObjectStore
) -> None:
    # given: the source's dataset-map manifest lists two maps
    maps = {f"img/steel/{i}.png": f"maps/steel/j1/maps/{i}.npy" for i in range(2)}
    manifest = DatasetMapManifest(category="steel", count=2, maps=maps)
    store.put_bytes(manifest_key(SOURCE["maps_prefix"]), manifest.to_bytes())
    # when
    big = client.post("/v1/pretrain-jobs", json=_agbp(config={"batch_size": 8}))
    fits = client.post("/v1/pretrain-jobs", json=_agbp(config={"batch_size": 2}))
    # then
    assert big.status_code == 422
    assert big.json()["code"] == "invalid_config"
    assert "batch_size 8" in big.json()["detail"]
    assert fits.status_code == 202, fits.text


def test_without_a_manifest_the_batch_is_left_to_the_worker(client: TestClient) -> None:
    response = client.post("/v1/pretrain-jobs", json=_agbp(config={"batch_size": 8}))
    assert response.status_code == 202, response.text


@pytest.mark.parametrize(
    "body",
    [
        _agbp(sources=[]),
        _agbp(sources=[SOURCE | {"maps_prefix": "../etc/"}]),
        _agbp(sources=[SOURCE | {"category": "a b"}]),
        _agbp(start_weights={"artifact": "x", "path": "y.pt"}),
        _agbp(unexpected=1),
        _agbp(artifact_name="no/slash"),
        _agbp(start_weights={"artifact": "base:bad/version"}),
    ],
    ids=[
        "no-sources",
        "dotdot-prefix",
        "bad-category",
        "two-weights",
        "extra-field",
        "bad-name",
        "bad-weights-version",
    ],
)
def test_malformed_requests_get_422(client: TestClient, body: dict[str, Any]) -> None:
    response = client.post("/v1/pretrain-jobs", json=body)
    assert response.status_code == 422
    assert response.json()["code"] == "validation_error"


def test_start_weights_from_an_unknown_artifact_give_404(client: TestClient) -> None:
    response = client.post("/v1/pretrain-jobs", json=_agbp(start_weights={"artifact": "nope"}))
    assert response.status_code == 404
    assert response.json()["code"] == "artifact_not_found"


def test_start_weights_artifact_is_pinned_to_its_latest_version(
    client: TestClient, store: FileObjectStore
) -> None:
    # given
    ref = ArtifactStore(store).publish("base", {"backbone.pt": b"w"}, version="v1")
    # when
    response = client.post("/v1/pretrain-jobs", json=_agbp(start_weights={"artifact": "base"}))
    # then
    assert response.status_code == 202, response.text
    assert response.json()["params"]["start_weights"]["artifact"] == str(ref)


def test_a_pretrain_job_reads_back_and_other_kinds_are_not_found(client: TestClient) -> None:
    # given
    agbp = client.post("/v1/pretrain-jobs", json=_agbp()).json()
    pseudo = client.post("/v1/pseudo-label-jobs", json=PSEUDO).json()
    # when
    same = client.get(f"/v1/pretrain-jobs/{agbp['id']}")
    other = client.get(f"/v1/pretrain-jobs/{pseudo['id']}")
    # then
    assert same.status_code == 200
    assert same.json()["id"] == agbp["id"]
    assert other.status_code == 404


def test_a_pseudo_label_job_is_accepted_with_its_defaults(client: TestClient) -> None:
    # when
    response = client.post("/v1/pseudo-label-jobs", json=PSEUDO)
    # then
    assert response.status_code == 202, response.text
    params = response.json()["params"]
    assert (params["c"], params["regions"], params["top_k"], params["nms"]) == (
        0.1,
        "contours",
        10,
        0.8,
    )
    assert params["score_gate"] is None
    assert (params["gate"], params["gate_min_separation"], params["gate_min_weight"]) == (
        "off",
        2.0,
        0.02,
    )
    assert (params["reference_maps_prefix"], params["gate_min_labelled_recall"]) == (None, 0.8)
    assert client.get(f"/v1/pseudo-label-jobs/{response.json()['id']}").status_code == 200


@pytest.mark.parametrize(
    "fields",
    [
        {"regions": "blobs"},
        {"top_k": 0},
        {"nms": 1.5},
        {"c": "x"},
        {"gate": "sometimes"},
        {"gate": "fixed"},
        {"gate": "auto", "score_gate": 0.5},
        {"gate_min_weight": 0.5},
        {"gate": "auto", "gate_min_labelled_recall": 0},
        {"gate": "auto", "gate_min_labelled_recall": 1.5},
        {"gate": "off", "reference_maps_prefix": "maps/ref/"},
        {"gate": "auto", "reference_maps_prefix": "../up/"},
    ],
    ids=[
        "regions",
        "top_k",
        "nms",
        "c",
        "gate",
        "fixed-without-score",
        "auto-with-score",
        "w",
        "recall-0",
        "recall-above-1",
        "reference-without-auto",
        "reference-bad-prefix",
    ],
)
def test_bad_pseudo_label_parameters_get_422(client: TestClient, fields: dict[str, Any]) -> None:
    response = client.post("/v1/pseudo-label-jobs", json=PSEUDO | fields)
    assert response.status_code == 422


def test_an_out_prefix_with_finished_labels_gives_409(
    client: TestClient, store: FileObjectStore
) -> None:
    # given
    store.put_bytes("pseudo/done/manifest.json", json.dumps({"job_id": "x"}).encode())
    # when
    response = client.post("/v1/pseudo-label-jobs", json=PSEUDO | {"out_prefix": "pseudo/done"})
    # then
    assert response.status_code == 409
    assert response.json()["code"] == "output_exists"


def test_submitting_jobs_needs_the_train_scope(tmp_path: Path, store: FileObjectStore) -> None:
    # given: a camera key (inspect scope) and a training key
    camera, camera_entry = create_key("camera", ["inspect"])
    trainer, trainer_entry = create_key("trainer", ["train"])
    app = create_app(_settings(tmp_path, [camera_entry, trainer_entry]), store=store)
    with TestClient(app) as client:
        # when
        denied = client.post("/v1/pretrain-jobs", json=_agbp(), headers={"X-API-Key": camera})
        allowed = client.post("/v1/pretrain-jobs", json=_agbp(), headers={"X-API-Key": trainer})
    # then
    assert denied.status_code == 403
    assert allowed.status_code == 202


def test_the_openapi_shows_the_agbp_config_with_the_backbone_table(client: TestClient) -> None:
    # when
    schemas = client.get("/openapi.json").json()["components"]["schemas"]
    # then: config is a typed object (not a free dict), backbones listed from the table
    config = schemas["PretrainJobRequest"]["properties"]["config"]
    assert config["$ref"].endswith("/AgbpConfig")
    backbone = schemas["AgbpConfig"]["properties"]["backbone"]
    assert backbone["enum"] == list(backbone_names())
    assert backbone["default"] == DEFAULT_BACKBONE
    assert set(schemas["AgbpConfig"]["properties"]) == set(AGBP_CONFIG_KEYS)


def test_the_api_modules_import_without_the_training_stack() -> None:
    # when: the API app module is imported in a fresh interpreter
    code = (
        "import sys; import services.pretrain.api.main; "
        "print(sorted(m for m in ('torch', 'cv2', 'matplotlib') if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    # then
    assert done.stdout.strip() == "[]"


def test_without_the_training_stack_unknown_keys_are_still_refused(
    tmp_path: Path, store: FileObjectStore
) -> None:
    # given: an API like the torch-free image, with no full config check
    app = create_app(_settings(tmp_path), store=store)
    with TestClient(app) as client:
        # when
        unknown = client.post("/v1/pretrain-jobs", json=_agbp(config={"lrr": 0.1}))
        bad_value = client.post("/v1/pretrain-jobs", json=_agbp(config={"epochs": 0}))
        backbone = client.post("/v1/pretrain-jobs", json=_agbp(config={"backbone": "vgg16"}))
        frozen = client.post("/v1/pretrain-jobs", json=_agbp(config={"frozen_stages": 4}))
    # then: keys, values, backbone names and combinations are all refused at once
    assert unknown.status_code == 422
    assert unknown.json()["code"] == "unknown_config_keys"
    assert bad_value.status_code == 422
    assert bad_value.json()["code"] == "invalid_config"
    assert backbone.status_code == 422
    assert backbone.json()["code"] == "invalid_config"
    assert frozen.status_code == 422
    assert frozen.json()["code"] == "invalid_input"
