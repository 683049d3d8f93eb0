"""The review export job: the zip the GET routes send, built on a worker and stored under the
job's prefix, with progress while it packs, the same key on a redelivery, and no scratch
folder left behind whatever happens (one a killed worker left is cleared by the redelivery)."""

from __future__ import annotations

import io
import zipfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from services.finetune.params import REVIEW_EXPORT_PARAMS
from services.finetune.usecases.review_export_jobs import (
    run_review_export_job,
    submit_review_export,
)
from shared.errors import JobCanceledError
from shared.jobs.context import JobContext
from shared.jobs.runner import RunnerOptions, run_job
from shared.jobs.store import JobStore
from shared.schemas.jobs import JobRecord, JobState
from shared.storage.base import ObjectNotFoundError
from tests.unit.finetune.conftest import MakeDataset
from tests.unit.finetune.review_support import World, evaluated_world, stage_with_manifest

PREDICTIONS = {"source": "predictions", "model": "det:v1", "split": "val"}
PSEUDO = {"source": "pseudo-labels", "labels_prefix": "pseudo/rect/pl-1/labels/"}


@pytest.fixture
def world(tmp_path: Path, make_dataset: MakeDataset) -> Iterator[World]:
    with evaluated_world(tmp_path, make_dataset) as built:
        yield built


class RecordingContext(JobContext):
    """A job context that keeps every progress report, written or not."""

    def __init__(self, jobs: JobStore, record: JobRecord) -> None:
        super().__init__(jobs, record, min_interval_s=0.0)
        self.reports: list[tuple[float, str]] = []

    def progress(
        self,
        percent: float,
        message: str = "",
        *,
        force: bool = False,
        metrics: Mapping[str, Any] | None = None,
    ) -> None:
        self.reports.append((percent, message))
        super().progress(percent, message, force=force, metrics=metrics)


def _submitted(world: World, body: dict[str, Any]) -> JobRecord:
    params = REVIEW_EXPORT_PARAMS.validate_python(body)
    return submit_review_export(world.sender, JobStore(world.store), params)


def _finished(world: World, body: dict[str, Any]) -> JobRecord:
    """Submit and run the job as the worker does (the runner's state machine, no broker)."""
    record = _submitted(world, body)

    def handler(ctx: JobContext) -> list[str]:
        return run_review_export_job(ctx, world.settings)

    return run_job(record.id, JobStore(world.store), handler, RunnerOptions(worker="test"))


def _members(content: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(content)) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def _scratch_folders(world: World) -> list[Path]:
    return list(world.settings.resolved_work_dir().glob("export-*"))


@pytest.mark.parametrize("fmt", ["coco", "yolo"])
def test_a_predictions_job_stores_the_zip_the_get_route_sends(world: World, fmt: str) -> None:
    # when the export runs as a job
    done = _finished(world, {**PREDICTIONS, "format": fmt})
    # then it stored one zip under its own prefix, with the same files as the GET route's
    assert done.state == JobState.SUCCEEDED, done.error
    out = done.outputs
    assert out["zip_key"] == f"jobs/{done.id}/det-v1-val-{fmt}.zip"
    assert done.artifacts == [out["zip_key"]]
    stored = world.store.get_bytes(out["zip_key"])
    direct = world.http.get(
        "/v1/review-exports/predictions", params={"model": "det:v1", "format": fmt}
    )
    assert direct.status_code == 200, direct.text
    assert _members(stored) == _members(direct.content)
    # and the outputs say what it holds: the six val images, five hits and one false alarm
    assert out["bytes"] == len(stored)
    assert (out["images"], out["boxes"]) == (6, 6)
    assert (out["format"], out["source"]) == (fmt, "predictions")
    assert out["download_name"] == f"det-v1-val-{fmt}.zip"
    assert _scratch_folders(world) == []


@pytest.mark.parametrize("fmt", ["coco", "yolo"])
def test_a_pseudo_label_job_stores_the_zip_the_get_route_sends(
    world: World, make_dataset: MakeDataset, fmt: str
) -> None:
    # given a pseudo-label output with its manifest
    stage_with_manifest(world, make_dataset)
    # when
    done = _finished(world, {**PSEUDO, "format": fmt})
    # then
    assert done.state == JobState.SUCCEEDED, done.error
    stored = world.store.get_bytes(done.outputs["zip_key"])
    direct = world.http.get(
        "/v1/review-exports/pseudo-labels",
        params={"labels_prefix": PSEUDO["labels_prefix"], "format": fmt},
    )
    assert direct.status_code == 200, direct.text
    assert _members(stored) == _members(direct.content)
    assert done.outputs["images"] == 8
    assert done.outputs["download_name"] == f"pseudo-pl-1-{fmt}.zip"
    assert _scratch_folders(world) == []


def test_the_job_reports_downloads_then_packing_then_storing(world: World) -> None:
    # given a queued export and a context that keeps every report
    jobs = JobStore(world.store)
    ctx = RecordingContext(jobs, jobs.get(_submitted(world, PREDICTIONS).id))
    # when it runs
    run_review_export_job(ctx, world.settings)
    # then progress rises through the downloads, the packing and the upload
    percents = [p for p, _ in ctx.reports]
    assert percents == sorted(percents)
    messages = [m for _, m in ctx.reports]
    assert "downloading image 6 of 6" in messages
    # six images and annotations.json
    assert "packing file 7 of 7" in messages
    assert messages[-1].startswith("storing det-v1-val-coco.zip")


def test_a_redelivered_job_writes_the_same_key_again(world: World) -> None:
    # given an export that already ran once
    jobs = JobStore(world.store)
    record = _submitted(world, PREDICTIONS)
    first = run_review_export_job(JobContext(jobs, jobs.get(record.id)), world.settings)
    before = _members(world.store.get_bytes(first[0]))
    # when the broker delivers it again
    again = run_review_export_job(JobContext(jobs, jobs.get(record.id)), world.settings)
    # then the one key holds the same files, and nothing else was stored beside it
    assert again == first
    assert _members(world.store.get_bytes(again[0])) == before
    zips = [k for k in world.store.list(jobs.prefix(record.id)) if k.endswith(".zip")]
    assert zips == first
    assert _scratch_folders(world) == []


class ScratchWatchingContext(JobContext):
    """A job context that notes, at every progress report, which scratch folders exist."""

    def __init__(self, jobs: JobStore, record: JobRecord, work: Path) -> None:
        super().__init__(jobs, record, min_interval_s=0.0)
        self.work = work
        self.seen: set[str] = set()

    def progress(
        self,
        percent: float,
        message: str = "",
        *,
        force: bool = False,
        metrics: Mapping[str, Any] | None = None,
    ) -> None:
        self.seen.update(p.name for p in self.work.glob("export-*"))
        super().progress(percent, message, force=force, metrics=metrics)


def test_a_redelivery_clears_the_scratch_folder_a_killed_worker_left(world: World) -> None:
    # given an export whose worker was killed mid-run: its folder, named by the job id, holds
    # a half-downloaded image and a stray file that would land in the zip if it stayed
    jobs = JobStore(world.store)
    record = _submitted(world, PREDICTIONS)
    stale = world.settings.resolved_work_dir() / f"export-{record.id}"
    (stale / "images").mkdir(parents=True)
    first_image = world.store.list("datasets/shapes/v1/images/")[0].rsplit("/", 1)[1]
    (stale / "images" / first_image).write_bytes(b"\x89PNG half")
    (stale / "export").mkdir()
    (stale / "export" / "stale.txt").write_text("left by the killed worker")
    ctx = ScratchWatchingContext(jobs, jobs.get(record.id), world.settings.resolved_work_dir())
    # when the broker delivers it again
    (key,) = run_review_export_job(ctx, world.settings)
    # then it worked in the job's own folder, and the zip is the one the GET route sends
    assert ctx.seen == {stale.name}
    direct = world.http.get("/v1/review-exports/predictions", params={"model": "det:v1"})
    assert direct.status_code == 200, direct.text
    assert _members(world.store.get_bytes(key)) == _members(direct.content)
    # and the folder is gone afterwards
    assert _scratch_folders(world) == []


def test_a_failed_export_leaves_no_scratch_folder_and_stores_nothing(world: World) -> None:
    # given an export whose images vanished from the store after it was queued
    jobs = JobStore(world.store)
    record = _submitted(world, PREDICTIONS)
    for key in world.store.list("datasets/shapes/v1/images/"):
        world.store.delete(key)
    # when it runs, then it fails
    with pytest.raises(ObjectNotFoundError):
        run_review_export_job(JobContext(jobs, jobs.get(record.id)), world.settings)
    # and neither a scratch folder nor a zip is left
    assert _scratch_folders(world) == []
    assert not [k for k in world.store.list(jobs.prefix(record.id)) if k.endswith(".zip")]


def test_a_canceled_export_stops_and_stores_nothing(world: World) -> None:
    # given an export whose cancel was asked for before it ran
    jobs = JobStore(world.store)
    record = _submitted(world, PREDICTIONS)
    jobs.request_cancel(record.id)
    # when it runs
    with pytest.raises(JobCanceledError):
        run_review_export_job(JobContext(jobs, jobs.get(record.id)), world.settings)
    # then
    assert _scratch_folders(world) == []
    assert not [k for k in world.store.list(jobs.prefix(record.id)) if k.endswith(".zip")]
