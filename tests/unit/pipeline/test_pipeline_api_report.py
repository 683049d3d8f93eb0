"""The pipeline API over TestClient (driver off), and the HTML report with real store files."""

from __future__ import annotations

import html
import io
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from services.pipeline.api.main import create_app
from services.pipeline.config import PipelineSettings
from services.pipeline.params import PipelineRequest
from services.pipeline.stores.pipelines import PipelineRecord, StepState
from services.pipeline.usecases.report import heat_overlay, line_chart_svg, render_report
from services.pipeline.usecases.steps import plan
from shared.config import CommonSettings, PathSettings
from shared.schemas.dataset_maps import DatasetMapManifest, manifest_key
from shared.schemas.evaluation import ImageEval, PerImageEval, RunInfo
from shared.storage.filesystem import FileObjectStore


@pytest.fixture
def store(tmp_path: Path) -> FileObjectStore:
    store = FileObjectStore(tmp_path / "store")
    store.put_bytes("lines/a.png", _png(np.full((32, 48, 3), 90, np.uint8)))
    store.put_bytes("labelled/images/a.png", b"x")
    return store


@pytest.fixture
def client(tmp_path: Path, store: FileObjectStore) -> Iterator[TestClient]:
    common = CommonSettings(paths=PathSettings(home=tmp_path / "home"))
    settings = PipelineSettings(common=common, driver=False)
    with TestClient(create_app(settings, store=store)) as client:
        yield client


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "PNG")
    return buffer.getvalue()


def _body(**changes: Any) -> dict[str, Any]:
    body = {
        "name": "line-3",
        "category": "tile",
        "unlabelled_prefix": "lines/",
        "labelled": {"prefix": "labelled/", "format": "masks", "images": "."},
        "maps": "tocoad",
    }
    return {**body, **changes}


def test_create_list_get_cancel_and_resume(client: TestClient) -> None:
    # when
    created = client.post("/v1/pipelines", json=_body())
    # then
    assert created.status_code == 202, created.text
    record = created.json()
    assert record["state"] == "RUNNING"
    assert [s["name"] for s in record["steps"]][:3] == ["dataset", "tocoad_fit", "maps"]
    listed = client.get("/v1/pipelines").json()
    assert [p["id"] for p in listed] == [record["id"]]
    assert listed[0]["current_step"] in ("dataset", "tocoad_fit")
    assert client.get(f"/v1/pipelines/{record['id']}").json()["id"] == record["id"]
    canceled = client.post(f"/v1/pipelines/{record['id']}/cancel")
    assert canceled.json()["cancel_requested"] is True
    resumed = client.post(f"/v1/pipelines/{record['id']}/resume")
    assert (resumed.status_code, resumed.json()["code"]) == (409, "pipeline_not_resumable")


def test_bad_requests_get_clear_4xx(client: TestClient) -> None:
    # when / then
    unknown = client.get("/v1/pipelines/20260101T000000-deadbeef")
    assert (unknown.status_code, unknown.json()["code"]) == (404, "pipeline_not_found")
    empty = client.post("/v1/pipelines", json=_body(unlabelled_prefix="nothing/"))
    assert (empty.status_code, empty.json()["code"]) == (422, "source_empty")
    typo = client.post("/v1/pipelines", json=_body(preset="fast"))
    assert typo.status_code == 422
    extra = client.post("/v1/pipelines", json=_body(epochs=5))
    assert extra.status_code == 422
    record = client.post("/v1/pipelines", json=_body()).json()
    report = client.get(f"/v1/pipelines/{record['id']}/report")
    assert (report.status_code, report.json()["code"]) == (404, "report_not_ready")


def test_presets_are_published(client: TestClient) -> None:
    # when
    presets = client.get("/v1/presets").json()
    # then
    assert set(presets) == {"cpu-demo", "cpu", "gpu-paper"}
    assert presets["cpu-demo"]["tocoad"] == "demo"
    assert presets["gpu-paper"]["agbp"] == {}


def _finished_record(store: FileObjectStore, **changes: Any) -> PipelineRecord:
    request = PipelineRequest.model_validate(_body(**changes))
    record = PipelineRecord(id="20261201T000000-abcdef12", request=request, steps=plan(request))
    store.put_bytes("maps/tile/j1/maps/a.npy", _npy(np.linspace(0, 1, 16).reshape(4, 4)))
    manifest = DatasetMapManifest(
        category="tile", count=1, maps={"lines/a.png": "maps/tile/j1/maps/a.npy"}
    )
    store.put_bytes(manifest_key("maps/tile/j1/"), manifest.to_bytes())
    outputs: dict[str, dict[str, Any]] = {
        "maps": {"maps_prefix": "maps/tile/j1/"},
        "finetune": {
            "artifact": "line-3:j5",
            "metrics": {"map50": 0.5, "map50_95": 0.25, "per_class": {"crack": {"map50": 0.5}}},
            "history": [{"map50": 0.1}, {"map50": 0.5}],
        },
        "baseline": {
            "artifact": "line-3-scratch:j6",
            "metrics": {"map50": 0.4, "map50_95": 0.2, "per_class": {"crack": {"map50": 0.4}}},
            "history": [{"map50": 0.05}, {"map50": 0.4}],
        },
    }
    for step in record.steps:
        step.state = StepState.SUCCEEDED
        step.outputs = outputs.get(step.name, {})
    return record


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array.astype(np.float32))
    return buffer.getvalue()


def test_the_report_shows_overlays_curves_and_the_baseline(store: FileObjectStore) -> None:
    # given a finished pipeline whose maps are in the store
    record = _finished_record(store)
    # when
    page = render_report(record, store).decode()
    # then self-contained: images inline, nothing fetched from elsewhere
    assert "data:image/png;base64," in page
    assert not re.search(r"(src|href)=['\"]https?://", page)
    assert "line-3-scratch" in page
    assert "+10.0" in page  # 50.0 vs 40.0 mAP@0.5
    assert page.count("<polyline") == 2


def test_the_report_names_the_promoted_detector_and_why(store: FileObjectStore) -> None:
    # given a finished pipeline whose scratch baseline beat the AGSSP detector
    record = _finished_record(store, promote="production")
    record.step("baseline").outputs["metrics"]["map50"] = 0.6
    record.step("promote").outputs = {"stage": "production", "model": "line-3-scratch"}
    # when
    page = render_report(record, store).decode()
    # then
    assert "Promoted to production: <code>line-3-scratch:j6</code>" in page
    assert "the scratch baseline scored higher mAP@0.5 on val (60.0 against 50.0" in page


def test_the_report_says_how_the_image_gate_was_set(store: FileObjectStore) -> None:
    # given pseudo boxes whose gate the labelled defects lowered
    record = _finished_record(store)
    reason = "labelled defects: the mixture's gate (0.5) kept 40% of 50 labelled defect images"
    record.step("pseudo_boxes").outputs = {"out_prefix": "pseudo/j2/", "gate_reason": reason}
    # when
    page = render_report(record, store).decode()
    # then the reason is shown, and the defect maps have a row in the step table
    assert f"Image gate: {html.escape(reason)}" in page
    assert "<td>defect_maps</td>" in page


@pytest.mark.parametrize(
    ("checked", "expected", "absent"),
    [
        (
            {"side": "reference", "images": 18, "reference_held_out": True},
            "18 labelled defect images held out of the ToCoAD fit, which pasted 42 others",
            "may be biased",
        ),
        (
            {"side": "reference", "images": 6, "reference_held_out": False},
            "Gate check may be biased",
            "held out of the ToCoAD fit",
        ),
    ],
)
def test_the_report_says_whether_the_gate_check_was_held_out_of_the_fit(
    store: FileObjectStore, checked: dict[str, Any], expected: str, absent: str
) -> None:
    # given a fit that pasted labelled defects, and defect maps from one side of them
    record = _finished_record(store)
    record.step("pseudo_boxes").outputs = {"out_prefix": "pseudo/j2/", "gate_reason": "ok"}
    record.step("tocoad_fit").outputs = {"defect_images": {"side": "paste", "images": 42}}
    record.step("defect_maps").outputs = {"maps_prefix": "maps/j3/", "defect_images": checked}
    # when
    page = render_report(record, store).decode()
    # then
    assert expected in page
    assert absent not in page


def _put_records(store: FileObjectStore, artifact: str, hits: list[bool]) -> None:
    """One defect per image; the detector finds it (score 0.9) or fires beside it."""
    name, version = artifact.split(":")
    images = [
        ImageEval(file_name=f"v{i}.png", gt=[1], dets=[(0, 0.9, hit)]) for i, hit in enumerate(hits)
    ]
    run = RunInfo(seed=0, deterministic=True, torch_threads=2, device="cpu")
    records = PerImageEval(classes=["crack"], images=images, run=run)
    store.put_bytes(f"models/{name}/{version}/eval_per_image.json", records.to_bytes())


def test_the_report_gives_the_lift_with_its_interval_and_says_what_it_rests_on(
    store: FileObjectStore,
) -> None:
    # given 10 validation images, AGSSP finds 5 defects, scratch 4, and tiny-preset maps
    record = _finished_record(store, overrides={"tocoad_preset": "tiny"})
    _put_records(store, "line-3:j5", [True] * 5 + [False] * 5)
    _put_records(store, "line-3-scratch:j6", [True] * 4 + [False] * 6)
    # when
    page = render_report(record, store).decode()
    # then the interval, the sample, the seed count, the maps and both caveats are stated
    assert re.search(r"95 % interval [-+]\d+\.\d to [-+]\d+\.\d", page)
    assert "10 validation images" in page
    assert "1 seed (0)" in page
    assert "1000 resamples" in page
    assert "ToCoAD preset &#x27;tiny&#x27;" in page
    assert "not distinguishable from the baseline at this size" in page
    assert "not meant to be meaningful" in page
    assert "class='better'" not in page  # no green headline when the interval includes zero
    assert "seed 0, 2 torch thread(s), deterministic algorithms, cpu" in page


def test_the_cpu_demo_report_says_its_maps_are_weak(store: FileObjectStore) -> None:
    # given a cpu-demo run with the preset's own ToCoAD schedule and a clear lift
    record = _finished_record(store)
    _put_records(store, "line-3:j5", [True] * 30)
    _put_records(store, "line-3-scratch:j6", [False] * 30)
    # when
    page = render_report(record, store).decode()
    # then the demo schedule is named and its weakness stated, but it is not called meaningless
    assert "ToCoAD preset &#x27;demo&#x27;" in page
    assert "a short schedule whose maps are weak" in page
    assert "not meant to be meaningful" not in page


def test_the_headline_is_green_only_when_the_interval_is_above_zero(
    store: FileObjectStore,
) -> None:
    # given a clear lift on 30 images, with maps from the cpu preset
    record = _finished_record(store, overrides={"tocoad_preset": "cpu"})
    _put_records(store, "line-3:j5", [True] * 30)
    _put_records(store, "line-3-scratch:j6", [False] * 30)
    # when
    page = render_report(record, store).decode()
    # then
    assert "<span class='better'>+100.0 mAP@0.5 points, 95 % interval +100.0 to +100.0" in page
    assert "not distinguishable" not in page
    assert "not meant to be meaningful" not in page


def test_without_per_image_records_the_report_claims_no_interval(store: FileObjectStore) -> None:
    # given detectors published before the records existed
    record = _finished_record(store)
    # when
    page = render_report(record, store).decode()
    # then
    assert "no interval (no per-image validation records of the AGSSP and scratch" in page
    assert "class='better'" not in page
    assert "a short schedule whose maps are weak" in page  # cpu-demo's ToCoAD 'demo' maps


def test_heat_overlay_and_chart_shapes() -> None:
    # given a dark image and a map hot in one corner
    image = np.zeros((20, 30, 3), np.uint8)
    anomaly = np.zeros((5, 5), np.float32)
    anomaly[4, 4] = 1.0
    # when
    overlay = heat_overlay(image, anomaly, alpha=1.0)
    # then the image size is kept; the hot corner is red, the cold one blue
    assert overlay.shape == (20, 30, 3)
    assert overlay[-1, -1, 0] > 200
    assert overlay[-1, -1, 2] < 50
    assert overlay[0, 0, 2] > 100
    assert overlay[0, 0, 0] < 50
    svg = line_chart_svg({"a": [(1, 0.1), (2, 0.2)], "b": []}, "epoch", "mAP")
    assert svg.startswith("<svg")
    assert svg.count("<polyline") == 2
    # points sit at their x: epochs 5 and 10 of 10 (a finetune validating every 5th epoch)
    svg = line_chart_svg({"a": [(5, 0.5), (10, 1.0)]}, "epoch", "mAP", width=250)
    assert "points='140.0,115.0 240.0,10.0'" in svg


def test_uploads_land_under_uploads_and_results_can_be_read_back(
    client: TestClient, store: FileObjectStore
) -> None:
    # when a client uploads an image and reads it back
    put = client.put(
        "/v1/uploads/line-3/a.png", content=b"\x89PNG-bytes", headers={"content-type": "image/png"}
    )
    # then
    assert put.status_code == 201, put.text
    assert put.json() == {"key": "uploads/line-3/a.png", "size": 10}
    assert store.get_bytes("uploads/line-3/a.png") == b"\x89PNG-bytes"
    got = client.get("/v1/objects/uploads/line-3/a.png")
    assert got.content == b"\x89PNG-bytes"
    assert got.headers["content-type"] == "image/png"
    listed = client.get("/v1/objects", params={"prefix": "uploads/line-3"}).json()
    assert listed["keys"] == [{"key": "uploads/line-3/a.png", "size": 10}]


@pytest.mark.parametrize(
    ("name", "body"),
    [("page.html", b"<script>alert(1)</script>"), ("logo.svg", b"<svg onload='x()'/>"),
     ("scan_01.png", b"\x89PNG")],
)  # fmt: skip
def test_stored_objects_are_downloads_that_the_browser_may_not_retype(
    client: TestClient, name: str, body: bytes
) -> None:
    # given an upload that a browser would run as a page on the API's origin
    assert client.put(f"/v1/uploads/x/{name}", content=body).status_code == 201
    # when it is read back
    got = client.get(f"/v1/objects/uploads/x/{name}")
    # then it comes as an attachment named after the file, never sniffed
    assert got.content == body
    assert got.headers["x-content-type-options"] == "nosniff"
    disposition = got.headers["content-disposition"]
    assert disposition.startswith("attachment; filename=")
    assert quote(name) in disposition
    assert "content-security-policy" not in got.headers


def test_a_report_is_shown_inline_but_sandboxed(client: TestClient, store: FileObjectStore) -> None:
    # given a pipeline report where the pipeline store writes it
    store.put_bytes("pipelines/p1/report.html", b"<html><body>report</body></html>")
    # when it is read as an object
    got = client.get("/v1/objects/pipelines/p1/report.html")
    # then it renders inline, without script or our origin
    assert got.headers["content-security-policy"] == "sandbox"
    assert got.headers["x-content-type-options"] == "nosniff"
    assert "content-disposition" not in got.headers


def test_upload_and_read_errors_are_clear(client: TestClient) -> None:
    # when / then
    traversal = client.put("/v1/uploads/a/../../jobs/x.json", content=b"x")
    assert traversal.status_code in (404, 422)
    assert client.put("/v1/uploads/a.png", content=b"").json()["code"] == "empty_body"
    missing = client.get("/v1/objects/models/none/file.bin")
    assert missing.status_code == 404
    assert client.get("/v1/objects", params={"prefix": "/"}).status_code == 422


def test_pipeline_routes_need_a_train_key(tmp_path: Path, store: FileObjectStore) -> None:
    # given keys on: a camera key (inspect) and a trainer key
    from shared.config import AuthSettings
    from shared.http.auth import create_key

    camera, camera_entry = create_key("camera", ["inspect"])
    trainer, trainer_entry = create_key("trainer", ["train"])
    common = CommonSettings(
        paths=PathSettings(home=tmp_path / "home"),
        auth=AuthSettings(api_keys=[camera_entry, trainer_entry]),
    )
    app = create_app(PipelineSettings(common=common, driver=False), store=store)
    with TestClient(app) as client:
        # when / then
        for key, expected in ((camera, 403), (trainer, 201)):
            put = client.put("/v1/uploads/a.png", content=b"x", headers={"X-API-Key": key})
            assert put.status_code == expected
        listed = client.get("/v1/pipelines", headers={"X-API-Key": camera})
        assert listed.status_code == 403
        for key in (camera, trainer):  # presets are open: the key that starts pipelines reads them
            assert client.get("/v1/presets", headers={"X-API-Key": key}).status_code == 200
        assert client.get("/v1/presets").status_code == 200
        assert client.post("/v1/pipelines", json=_body()).status_code == 401
