"""``POST /v1/review-exports`` and ``GET /v1/review-exports/{job_id}/zip``: checked before
queuing (4xx and nothing sent), 409 until the job has stored its zip, then the zip streamed
as an attachment."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from services.finetune.usecases.review_export_jobs import run_review_export_job
from shared.jobs.context import JobContext
from shared.jobs.runner import RunnerOptions, run_job
from shared.jobs.store import JobStore
from shared.schemas.jobs import JobRecord, JobState, Queue, TaskName
from tests.unit.finetune.conftest import MakeDataset, stage_pseudo_labelled
from tests.unit.finetune.review_support import World, evaluated_world, stage_with_manifest

PREDICTIONS = {"source": "predictions", "model": "det", "split": "val", "format": "coco"}


@pytest.fixture
def world(tmp_path: Path, make_dataset: MakeDataset) -> Iterator[World]:
    with evaluated_world(tmp_path, make_dataset) as built:
        yield built


def _post(world: World, body: dict[str, Any]) -> Any:
    return world.http.post("/v1/review-exports", json=body)


def _run(world: World, job_id: str) -> JobRecord:
    def handler(ctx: JobContext) -> list[str]:
        return run_review_export_job(ctx, world.settings)

    return run_job(job_id, JobStore(world.store), handler, RunnerOptions(worker="test"))


def test_an_export_is_queued_pinned_to_the_evaluation_it_found(world: World) -> None:
    # when
    response = _post(world, PREDICTIONS)
    # then
    assert response.status_code == 202, response.text
    record = response.json()
    assert (record["kind"], record["state"]) == ("review-export", "PENDING")
    assert record["params"] == {**PREDICTIONS, "model": "det:v1", "dataset": "shapes:v1"}
    ((task, args, options),) = world.sender.sent
    assert task == TaskName.FINETUNE_REVIEW_EXPORT.value
    assert args == [record["id"]]
    # on the exports queue, not behind training on the finetune queue
    assert options["queue"] == record["queue"] == Queue.FINETUNE_EXPORTS.value


def test_pseudo_labels_are_queued_with_the_images_their_manifest_names(
    world: World, make_dataset: MakeDataset
) -> None:
    # given
    stage_with_manifest(world, make_dataset)
    # when
    response = _post(world, {"source": "pseudo-labels", "labels_prefix": "pseudo/rect/pl-1"})
    # then
    assert response.status_code == 202, response.text
    assert response.json()["params"]["images_prefix"] == "uploads/rect/"
    assert response.json()["params"]["labels_prefix"] == "pseudo/rect/pl-1/"


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({**PREDICTIONS, "model": "nope"}, 404, "model_not_found"),
        ({**PREDICTIONS, "model": "det:v9"}, 404, "artifact_not_found"),
        ({**PREDICTIONS, "split": "train"}, 404, "evaluation_not_found"),
        ({**PREDICTIONS, "dataset": "other"}, 404, "dataset_not_found"),
        ({**PREDICTIONS, "format": "voc"}, 422, "validation_error"),
        ({**PREDICTIONS, "source": "maps"}, 422, "validation_error"),
        ({**PREDICTIONS, "labels_prefix": "pseudo/x/"}, 422, "validation_error"),
        ({"source": "pseudo-labels", "labels_prefix": "pseudo/rect/pl-1/"}, 422, None),
        ({"source": "pseudo-labels", "labels_prefix": "../etc/"}, 422, "validation_error"),
    ],
)
def test_what_cannot_be_exported_is_refused_before_queuing(
    world: World, make_dataset: MakeDataset, body: dict[str, Any], status: int, code: str | None
) -> None:
    # given hand-made pseudo labels without a manifest (no images prefix to be found)
    stage_pseudo_labelled(world.store, make_dataset)
    # when
    response = _post(world, body)
    # then
    assert response.status_code == status, response.text
    assert response.json()["code"] == (code or "images_prefix_required")
    assert world.sender.sent == []


def test_pseudo_labels_that_pair_with_no_image_are_refused_before_queuing(
    world: World, make_dataset: MakeDataset
) -> None:
    # given labels, and an images prefix holding no image
    stage_pseudo_labelled(world.store, make_dataset)
    body = {"source": "pseudo-labels", "labels_prefix": "pseudo/rect/pl-1/"}
    # when
    response = _post(world, {**body, "images_prefix": "uploads/elsewhere/"})
    # then
    assert response.status_code == 422, response.text
    assert response.json()["code"] == "no_labelled_images"
    assert world.sender.sent == []


def test_the_zip_is_not_ready_until_the_job_has_stored_it(world: World) -> None:
    # given a queued export
    job_id = _post(world, PREDICTIONS).json()["id"]
    # when its zip is asked for before the worker ran it
    response = world.http.get(f"/v1/review-exports/{job_id}/zip")
    # then
    assert response.status_code == 409
    assert response.json()["code"] == "export_not_ready"


def test_a_failed_export_says_so_instead_of_not_ready(world: World) -> None:
    # given an export that failed
    job_id = _post(world, PREDICTIONS).json()["id"]
    JobStore(world.store).update(job_id, state=JobState.FAILED, error="disk full")
    # when
    response = world.http.get(f"/v1/review-exports/{job_id}/zip")
    # then
    assert response.status_code == 409
    assert response.json()["code"] == "export_failed"
    assert "disk full" in response.json()["detail"]


def test_an_unknown_job_or_one_of_another_kind_has_no_export(world: World) -> None:
    # given a finished job of another kind
    jobs = JobStore(world.store)
    other = jobs.create(
        kind="evaluation", task_name="finetune.evaluate", queue="finetune", params={}
    )
    jobs.update(other.id, state=JobState.SUCCEEDED)
    # when
    unknown = world.http.get("/v1/review-exports/20260101T000000-00000000/zip")
    evaluation = world.http.get(f"/v1/review-exports/{other.id}/zip")
    # then
    for response in (unknown, evaluation):
        assert response.status_code == 404
        assert response.json()["code"] == "export_not_found"


def test_a_finished_export_streams_its_zip_as_an_attachment(world: World) -> None:
    # given an export the worker ran
    job_id = _post(world, PREDICTIONS).json()["id"]
    done = _run(world, job_id)
    assert done.state == JobState.SUCCEEDED, done.error
    # when
    response = world.http.get(f"/v1/review-exports/{job_id}/zip")
    # then it is the stored zip, a download named as the GET route names it
    assert response.status_code == 200, response.text
    assert response.content == world.store.get_bytes(done.outputs["zip_key"])
    assert response.headers["content-type"] == "application/zip"
    assert response.headers["content-length"] == str(done.outputs["bytes"])
    disposition = response.headers["content-disposition"]
    assert disposition.startswith('attachment; filename="det-v1-val-coco.zip"')
    assert response.headers["x-content-type-options"] == "nosniff"
    # and the job record, polled as the console polls it, says where it went
    record = world.http.get(f"/v1/jobs/{job_id}").json()
    assert record["state"] == "SUCCEEDED"
    assert record["outputs"]["download_name"] == "det-v1-val-coco.zip"
