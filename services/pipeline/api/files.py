"""Routes for files: upload under ``uploads/``, list and download results (scope train)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from services.pipeline.api.deps import PipelinesDep
from services.pipeline.usecases import files
from shared.http.scopes import require_scope

router = APIRouter(prefix="/v1", tags=["files"], dependencies=[require_scope("train")])


@router.put(
    "/uploads/{key:path}",
    status_code=201,
    openapi_extra={"requestBody": {"content": {"application/octet-stream": {}}, "required": True}},
)
async def upload(key: str, request: Request, pipelines: PipelinesDep) -> dict[str, Any]:
    """Store the raw body at ``uploads/<key>`` (the images a pipeline will read)."""
    data = await request.body()
    content_type = request.headers.get("content-type", "application/octet-stream")
    stored = await run_in_threadpool(files.put_upload, pipelines.store, key, data, content_type)
    return {"key": stored.key, "size": stored.size}


@router.get("/objects")
def list_objects(
    pipelines: PipelinesDep,
    prefix: str = Query(min_length=1, max_length=1024),
    limit: int = Query(1000, ge=1, le=files.MAX_LISTED),
) -> dict[str, Any]:
    """Stored keys under a prefix, with sizes."""
    found, truncated = files.list_files(pipelines.store, prefix, limit)
    keys = [{"key": f.key, "size": f.size} for f in found]
    return {"prefix": prefix, "keys": keys, "truncated": truncated}


@router.get(
    "/objects/{key:path}",
    response_class=StreamingResponse,
    responses={200: {"content": {"application/octet-stream": {}}}},
)
def get_object(key: str, pipelines: PipelinesDep) -> StreamingResponse:
    """One stored object (an overlay, a loss curve, a map, a report, a model file)."""
    chunks, media = files.read_file(pipelines.store, key)
    return StreamingResponse(chunks, media_type=media, headers=files.object_headers(key))
