"""Routes of the pipeline API: start, list, follow, cancel and resume pipelines; reports."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from fastapi import APIRouter, Query
from fastapi.responses import Response

from services.pipeline.api.deps import PipelinesDep
from services.pipeline.params import PipelineRequest
from services.pipeline.stores.pipelines import PipelineRecord, PipelineSummary
from services.pipeline.usecases import pipelines as service
from services.pipeline.usecases.files import REPORT_HEADERS
from services.pipeline.usecases.presets import PRESETS
from shared.http.scopes import open_route, require_scope

router = APIRouter(prefix="/v1", tags=["pipelines"])
TRAIN = [require_scope("train")]


@router.post("/pipelines", status_code=202, response_model=PipelineRecord, dependencies=TRAIN)
def create_pipeline(body: PipelineRequest, pipelines: PipelinesDep) -> PipelineRecord:
    """Start a pipeline: (fit) -> maps -> pseudo boxes -> AGBP -> AGDP -> finetune -> baseline."""
    return service.create_pipeline(pipelines, body)


@router.get("/pipelines", response_model=list[PipelineSummary], dependencies=TRAIN)
def list_pipelines(
    pipelines: PipelinesDep,
    response: Response,
    limit: int = Query(50, ge=1, le=500),
    before: str | None = Query(None, max_length=64, pattern=r"^[\w.\-]+$"),
) -> list[PipelineSummary]:
    """Newest first; a full page sets ``X-Next-Cursor`` to pass as ``before`` for the next."""
    page = pipelines.list(limit, before)
    if len(page) == limit:
        response.headers["X-Next-Cursor"] = page[-1].id
    return [PipelineSummary.of(r) for r in page]


@router.get("/pipelines/{pipeline_id}", response_model=PipelineRecord, dependencies=TRAIN)
def get_pipeline(pipeline_id: str, pipelines: PipelinesDep) -> PipelineRecord:
    """One pipeline with every step's state, progress, job and outputs."""
    return pipelines.get(pipeline_id)


@router.post("/pipelines/{pipeline_id}/cancel", response_model=PipelineRecord, dependencies=TRAIN)
def cancel_pipeline(pipeline_id: str, pipelines: PipelinesDep) -> PipelineRecord:
    """Stop after canceling the running step's job."""
    return service.cancel_pipeline(pipelines, pipeline_id)


@router.post("/pipelines/{pipeline_id}/resume", response_model=PipelineRecord, dependencies=TRAIN)
def resume_pipeline(pipeline_id: str, pipelines: PipelinesDep) -> PipelineRecord:
    """Run a failed or canceled pipeline again from the step where it stopped."""
    return service.resume_pipeline(pipelines, pipeline_id)


@router.get(
    "/pipelines/{pipeline_id}/report",
    response_class=Response,
    responses={200: {"content": {"text/html": {}}}},
    dependencies=TRAIN,
)
def pipeline_report(pipeline_id: str, pipelines: PipelinesDep) -> Response:
    """The self-contained HTML report (written when the pipeline's last step ran)."""
    pipelines.get(pipeline_id)  # 404 pipeline_not_found before report_not_ready
    return Response(
        pipelines.report(pipeline_id), media_type="text/html; charset=utf-8",
        headers=REPORT_HEADERS,
    )  # fmt: skip


@router.get("/presets", dependencies=[open_route()])
def presets() -> dict[str, Any]:
    """What each preset sends to the training steps (before a request's overrides); open to
    every caller, since a key that may start pipelines must see what they will send."""
    return {name: asdict(preset) for name, preset in PRESETS.items()}
