"""Routes that read evaluations back and export boxes for review (scope train).

A version's saved evaluation on a split, two versions compared image by image, and zips
of predictions or pseudo boxes in COCO or YOLO layout that the dataset import takes back:
packed inside the request (GET, small sets) or by a job whose zip is fetched once it is done.
"""

from __future__ import annotations

import shutil
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import FileResponse, StreamingResponse
from starlette.background import BackgroundTask

from services.finetune.api.deps import DatasetsDep, JobsDep, RegistryDep, SenderDep, state_of
from services.finetune.api.evaluation_schemas import EvaluationComparison, EvaluationDocument
from services.finetune.config import FinetuneSettings
from services.finetune.params import SPLIT_PATTERN, ExportFormat, ReviewExportParams
from services.finetune.stores.models import artifact_ref
from services.finetune.usecases.evaluation_views import compare_evaluations, find_evaluation
from services.finetune.usecases.review_export_jobs import stored_export, submit_review_export
from services.finetune.usecases.review_exports import (
    ExportedZip,
    predictions_zip,
    pseudo_labels_zip,
)
from shared.http.scopes import require_scope
from shared.schemas.jobs import JobRecord

_ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"description": "unknown model, dataset or version, or no saved evaluation"},
    422: {"description": "invalid request (codes: eval_mismatch, evaluation_without_errors...)"},
    503: {"description": "storage unavailable"},
}
_ZIP: dict[int | str, dict[str, Any]] = {200: {"content": {"application/zip": {}}}}
_STORED_ZIP: dict[int | str, dict[str, Any]] = {
    **_ZIP,
    404: {"description": "no review export job of that id (code export_not_found)"},
    409: {"description": "the job has not finished (export_not_ready) or failed (export_failed)"},
}

router = APIRouter(
    prefix="/v1", tags=["evaluations"], responses=_ERRORS, dependencies=[require_scope("train")]
)


def _settings(request: Request) -> FinetuneSettings:
    return state_of(request).settings


SettingsDep = Annotated[FinetuneSettings, Depends(_settings)]
DatasetQuery = Annotated[
    str | None, Query(description="'name' or 'name:version'; default: the newest evaluated")
]
SplitQuery = Annotated[str, Query(pattern=SPLIT_PATTERN)]
FormatQuery = Annotated[ExportFormat, Query(alias="format")]


@router.get("/models/{name}/versions/{version}/evaluation", response_model=EvaluationDocument)
def get_evaluation(
    name: str,
    version: str,
    registry: RegistryDep,
    catalog: DatasetsDep,
    dataset: DatasetQuery = None,
    split: SplitQuery = "val",
) -> dict[str, Any]:
    """A version's saved evaluation on a split: mAP, per-class AP, PR curves, confusion
    matrix, misses and false alarms per image with the boxes (404 when none is saved)."""
    return find_evaluation(registry, catalog, artifact_ref(name, version), dataset, split)


@router.get("/evaluations/compare", response_model=EvaluationComparison)
def compare(
    registry: RegistryDep,
    catalog: DatasetsDep,
    a: Annotated[str, Query(description="model 'name:version' (or 'name' for latest)")],
    b: Annotated[str, Query(description="the other model, e.g. the scratch baseline")],
    dataset: DatasetQuery = None,
    split: SplitQuery = "val",
) -> EvaluationComparison:
    """Two versions' evaluations on one split, image by image, largest difference in
    misses and false alarms first."""
    refs = (registry.resolve(a), registry.resolve(b))
    found = compare_evaluations(registry, catalog, refs, dataset, split)
    return EvaluationComparison.model_validate(found, from_attributes=True)


@router.get("/review-exports/predictions", response_class=FileResponse, responses=_ZIP)
def export_predictions(
    registry: RegistryDep,
    catalog: DatasetsDep,
    settings: SettingsDep,
    model: Annotated[str, Query(description="model 'name:version' (or 'name' for latest)")],
    dataset: DatasetQuery = None,
    split: SplitQuery = "val",
    fmt: FormatQuery = "coco",
) -> FileResponse:
    """A zip of the split's images with the boxes the model's saved evaluation found at
    its threshold, in COCO or YOLO layout (the dataset import takes it back)."""
    ref = registry.resolve(model)
    return _send(predictions_zip(registry, catalog, ref, (dataset, split), fmt, settings))


@router.get("/review-exports/pseudo-labels", response_class=FileResponse, responses=_ZIP)
def export_pseudo_labels(
    registry: RegistryDep,
    settings: SettingsDep,
    labels_prefix: Annotated[str, Query(min_length=1, max_length=1024)],
    images_prefix: Annotated[str | None, Query(max_length=1024)] = None,
    fmt: FormatQuery = "coco",
) -> FileResponse:
    """A zip of a pseudo-label output's images with their pseudo boxes (COCO or YOLO)."""
    store = registry.store
    return _send(pseudo_labels_zip(store, labels_prefix, images_prefix, fmt, settings))


@router.post("/review-exports", status_code=202, response_model=JobRecord)
def create_review_export(body: ReviewExportParams, jobs: JobsDep, sender: SenderDep) -> JobRecord:
    """Queue the zip of the GET routes as a job, for sets too large for one request: the
    evaluation or the labels are checked now, the zip is fetched from ``.../{job_id}/zip``."""
    return submit_review_export(sender, jobs, body)


@router.get("/review-exports/{job_id}/zip", response_class=StreamingResponse, responses=_STORED_ZIP)
def get_review_export_zip(job_id: str, jobs: JobsDep) -> StreamingResponse:
    """The zip a finished review export job stored, streamed from the store."""
    found = stored_export(jobs, job_id)
    headers = {**_attachment(found.name), "Content-Length": str(found.size)}
    chunks = jobs.store.iter_chunks(found.key)
    return StreamingResponse(chunks, media_type="application/zip", headers=headers)


def _attachment(name: str) -> dict[str, str]:
    """A download the browser may not re-type, as every stored object the suite serves."""
    plain = name.encode("ascii", "replace").decode().replace('"', "_").replace("?", "_")
    disposition = f"attachment; filename=\"{plain}\"; filename*=UTF-8''{quote(name)}"
    return {"X-Content-Type-Options": "nosniff", "Content-Disposition": disposition}


def _send(exported: ExportedZip) -> FileResponse:
    cleanup = BackgroundTask(shutil.rmtree, exported.folder, ignore_errors=True)
    return FileResponse(
        exported.path, media_type="application/zip", filename=exported.name, background=cleanup
    )
