"""Gallery routes of the finetune API: pages (a split, a pool, a saved evaluation),
thumbnails and maps over HTTP; every bad id a 404 with its code, every bad parameter a 422,
and the train scope."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from services.finetune.api.main import create_app
from services.finetune.config import FinetuneSettings
from shared.config import AuthSettings, CommonSettings, PathSettings, StorageSettings
from shared.http.auth import create_key
from shared.storage.filesystem import FileObjectStore
from tests.unit.finetune.gallery_support import (
    BUSY_IMAGE,
    DATASET,
    DETECTOR,
    import_plates,
    publish_detector,
    save_evaluation,
    stage_pool,
)

PAGE = f"/v1/galleries/datasets/{DATASET}/v1/train"
IMAGE = f"datasets/{DATASET}/v1/images/{BUSY_IMAGE}"
EVALUATION = f"/v1/galleries/evaluations/{DETECTOR.name}/{DETECTOR.version}"


@pytest.fixture(scope="module")
def staged(tmp_path_factory: pytest.TempPathFactory) -> tuple[FileObjectStore, str, Path]:
    tmp = tmp_path_factory.mktemp("galleries")
    store = FileObjectStore(tmp / "store")
    import_plates(store, tmp)
    publish_detector(store)
    save_evaluation(store, "val", "2026-12-01T10:00:00+00:00")  # val: p_03, p_07, p_08
    return store, stage_pool(store, tmp), tmp


def _client(store: FileObjectStore, home: Path, keys: list[str]) -> TestClient:
    common = CommonSettings(
        paths=PathSettings(home=home),
        storage=StorageSettings(backend="file"),
        auth=AuthSettings(api_keys=keys),
    )
    return TestClient(create_app(FinetuneSettings(common=common), store=store))


@pytest.fixture(scope="module")
def client(staged: tuple[FileObjectStore, str, Path]) -> Iterator[TestClient]:
    store, _, tmp = staged
    with _client(store, tmp / "home", []) as test_client:
        yield test_client


def test_a_page_of_a_split_lists_boxes_and_pages_on(client: TestClient) -> None:
    answer = client.get(PAGE, params={"limit": 4})
    assert answer.status_code == 200, answer.text
    page = answer.json()
    assert (page["kind"], page["limit"], page["next_offset"], len(page["items"])) == (
        "dataset",
        4,
        4,
        4,
    )
    busy = next(i for i in page["items"] if i["name"] == BUSY_IMAGE)
    assert sorted(b["label"] for b in busy["truth"]) == ["pit", "scratch", "scratch"]
    pits = client.get(PAGE, params={"class_name": "pit"}).json()
    assert all(any(b["label"] == "pit" for b in i["truth"]) for i in pits["items"])


def test_a_pool_page_and_its_listing(
    client: TestClient, staged: tuple[FileObjectStore, str, Path]
) -> None:
    _, pool, _ = staged
    listed = client.get("/v1/galleries/pools").json()["items"]
    assert [p["prefix"] for p in listed] == [pool]
    page = client.get(
        "/v1/galleries/prefix", params={"prefix": pool, "min_score": 1, "sort": "score"}
    ).json()
    assert [i["name"] for i in page["items"]] == ["a.png", "c.png"]
    assert page["layers"] == ["pseudo", "map"]
    grid = client.get(f"/v1/galleries/maps/{page['items'][0]['map_key']}").json()
    assert (grid["shape"], grid["encoding"], grid["max"]) == ([10, 10], "base64", 2.0)


def test_a_page_can_bring_its_thumbnails_inlined(client: TestClient) -> None:
    page = client.get(PAGE, params={"limit": 3, "thumbnails": 128}).json()
    for item in page["items"]:
        head, _, body = item["thumbnail"].partition(",")
        assert head == "data:image/jpeg;base64"
        assert base64.b64decode(body)[:3] == b"\xff\xd8\xff"
    assert all(
        i["thumbnail"] is None for i in client.get(PAGE, params={"limit": 3}).json()["items"]
    )


def test_an_evaluation_page_shows_truth_and_predictions_and_filters_by_error(
    client: TestClient,
) -> None:
    # when: the whole evaluation on val (the default split), then its misses and false alarms
    page = client.get(EVALUATION).json()
    missed = client.get(EVALUATION, params={"dataset": DATASET, "has_miss": "true"}).json()
    alarms = client.get(EVALUATION, params={"has_false_alarm": "true", "thumbnails": 128}).json()

    # then
    assert (page["kind"], page["layers"], page["conf"]) == ("evaluation", ["truth", "pred"], 0.25)
    assert page["title"] == f"{DETECTOR} on {DATASET}:v1 · val (conf 0.25)"
    assert [i["name"] for i in page["items"]] == ["p_03.png", "p_07.png", "p_08.png"]
    (miss,) = missed["items"]
    assert (miss["name"], miss["misses"], miss["predicted"]) == ("p_07.png", 1, [])
    assert [b["found"] for b in miss["truth"]] == [False]
    (alarm,) = alarms["items"]
    assert (alarm["name"], alarm["misses"], alarm["false_alarms"]) == ("p_08.png", 0, 1)
    assert sorted((b["label"], b["tp"]) for b in alarm["predicted"]) == [
        ("pit", False),
        ("scratch", True),
    ]
    assert alarm["thumbnail"].startswith("data:image/jpeg;base64,")


def test_a_thumbnail_is_a_cacheable_jpeg(client: TestClient) -> None:
    answer = client.get(f"/v1/galleries/thumbnails/{IMAGE}", params={"side": 128})
    assert answer.status_code == 200
    assert answer.headers["content-type"] == "image/jpeg"
    assert "max-age" in answer.headers["cache-control"]
    assert answer.content[:3] == b"\xff\xd8\xff"


@pytest.mark.parametrize(
    ("path", "params", "code"),
    [
        ("/v1/galleries/datasets/nope/latest/train", {}, "dataset_not_found"),
        (f"/v1/galleries/datasets/{DATASET}/v9/train", {}, "dataset_not_found"),
        (f"/v1/galleries/datasets/{DATASET}/v1/test", {}, "split_not_found"),
        ("/v1/galleries/prefix", {"prefix": "nothing/here/"}, "pool_not_found"),
        ("/v1/galleries/thumbnails/uploads/none.png", {}, "image_not_found"),
        ("/v1/galleries/maps/maps/none/m.npy", {}, "map_not_found"),
        ("/v1/galleries/evaluations/nope/v1", {}, "artifact_not_found"),
        ("/v1/galleries/evaluations/nope/latest", {}, "model_not_found"),
        (EVALUATION, {"split": "train"}, "evaluation_not_found"),
        (EVALUATION, {"dataset": "nope"}, "dataset_not_found"),
    ],
)
def test_unknown_ids_are_404_with_a_code(
    client: TestClient, path: str, params: dict[str, str], code: str
) -> None:
    answer = client.get(path, params=params)
    assert (answer.status_code, answer.json()["code"]) == (404, code), answer.text


@pytest.mark.parametrize(
    ("path", "params", "code"),
    [
        (PAGE, {"limit": 0}, "validation_error"),
        (PAGE, {"limit": 201}, "validation_error"),
        (PAGE, {"offset": -1}, "validation_error"),
        (PAGE, {"sort": "size"}, "validation_error"),
        (PAGE, {"class_name": "dent"}, "unknown_class"),
        (PAGE, {"min_score": 0.5}, "no_scores"),
        (PAGE, {"has_miss": "true"}, "no_evaluation"),
        ("/v1/galleries/prefix", {"prefix": "uploads/", "has_false_alarm": 0}, "no_evaluation"),
        (EVALUATION, {"has_miss": "maybe"}, "validation_error"),
        (EVALUATION, {"split": "../val"}, "validation_error"),
        (EVALUATION, {"class_name": "dent"}, "unknown_class"),
        (EVALUATION, {"sort": "score"}, "no_scores"),
        ("/v1/galleries/evaluations/bad%20name/v1", {}, "invalid_model_ref"),
        (f"/v1/galleries/datasets/{DATASET}/v%201/train", {}, "invalid_dataset_ref"),
        ("/v1/galleries/prefix", {"prefix": "../x/"}, "invalid_key"),
        ("/v1/galleries/prefix", {"prefix": "/"}, "invalid_prefix"),
        (f"/v1/galleries/thumbnails/{IMAGE}", {"side": 300}, "invalid_side"),
        (PAGE, {"thumbnails": 1024}, "invalid_side"),
        ("/v1/galleries/thumbnails/datasets/x/manifest.json", {}, "not_an_image"),
        ("/v1/galleries/maps/maps/x/m.png", {}, "not_a_map"),
    ],
)
def test_bad_parameters_are_422_with_a_code(
    client: TestClient, path: str, params: dict[str, str | int | float], code: str
) -> None:
    answer = client.get(path, params=params)
    assert (answer.status_code, answer.json()["code"]) == (422, code), answer.text


def test_galleries_need_the_train_scope(staged: tuple[FileObjectStore, str, Path]) -> None:
    store, _, tmp = staged
    inspect_key, inspect_entry = create_key("viewer", ["inspect"])
    train_key, train_entry = create_key("trainer", ["train"])
    with _client(store, tmp / "home-auth", [inspect_entry, train_entry]) as client:
        assert client.get(PAGE).status_code == 401
        assert client.get(PAGE, headers={"X-API-Key": inspect_key}).status_code == 403
        assert client.get(PAGE, headers={"X-API-Key": train_key}).status_code == 200
