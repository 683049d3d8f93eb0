"""The pipeline's plan, hand-offs between steps, failures, cancel, resume and the driver lease."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from services.pipeline.params import PipelineRequest
from services.pipeline.stores.pipelines import (
    PipelineRecord,
    PipelineState,
    PipelineStore,
    StepState,
)
from services.pipeline.usecases.clients import ServiceClient
from services.pipeline.usecases.driver import PipelineDriver
from services.pipeline.usecases.pipelines import (
    advance,
    cancel_pipeline,
    create_pipeline,
    resume_pipeline,
)
from services.pipeline.usecases.steps import plan
from shared.errors import ConflictError, InvalidInputError
from shared.schemas.jobs import utcnow
from shared.storage.filesystem import FileObjectStore
from tests.unit.pipeline.fake_suite import URLS, FakeSuite


def _request(**changes: Any) -> PipelineRequest:
    body: dict[str, Any] = {
        "name": "steel-det",
        "category": "steel",
        "category_spec": {"map": "steel surface", "good": ["{}"], "defect": ["{} scratched"]},
        "unlabelled_prefix": "lines/steel/",
        "labelled": {"prefix": "labelled/", "format": "yolo"},
        "promote": "production",
        "seed": 7,
    }
    return PipelineRequest.model_validate({**body, **changes})


@pytest.fixture
def pipelines(tmp_path: Path) -> PipelineStore:
    store = FileObjectStore(tmp_path / "store")
    store.put_bytes("lines/steel/a.png", b"x")
    store.put_bytes("labelled/images/a.png", b"x")
    return PipelineStore(store)


def _run(
    record: PipelineRecord, pipelines: PipelineStore, suite: FakeSuite, ticks: int = 60
) -> PipelineRecord:
    client = ServiceClient(URLS, transport=suite.transport())
    for _ in range(ticks):
        if record.state is not PipelineState.RUNNING:
            break
        record.cancel_requested = pipelines.cancel_requested(record.id)
        record = advance(record, client, pipelines.save, lambda r: f"pipelines/{r.id}/report")
    return record


def test_plan_follows_the_map_method_and_options() -> None:
    # when / then
    auto = [s.name for s in plan(_request())]
    assert auto == [
        "method", "category", "dataset", "tocoad_fit", "maps", "defect_maps", "pseudo_boxes",
        "agbp", "agdp", "finetune", "baseline", "promote", "report",
    ]  # fmt: skip
    ungated = [s.name for s in plan(_request(gate="off"))]
    assert "defect_maps" not in ungated
    provided = plan(_request(maps="provided", maps_prefix="m/", baseline=False, promote=None))
    assert [s.name for s in provided][:4] == ["category", "dataset", "pseudo_boxes", "agbp"]
    assert "baseline" not in [s.name for s in provided]
    kead = [s.name for s in plan(_request(maps="kead", category_spec=None))]
    assert kead[:2] == ["dataset", "maps"]


def test_a_whole_pipeline_hands_each_output_to_the_next_step(pipelines: PipelineStore) -> None:
    # given the services with no CLIP weights (auto -> ToCoAD)
    suite = FakeSuite()
    record = create_pipeline(pipelines, _request())
    # when
    done = _run(record, pipelines, suite)
    # then every step succeeded and the saved record says so
    assert done.state is PipelineState.SUCCEEDED, done.error
    assert pipelines.get(done.id).state is PipelineState.SUCCEEDED
    assert done.step("method").outputs == {"method": "tocoad"}
    assert suite.bodies("/v1/categories/steel")[0]["method"] == "tocoad"
    fit = suite.bodies("/v1/tocoad-fits")[0]
    assert fit["normal_prefix"] == "lines/steel/"
    # the fit learns from the labelled set, which is imported before it
    labelled = done.step("dataset").outputs["dataset"]
    split = _request().labelled.split
    assert fit["defects"] == {"dataset": labelled, "split": split, "side": "paste"}
    maps_job = done.step("maps").job_id
    assert suite.bodies("/v1/pseudo-label-jobs")[0]["gate"] == "auto"  # boxes where maps say so
    [source] = suite.bodies("/v1/pretrain-jobs")[0]["sources"]
    assert source["maps_prefix"] == f"maps/steel/{maps_job}/"
    agdp = suite.bodies("/v1/agdp-jobs")[0]
    assert agdp["labels_prefix"] == f"pseudo/{done.step('pseudo_boxes').job_id}/"
    assert agdp["backbone_artifact"] == done.step("agbp").outputs["artifact"]
    tuned, scratch = suite.bodies("/v1/finetune-jobs")
    assert tuned["init"] == {"kind": "agdp", "artifact": done.step("agdp").outputs["artifact"]}
    assert scratch["init"] == {"kind": "scratch"}
    assert scratch["model_name"] == "steel-det-scratch"
    # the baseline trains on the same stored dataset version with the same seed and recipe
    assert tuned["dataset"] == scratch["dataset"] == done.step("dataset").outputs["dataset"]
    assert tuned["config"] == scratch["config"]
    assert tuned["config"]["seed"] == 7
    promoted = done.step("promote").outputs
    assert promoted["stage"] == "production"
    assert f"{promoted['model']}:{promoted['version']}" == done.step("finetune").outputs["artifact"]
    assert done.report_key == f"pipelines/{done.id}/report"
    assert done.progress == 100.0


@pytest.mark.parametrize(
    ("rule", "agssp_map50", "promoted_step"),
    [
        ("better", 0.42, "finetune"),  # AGSSP ahead of scratch (0.30)
        ("better", 0.30, "finetune"),  # a tie keeps the AGSSP detector
        ("better", 0.21, "baseline"),  # scratch ahead: the control is served
        ("agssp", 0.21, "finetune"),  # the rule asks for the AGSSP detector whatever its score
    ],
)
def test_promote_serves_the_detector_its_rule_picks(
    pipelines: PipelineStore, rule: str, agssp_map50: float, promoted_step: str
) -> None:
    # given AGSSP and scratch detectors with these mAP@0.5 on val
    suite = FakeSuite(map50={"agdp": agssp_map50, "scratch": 0.30})
    # when
    done = _run(create_pipeline(pipelines, _request(promote_rule=rule)), pipelines, suite)
    # then
    assert done.state is PipelineState.SUCCEEDED
    promoted = done.step("promote").outputs
    chosen = done.step(promoted_step).outputs["artifact"]
    assert f"{promoted['model']}:{promoted['version']}" == chosen
    [call] = [c for c in suite.calls if c[2].endswith("/promote")]
    assert call[2] == "/v1/models/{}/versions/{}/promote".format(*chosen.split(":"))


def test_without_a_baseline_promote_serves_the_agssp_detector(pipelines: PipelineStore) -> None:
    suite = FakeSuite(map50={"agdp": 0.01, "scratch": 0.9})
    done = _run(create_pipeline(pipelines, _request(baseline=False)), pipelines, suite)
    promoted = done.step("promote").outputs
    assert f"{promoted['model']}:{promoted['version']}" == done.step("finetune").outputs["artifact"]


def test_the_pseudo_label_gate_is_checked_by_maps_of_the_labelled_defects(
    pipelines: PipelineStore,
) -> None:
    # when
    done = _run(create_pipeline(pipelines, _request()), pipelines, suite := FakeSuite())
    # then a second map job covers the labelled set's defect images held out of the fit (the
    # fit pastes the other side), with the pool's method
    assert done.state is PipelineState.SUCCEEDED, done.error
    pool, defects = suite.bodies("/v1/anomaly-map-jobs")
    labelled = done.step("dataset").outputs["dataset"]
    split = _request().labelled.split
    assert defects == {
        "category": "steel",
        "defects": {"dataset": labelled, "split": split, "side": "reference"},
        "mode": pool["mode"],
    }
    assert suite.bodies("/v1/tocoad-fits")[0]["defects"]["side"] == "paste"
    # and the pseudo-label job reads their scores as its gate's reference
    [boxes] = suite.bodies("/v1/pseudo-label-jobs")
    reference = done.step("defect_maps").outputs["maps_prefix"]
    assert reference == f"maps/steel/{done.step('defect_maps').job_id}/"
    assert (boxes["gate"], boxes["reference_maps_prefix"]) == ("auto", reference)
    assert boxes["maps_prefix"] == done.step("maps").outputs["maps_prefix"]


@pytest.mark.parametrize(
    ("changes", "fit_side", "check_side"),
    [
        ({"gate": "off"}, "all", None),  # no gate check: the fit pastes every defect image
        ({"labelled_defects": False}, None, "all"),  # the fit pastes none: check on all
        ({"maps": "kead", "category_spec": None}, None, "all"),  # no fit at all
    ],
)
def test_the_labelled_defects_are_divided_only_when_the_fit_and_the_check_both_use_them(
    pipelines: PipelineStore,
    changes: dict[str, Any],
    fit_side: str | None,
    check_side: str | None,
) -> None:
    # when
    suite = FakeSuite(kead_ready=changes.get("maps") == "kead")
    done = _run(create_pipeline(pipelines, _request(**changes)), pipelines, suite)
    # then
    assert done.state is PipelineState.SUCCEEDED, done.error
    fits = suite.bodies("/v1/tocoad-fits")
    assert [f.get("defects", {}).get("side") for f in fits if "defects" in f] == (
        [fit_side] if fit_side else []
    )
    checks = [b["defects"]["side"] for b in suite.bodies("/v1/anomaly-map-jobs") if "defects" in b]
    assert checks == ([check_side] if check_side else [])


def test_the_sides_each_job_used_reach_the_record(
    pipelines: PipelineStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.unit.pipeline import fake_suite

    # given jobs that report which side of the labelled defects they used
    results = fake_suite._results

    def with_sides(job: Any) -> dict[str, Any]:
        out = results(job)
        side = (job.body.get("defects") or {}).get("side")
        if side is not None:
            out.setdefault("outputs", {})["defect_images"] = {"side": side, "images": 3}
        return out

    monkeypatch.setattr(fake_suite, "_results", with_sides)
    # when
    done = _run(create_pipeline(pipelines, _request()), pipelines, FakeSuite())
    # then
    assert done.state is PipelineState.SUCCEEDED, done.error
    assert done.step("tocoad_fit").outputs["defect_images"]["side"] == "paste"
    assert done.step("defect_maps").outputs["defect_images"]["side"] == "reference"
    assert "maps_prefix" in done.step("defect_maps").outputs


def test_a_labelled_set_without_boxes_or_an_ungated_pipeline_sends_no_reference(
    pipelines: PipelineStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.unit.pipeline import fake_suite

    # given a labelled import that reports no box
    results = fake_suite._results

    def no_boxes(job: Any) -> dict[str, Any]:
        out = results(job)
        if job.path == "/v1/datasets":
            out["outputs"]["boxes"] = 0
        return out

    monkeypatch.setattr(fake_suite, "_results", no_boxes)
    # when
    done = _run(create_pipeline(pipelines, _request()), pipelines, suite := FakeSuite())
    ungated = _run(create_pipeline(pipelines, _request(gate="off")), pipelines, suite)
    # then
    assert done.state is ungated.state is PipelineState.SUCCEEDED
    assert done.step("defect_maps").state is StepState.SKIPPED
    assert len(suite.bodies("/v1/anomaly-map-jobs")) == 2  # one pool map job per pipeline
    assert all("reference_maps_prefix" not in b for b in suite.bodies("/v1/pseudo-label-jobs"))


def test_the_detector_family_decides_the_agbp_backbone_and_every_detector_config(
    pipelines: PipelineStore,
) -> None:
    # given a pipeline asking for the second detector family
    suite = FakeSuite()
    record = create_pipeline(pipelines, _request(detector="faster-rcnn"))
    # when
    done = _run(record, pipelines, suite)
    # then AGBP pretrains the ResNet it builds on, and AGDP, AGSSP and scratch train that family
    assert done.state is PipelineState.SUCCEEDED, done.error
    assert suite.bodies("/v1/pretrain-jobs")[0]["config"]["backbone"] == "resnet50"
    assert suite.bodies("/v1/agdp-jobs")[0]["config"]["family"] == "faster-rcnn"
    tuned, scratch = suite.bodies("/v1/finetune-jobs")
    assert tuned["config"]["family"] == scratch["config"]["family"] == "faster-rcnn"


def test_the_default_detector_keeps_todays_request_bodies(pipelines: PipelineStore) -> None:
    suite = FakeSuite()
    done = _run(create_pipeline(pipelines, _request(scale="s")), pipelines, suite)
    assert suite.bodies("/v1/pretrain-jobs")[0]["config"]["backbone"] == "yolov8s"
    assert "family" not in suite.bodies("/v1/agdp-jobs")[0]["config"]
    assert done.state is PipelineState.SUCCEEDED, done.error


def test_an_unknown_detector_family_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown detector family"):
        _request(detector="no-such-detector")


def test_kead_is_chosen_when_its_weights_are_ready(pipelines: PipelineStore) -> None:
    # given CLIP loaded in the anomaly-map service
    suite = FakeSuite(kead_ready=True)
    # when
    done = _run(create_pipeline(pipelines, _request()), pipelines, suite)
    # then no ToCoAD fit, KeAD maps
    assert done.step("tocoad_fit").state is StepState.SKIPPED
    assert suite.bodies("/v1/tocoad-fits") == []
    assert suite.bodies("/v1/anomaly-map-jobs")[0]["mode"] == "kead"


def test_a_service_down_is_waited_for_not_failed(pipelines: PipelineStore) -> None:
    # given the pretrain service unreachable
    suite = FakeSuite(down={"pretrain"})
    record = _run(create_pipeline(pipelines, _request()), pipelines, suite, ticks=20)
    # then the pipeline waits at pseudo boxes, still running
    assert record.state is PipelineState.RUNNING
    step = record.step("pseudo_boxes")
    assert step.state is StepState.PENDING
    assert "pretrain unreachable" in step.message
    # when it comes back, the pipeline goes on to the end
    suite.down.clear()
    assert _run(record, pipelines, suite).state is PipelineState.SUCCEEDED


def test_a_refused_request_fails_with_the_services_code_and_resumes_there(
    pipelines: PipelineStore,
) -> None:
    # given the pretrain service refusing the AGBP config
    suite = FakeSuite(refuse={"/v1/pretrain-jobs": "batch_size 64 > 12 images"})
    record = _run(create_pipeline(pipelines, _request()), pipelines, suite)
    # then
    assert record.state is PipelineState.FAILED
    step = record.step("agbp")
    assert (step.state, step.error_code) == (StepState.FAILED, "invalid_config")
    assert "batch_size 64 > 12 images" in (record.error or "")
    # when the cause is fixed and the pipeline resumed
    suite.refuse.clear()
    resumed = resume_pipeline(pipelines, record.id)
    done = _run(resumed, pipelines, suite)
    # then it restarts at AGBP: the earlier steps ran once
    assert done.state is PipelineState.SUCCEEDED
    assert len(suite.bodies("/v1/anomaly-map-jobs")) == 2  # the pool's and the defects' maps
    assert len(suite.bodies("/v1/pretrain-jobs")) == 2
    assert done.step("agbp").attempts == 1


def test_a_failed_job_fails_the_pipeline_and_resume_submits_a_new_job(
    pipelines: PipelineStore,
) -> None:
    # given the AGDP job failing in the worker
    suite = FakeSuite(fail={"/v1/agdp-jobs": "out of memory"})
    record = _run(create_pipeline(pipelines, _request()), pipelines, suite)
    first = record.step("agdp").job_id
    assert record.state is PipelineState.FAILED
    assert record.step("agdp").error_code == "train_failed"
    # when resumed after the fix
    suite.fail.clear()
    done = _run(resume_pipeline(pipelines, record.id), pipelines, suite)
    # then
    assert done.state is PipelineState.SUCCEEDED
    assert done.step("agdp").job_id != first
    with pytest.raises(ConflictError, match="only FAILED or CANCELED"):
        resume_pipeline(pipelines, done.id)


def test_cancel_stops_the_running_job_and_the_pipeline(pipelines: PipelineStore) -> None:
    # given a pipeline whose first job (the labelled import) is running
    suite = FakeSuite(polls=1000)
    record = _run(create_pipeline(pipelines, _request()), pipelines, suite, ticks=5)
    running = record.current
    assert running is not None
    assert running.name == "dataset"
    assert running.job_id
    # when
    cancel_pipeline(pipelines, record.id)
    done = _run(record, pipelines, suite, ticks=2)
    # then
    assert done.state is PipelineState.CANCELED
    assert suite.canceled == [running.job_id]
    assert done.step("dataset").state is StepState.CANCELED
    assert suite.bodies("/v1/tocoad-fits") == []
    assert suite.bodies("/v1/anomaly-map-jobs") == []


def test_submission_checks_what_it_can(pipelines: PipelineStore) -> None:
    # when / then
    with pytest.raises(InvalidInputError, match="nothing is stored under 'empty/'"):
        create_pipeline(pipelines, _request(unlabelled_prefix="empty/"))
    with pytest.raises(InvalidInputError, match="maps_prefix"):
        create_pipeline(pipelines, _request(maps="provided"))
    with pytest.raises(ValueError, match="pattern"):
        _request(name="Bad Name")


def test_the_driver_skips_a_pipeline_another_driver_holds(pipelines: PipelineStore) -> None:
    # given a pipeline leased by a live driver elsewhere
    suite = FakeSuite()
    record = create_pipeline(pipelines, _request())
    record.driver, record.driver_heartbeat = "other", utcnow()
    pipelines.save(record)
    client = ServiceClient(URLS, transport=suite.transport())
    driver = PipelineDriver(pipelines, client, lease_ttl_s=30, name="me")
    # when / then: nothing happens while the lease is fresh
    assert driver.tick() == 0
    assert suite.calls == []
    # a stale lease is taken over
    record = pipelines.get(record.id)
    record.driver_heartbeat = utcnow() - timedelta(seconds=31)
    pipelines.store.put_bytes(pipelines.key(record.id), record.model_dump_json().encode())
    assert driver.tick() == 1
    assert pipelines.get(record.id).driver == "me"
    assert suite.calls, "the new driver advanced the pipeline"


def test_the_driver_writes_the_report_at_the_end(pipelines: PipelineStore) -> None:
    # given
    suite = FakeSuite(polls=1)
    client = ServiceClient(URLS, transport=suite.transport())
    driver = PipelineDriver(pipelines, client, name="me")
    record = create_pipeline(pipelines, _request())
    # when
    for _ in range(40):
        driver.tick()
    # then
    done = pipelines.get(record.id)
    assert done.state is PipelineState.SUCCEEDED
    html = pipelines.report(record.id).decode()
    assert "steel-det-scratch" in html
    assert "42.0" in html
    assert "30.0" in html
    assert "+12.0" in html


def test_auto_without_readiness_details_fails_instead_of_guessing(
    pipelines: PipelineStore,
) -> None:
    # given an anomaly-map service that hides its per-method readiness (keys on, none sent)
    suite = FakeSuite(hide_details=True)
    # when
    record = _run(create_pipeline(pipelines, _request()), pipelines, suite)
    # then
    assert record.state is PipelineState.FAILED
    assert record.step("method").error_code == "method_unknown"
    assert suite.bodies("/v1/tocoad-fits") == []


def test_a_stored_dataset_with_named_splits_skips_the_import(pipelines: PipelineStore) -> None:
    # given a labelled set already stored, trained on its mini split, validated on val
    labelled = {"dataset": "mt:20261201T000000-aaaaaaaa", "split": "mini-10", "val_split": "val"}
    suite = FakeSuite()
    # when
    done = _run(create_pipeline(pipelines, _request(labelled=labelled)), pipelines, suite)
    # then
    assert done.state is PipelineState.SUCCEEDED, done.error
    assert done.step("dataset").state is StepState.SKIPPED
    assert suite.bodies("/v1/datasets") == []
    for body in suite.bodies("/v1/finetune-jobs"):
        assert (body["dataset"], body["split"], body["val_split"]) == (
            "mt:20261201T000000-aaaaaaaa",
            "mini-10",
            "val",
        )
    with pytest.raises(ValueError, match="exactly one of"):
        _request(labelled={"format": "yolo"})


def test_the_report_is_rendered_from_the_finished_record(pipelines: PipelineStore) -> None:
    # given a reporter that keeps what it was shown
    seen: list[PipelineRecord] = []

    def reporter(record: PipelineRecord) -> str:
        seen.append(record)
        return "key"

    client = ServiceClient(URLS, transport=FakeSuite(polls=1).transport())
    record = create_pipeline(pipelines, _request(baseline=False, promote=None))
    # when
    for _ in range(40):
        record = advance(record, client, pipelines.save, reporter)
    # then the report saw the pipeline done, its own step included
    assert record.state is PipelineState.SUCCEEDED
    [shown] = seen
    assert shown.state is PipelineState.SUCCEEDED
    assert shown.step("report").state is StepState.SUCCEEDED
