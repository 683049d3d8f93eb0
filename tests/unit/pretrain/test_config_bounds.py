"""Finite ranges on every numeric field of the pretrain and finetune job configs (issue 15,
finding 5): epochs 1e30, batch_size 1e9, input_size 1e6 and lr 1e400 are refused with 422."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import BaseModel

from services.finetune.params import (
    AgdpJobParams,
    DatasetImportParams,
    EvaluationParams,
    FinetuneJobParams,
    InitParams,
)
from services.pretrain.api.main import create_app
from services.pretrain.config import PretrainSettings
from services.pretrain.params import (
    AgbpConfig,
    AgbpJobParams,
    PseudoLabelParams,
    SourceSpec,
    StartWeights,
)
from shared.config import CommonSettings, PathSettings
from shared.schemas.bounds import unbounded_numeric_fields
from shared.schemas.detector import AgdpConfig, FinetuneConfig
from shared.storage.filesystem import FileObjectStore

JOB_MODELS: list[type[BaseModel]] = [
    AgbpConfig, AgbpJobParams, PseudoLabelParams, SourceSpec, StartWeights,
    AgdpConfig, FinetuneConfig, DatasetImportParams, AgdpJobParams, FinetuneJobParams,
    EvaluationParams, InitParams,
]  # fmt: skip
SOURCE = {"category": "steel", "images_prefix": "img/steel/", "maps_prefix": "maps/steel/j1/"}


@pytest.mark.parametrize("model", JOB_MODELS, ids=lambda m: m.__name__)
def test_every_numeric_field_has_a_finite_range(model: type[BaseModel]) -> None:
    assert unbounded_numeric_fields(model) == []


def _leaves(schema: dict[str, Any]) -> Iterator[dict[str, Any]]:
    if schema.get("type") in ("number", "integer"):
        yield schema
    for key in ("anyOf", "prefixItems"):
        for sub in schema.get(key, ()):
            yield from _leaves(sub)
    if isinstance(schema.get("items"), dict):
        yield from _leaves(schema["items"])


def _schema_bound(prop: dict[str, Any]) -> tuple[float, float, bool, bool]:
    leaf = next(_leaves(prop))
    low_open, high_open = "exclusiveMinimum" in leaf, "exclusiveMaximum" in leaf
    low = leaf["exclusiveMinimum" if low_open else "minimum"]
    high = leaf["exclusiveMaximum" if high_open else "maximum"]
    return (low, high, low_open, high_open)


def test_the_openapi_config_schema_carries_agbp_configs_bounds(client: TestClient) -> None:
    # given: the request body schema the API publishes
    schemas = client.get("/openapi.json").json()["components"]["schemas"]
    # then: config is the typed AgbpConfig, every number with a finite range
    props = schemas["AgbpConfig"]["properties"]
    own = AgbpConfig.model_json_schema()["properties"]
    for name, prop in own.items():
        if "number" in str(prop) or "integer" in str(prop):
            assert _schema_bound(props[name]) == _schema_bound(prop), name


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    settings = PretrainSettings(common=CommonSettings(paths=PathSettings(home=tmp_path / "h")))
    app = create_app(settings, store=FileObjectStore(tmp_path / "store"))
    with TestClient(app) as test_client:
        yield test_client


@pytest.fixture
def torch_free(tmp_path: Path) -> Iterator[TestClient]:
    settings = PretrainSettings(common=CommonSettings(paths=PathSettings(home=tmp_path / "h")))
    app = create_app(settings, store=FileObjectStore(tmp_path / "store"))
    with TestClient(app) as test_client:
        yield test_client


ABSURD = [
    b'{"epochs": 1e30}',
    b'{"batch_size": 1000000000}',
    b'{"input_size": 1000000}',
    b'{"lr": 1e400}',
    b'{"lr": NaN}',
    b'{"betas": [0.9, Infinity]}',
    b'{"mean": [1, 2, 1e300]}',
]


def _post(client: TestClient, config: bytes) -> Any:
    body = b'{"sources": [%s], "config": %s}' % (
        str(SOURCE).replace("'", '"').encode(),
        config,
    )
    return client.post(
        "/v1/pretrain-jobs", content=body, headers={"content-type": "application/json"}
    )


@pytest.mark.parametrize("config", ABSURD)
@pytest.mark.parametrize("api", ["client", "torch_free"])
def test_absurd_agbp_configs_are_refused(
    config: bytes, api: str, request: pytest.FixtureRequest
) -> None:
    client: TestClient = request.getfixturevalue(api)
    response = _post(client, config)
    assert response.status_code == 422, response.text
    assert response.json()["code"] in {"invalid_config", "non_finite_number"}


def test_an_infinite_pseudo_label_threshold_is_refused(client: TestClient) -> None:
    body = b'{"category": "steel", "images_prefix": "a/", "maps_prefix": "b/", "c": 1e400}'
    response = client.post(
        "/v1/pseudo-label-jobs", content=body, headers={"content-type": "application/json"}
    )
    assert response.status_code == 422


@pytest.mark.parametrize(
    "config",
    [{"epochs": 10**30}, {"batch": 10**9}, {"imgsz": 10**6 * 32}, {"lr0": float("inf")}],
)
def test_absurd_detector_configs_are_refused(config: dict[str, Any]) -> None:
    from services.finetune.params import check_train_config
    from shared.errors import InvalidInputError

    with pytest.raises(InvalidInputError) as caught:
        check_train_config("finetune", "s", config)
    assert caught.value.code == "invalid_config"


def test_a_huge_unknown_key_list_is_named_briefly(client: TestClient) -> None:
    config = ", ".join(f'"unknown_{i}_{"z" * 200}": 1' for i in range(2000))
    response = _post(client, b"{" + config.encode() + b"}")
    assert response.status_code == 422
    assert "and 1990 more" in response.json()["detail"]
    assert len(response.content) < 4000
