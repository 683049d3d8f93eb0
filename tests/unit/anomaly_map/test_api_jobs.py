"""Job submission routes: dataset maps and evaluations are queued with pinned versions."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from services.anomaly_map.api.main import create_app
from shared.schemas.jobs import Queue, TaskName
from shared.storage.filesystem import FileObjectStore
from tests.unit.anomaly_map.test_service_support import make_engine, make_settings

SPEC = {"map": "metal surface", "good": [], "defect": ["{} with a crack"], "method": "winclip"}


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    settings = make_settings(tmp_path)
    app = create_app(settings, store=FileObjectStore(tmp_path / "store"), load_engine=make_engine)
    with TestClient(app) as test_client:
        test_client.put("/v1/categories/tile", json=SPEC)
        yield test_client


def test_dataset_job_is_queued_on_maps_with_the_category_version(client: TestClient) -> None:
    # given
    version = client.get("/v1/categories/tile").json()["version"]
    # when
    response = client.post("/v1/anomaly-map-jobs", json={"category": "tile", "prefix": "data/set"})
    # then
    assert response.status_code == 202
    record = response.json()
    assert record["state"] == "PENDING"
    assert record["queue"] == Queue.MAPS
    assert record["task_name"] == TaskName.ANOMALY_MAP_DATASET
    assert record["params"]["category_version"] == version
    assert record["params"]["prefix"] == "data/set/"
    assert record["params"]["mode"] == "winclip"
    assert client.get(f"/v1/jobs/{record['id']}").json()["id"] == record["id"]


def test_dataset_job_for_unknown_category_is_404(client: TestClient) -> None:
    # when
    response = client.post("/v1/anomaly-map-jobs", json={"category": "nope", "prefix": "x/"})
    # then
    assert response.status_code == 404


def test_dataset_job_with_a_bad_prefix_is_422(client: TestClient) -> None:
    # when
    response = client.post("/v1/anomaly-map-jobs", json={"category": "tile", "prefix": "../etc/"})
    # then
    assert response.status_code == 422
    assert response.json()["code"] == "invalid_key"


def test_dataset_job_with_an_unknown_mode_is_422(client: TestClient) -> None:
    # when
    response = client.post(
        "/v1/anomaly-map-jobs", json={"category": "tile", "prefix": "x/", "mode": "magic"}
    )
    # then
    assert response.status_code == 422


@pytest.mark.parametrize(
    "images",
    [{}, {"prefix": "x/", "defects": {"dataset": "steel"}}],
    ids=["neither", "both"],
)
def test_dataset_job_needs_either_a_prefix_or_labelled_defects(
    client: TestClient, images: dict[str, object]
) -> None:
    response = client.post("/v1/anomaly-map-jobs", json={"category": "tile", **images})
    assert response.status_code == 422


def test_dataset_job_over_labelled_defects_is_queued(client: TestClient) -> None:
    body = {"category": "tile", "defects": {"dataset": "steel", "split": "train"}}
    response = client.post("/v1/anomaly-map-jobs", json=body)
    assert response.status_code == 202, response.text
    params = response.json()["params"]
    assert (params["prefix"], params["defects"]["dataset"]) == (None, "steel")


def test_evaluation_is_queued(client: TestClient) -> None:
    # when
    response = client.post(
        "/v1/evaluations",
        json={
            "category": "tile",
            "images_prefix": "eval/mt",
            "normal_prefixes": ["eval/mt/MT_Free/"],
        },
    )
    # then
    assert response.status_code == 202
    assert response.json()["task_name"] == TaskName.ANOMALY_MAP_EVALUATE
    assert response.json()["params"]["images_prefix"] == "eval/mt/"


def test_evaluation_with_unknown_fields_is_422(client: TestClient) -> None:
    # when
    response = client.post("/v1/evaluations", json={"category": "tile", "images": "x/"})
    # then
    assert response.status_code == 422


def test_tocoad_fit_is_queued(client: TestClient) -> None:
    # when
    response = client.post(
        "/v1/tocoad-fits", json={"category": "tile", "config": {"image_size": 64}}
    )
    # then
    assert response.status_code == 202
    assert response.json()["task_name"] == "anomaly_map.tocoad_fit"
    assert response.json()["queue"] == Queue.MAPS


def test_tocoad_fit_with_a_bad_config_is_422(client: TestClient) -> None:
    # when
    response = client.post(
        "/v1/tocoad-fits", json={"category": "tile", "config": {"image_size": 50}}
    )
    # then
    assert response.status_code == 422
    assert response.json()["code"] == "invalid_config"


@pytest.mark.parametrize(
    ("defects", "status", "code"),
    [
        ({"dataset": "nowhere"}, 404, "dataset_not_found"),
        ({"dataset": "no/slash"}, 422, "invalid_dataset_ref"),
        ({"dataset": "x", "max_images": 0}, 422, None),
    ],
)
def test_tocoad_fit_with_unknown_labelled_defects_is_refused_at_submission(
    client: TestClient, defects: dict[str, object], status: int, code: str | None
) -> None:
    # when
    response = client.post("/v1/tocoad-fits", json={"category": "tile", "defects": defects})
    # then
    assert response.status_code == status, response.text
    if code is not None:
        assert response.json()["code"] == code


_ABSURD = [1e30, 1e9, float("inf"), float("nan")]


def _post(client: TestClient, path: str, body: dict[str, object]) -> int:
    # json.dumps writes inf / nan as the Infinity / NaN tokens Python's parser accepts.
    data = json.dumps(body)
    return client.post(path, content=data, headers={"content-type": "application/json"}).status_code


@pytest.mark.parametrize("value", _ABSURD)
@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/tocoad-fits", {"category": "tile", "max_images": "V"}),
        ("/v1/tocoad-fits", {"category": "tile", "config": {"stage1": {"iters": "V"}}}),
        ("/v1/tocoad-fits", {"category": "tile", "config": {"stage2": {"lr_heads": "V"}}}),
        ("/v1/tocoad-fits", {"category": "tile", "config": {"bank": {"coreset_ratio": "V"}}}),
        (
            "/v1/tocoad-fits",
            {"category": "tile", "config": {"generator": {"beta_range": [0, "V"]}}},
        ),
        ("/v1/evaluations", {"category": "tile", "images_prefix": "a/", "max_images": "V"}),
    ],
)
def test_absurd_numbers_in_job_requests_are_422(
    client: TestClient, path: str, body: dict[str, object], value: float
) -> None:
    # given
    filled = json.loads(json.dumps(body).replace('"V"', json.dumps(value)))
    # when
    status = _post(client, path, filled)
    # then
    assert status == 422


@pytest.mark.parametrize("tile", ["1e30", "1000000000", "inf", "nan"])
def test_absurd_tile_sizes_are_422(client: TestClient, tile: str) -> None:
    # when
    response = client.post(
        f"/v1/anomaly-maps?category=tile&tile={tile}",
        content=b"\x89PNG",
        headers={"content-type": "image/png"},
    )
    # then
    assert response.status_code == 422


def test_openapi_publishes_the_tocoad_fit_config_as_optional_sections(client: TestClient) -> None:
    """Overrides lay over a preset: every section and field is documented, none required."""
    schemas = client.get("/openapi.json").json()["components"]["schemas"]
    config = schemas["TocoadFitRequest"]["properties"]["config"]
    stage1 = config["properties"]["stage1"]
    assert {"iters", "batch_size"} <= set(stage1["properties"])
    assert stage1["additionalProperties"] is False
    text = json.dumps(config)
    assert "$ref" not in text
    assert '"required"' not in text


def test_job_pages_carry_a_cursor_to_the_next(client: TestClient, tmp_path: Path) -> None:
    # given five finished jobs in the store
    from shared.jobs.store import JobStore
    from shared.schemas.jobs import JobState

    jobs = JobStore(FileObjectStore(tmp_path / "store"))
    for _ in range(5):
        record = jobs.create(kind="selftest", task_name="t", queue="default", params={})
        record.state = JobState.SUCCEEDED
        jobs.save(record)
    # when a client walks the pages of two
    seen, before, pages = [], None, 0
    while True:
        params = {"limit": 2, **({"before": before} if before else {})}
        answer = client.get("/v1/jobs", params=params)
        seen += [job["id"] for job in answer.json()]
        pages += 1
        before = answer.headers.get("x-next-cursor")
        if before is None:
            break
    # then every job came once, newest first, and the cursor stops at the end
    assert seen == sorted(seen, reverse=True)
    assert len(seen) == len(set(seen)) == 5
    assert pages == 3
    assert client.get("/v1/jobs", params={"before": "../x"}).status_code == 422
