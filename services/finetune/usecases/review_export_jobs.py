"""Exports for review as a job, for sets too large to pack inside one HTTP request.

The API checks what it can before queuing (the model's saved evaluation with its per-image
records, or the pseudo-label output's labels paired with their images) and pins it; the
worker builds the zip ``GET /v1/review-exports/...`` sends, with the same functions
(``usecases.review_exports``), and stores it as one object ``jobs/<id>/<download name>``: a
redelivered job writes the same key again. Its scratch folder, named by the job id, goes
whatever happens, and a redelivery clears the one a killed worker left.
``GET /v1/review-exports/{id}/zip`` streams the stored zip back.
"""

from __future__ import annotations

import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from services.finetune.config import FinetuneSettings
from services.finetune.params import REVIEW_EXPORT_PARAMS, ExportParams, PredictionsExportParams
from services.finetune.stores.datasets import DatasetCatalog
from services.finetune.stores.models import ModelRegistry
from services.finetune.stores.pseudo_labels import pair_pseudo_labels
from services.finetune.usecases.common import submit
from services.finetune.usecases.evaluation_views import error_analysis, find_evaluation
from services.finetune.usecases.review_exports import (
    ExportedZip,
    job_scratch,
    predictions_zip,
    pseudo_images_prefix,
    pseudo_labels_zip,
)
from shared.errors import ConflictError, JobCanceledError, NotFoundError
from shared.jobs.context import JobContext
from shared.jobs.producer import TaskSender
from shared.jobs.store import JobStore
from shared.schemas.jobs import JobRecord, JobState, Queue, TaskName
from shared.storage.base import ObjectStore

REVIEW_EXPORT_KIND = "review-export"
# Shares of the job's progress: downloading the images, then writing the zip; storing it last.
SPANS = {"download": (2.0, 45.0), "pack": (45.0, 90.0)}
STORE_AT = 90.0
STEPS = {"download": "downloading image", "pack": "packing file"}


@dataclass(frozen=True)
class StoredExport:
    """A finished export's zip in the store: its key, download name and size in bytes."""

    key: str
    name: str
    size: int


def submit_review_export(sender: TaskSender, jobs: JobStore, params: ExportParams) -> JobRecord:
    """Queue an export for review, pinned to the model version, dataset and images it found.

    Raises:
        NotFoundError: unknown model, dataset or version, or no saved evaluation.
        InvalidInputError: an evaluation without per-image records, no manifest and no
            ``images_prefix``, or labels that pair with no image.
    """
    pinned = _pinned(jobs.store, params)
    task, body = TaskName.FINETUNE_REVIEW_EXPORT, pinned.model_dump(mode="json")
    # its own queue: an export is minutes of downloads, never behind an hour of training
    return submit(sender, jobs, REVIEW_EXPORT_KIND, task, body, Queue.FINETUNE_EXPORTS)


def _pinned(store: ObjectStore, params: ExportParams) -> ExportParams:
    if isinstance(params, PredictionsExportParams):
        registry, catalog = ModelRegistry(store), DatasetCatalog(store)
        ref = registry.resolve(params.model)
        document = find_evaluation(registry, catalog, ref, params.dataset, params.split)
        error_analysis(document)  # one saved before per-image records: refused now
        return params.model_copy(update={"model": str(ref), "dataset": document["dataset"]})
    images = pseudo_images_prefix(store, params.labels_prefix, params.images_prefix)
    pair_pseudo_labels(store, images, params.labels_prefix)
    return params.model_copy(update={"images_prefix": images})


def run_review_export_job(ctx: JobContext, settings: FinetuneSettings) -> list[str]:
    """Build the zip, store it under the job's prefix; the outputs say where and what.

    The scratch folder is named by the job id: a redelivery after a killed worker clears
    the one it left and starts over, and it goes whatever happens here.
    """
    params = REVIEW_EXPORT_PARAMS.validate_python(ctx.params)
    scratch = job_scratch(settings, ctx.job_id)
    ctx.progress(SPANS["download"][0], "collecting the images", force=True)
    try:
        exported = _build(ctx.store, params, settings, _Reporter(ctx), scratch)
        key = ctx.prefix + exported.name
        size = exported.path.stat().st_size
        ctx.progress(STORE_AT, f"storing {exported.name} ({size} bytes)", force=True)
        ctx.store.put_file(key, exported.path)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    ctx.set_outputs(
        zip_key=key,
        bytes=size,
        images=exported.images,
        boxes=exported.boxes,
        format=params.format,
        source=params.source,
        download_name=exported.name,
    )
    return [key]


def _build(
    store: ObjectStore,
    params: ExportParams,
    settings: FinetuneSettings,
    report: _Reporter,
    scratch: Path,
) -> ExportedZip:
    """The export's zip, built in ``scratch`` (emptied first)."""
    if isinstance(params, PredictionsExportParams):
        registry = ModelRegistry(store)
        ref = registry.resolve(params.model)
        where = (params.dataset, params.split)
        return predictions_zip(
            registry, DatasetCatalog(store), ref, where, params.format, settings, report, scratch
        )
    labels, images = params.labels_prefix, params.images_prefix
    return pseudo_labels_zip(store, labels, images, params.format, settings, report, scratch)


class _Reporter:
    """Counts of downloads and packed files as the job's progress, written at most once per
    the context's interval. The downloads call it from their threads, so a lock orders the
    writes; each write also reads the cancel flag, and once it is set every later call
    raises, so the remaining downloads stop before they start."""

    def __init__(self, ctx: JobContext) -> None:
        self._ctx = ctx
        self._lock = threading.Lock()
        self._last = 0.0
        self._percent = 0.0  # threads finish out of order: a lower count is not written
        self._canceled = False

    def __call__(self, stage: str, done: int, total: int) -> None:
        low, high = SPANS[stage]
        percent = low + (high - low) * done / max(total, 1)
        with self._lock:
            now = time.monotonic()
            due = now - self._last >= self._ctx.min_interval_s or done == total
            if due and percent >= self._percent and not self._canceled:
                self._last, self._percent = now, percent
                self._ctx.progress(percent, f"{STEPS[stage]} {done} of {total}", force=True)
                self._canceled = self._ctx.should_stop()
            if self._canceled:
                raise JobCanceledError(f"job {self._ctx.job_id} was canceled; nothing was stored")


def stored_export(jobs: JobStore, job_id: str) -> StoredExport:
    """The zip a finished review export job stored.

    Raises:
        NotFoundError: no such job, a job of another kind, or its zip is gone
            (code export_not_found).
        ConflictError: the job has not finished (code export_not_ready) or it failed or was
            canceled (code export_failed).
    """
    try:
        record = jobs.get(job_id)
    except NotFoundError as exc:
        raise NotFoundError(f"no review export job {job_id!r}", code="export_not_found") from exc
    if record.kind != REVIEW_EXPORT_KIND:
        raise NotFoundError(
            f"job {job_id} is a {record.kind} job, not a review export", code="export_not_found"
        )
    _check_finished(record)
    key, name = str(record.outputs["zip_key"]), str(record.outputs["download_name"])
    if not jobs.store.exists(key):
        raise NotFoundError(f"the zip of {job_id} is no longer stored", code="export_not_found")
    return StoredExport(key, name, jobs.store.size(key))


def _check_finished(record: JobRecord) -> None:
    if record.state in (JobState.FAILED, JobState.CANCELED):
        raise ConflictError(
            f"review export {record.id} is {record.state.value}: {record.error or 'no zip'}",
            code="export_failed",
        )
    if record.state != JobState.SUCCEEDED:
        raise ConflictError(
            f"review export {record.id} is {record.state.value} ({record.progress:.0f} %): "
            f"poll GET /v1/jobs/{record.id} until it SUCCEEDED",
            code="export_not_ready",
        )
