"""Routes for files: upload under ``uploads/``, list and download results (scope train)."""

from __future__ import annotations

import logging
from tempfile import SpooledTemporaryFile
from typing import IO, Any, BinaryIO, cast

from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from services.pipeline.api.deps import PipelinesDep, UploadGateDep
from services.pipeline.usecases import files
from shared.errors import InvalidInputError, SuiteError
from shared.http.scopes import require_scope

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1", tags=["files"], dependencies=[require_scope("train")])


@router.put(
    "/uploads/{key:path}",
    status_code=201,
    openapi_extra={"requestBody": {"content": {"application/octet-stream": {}}, "required": True}},
    responses={503: {"description": "too many uploads at once, or the store is unavailable"}},
)
async def upload(
    key: str, request: Request, pipelines: PipelinesDep, gate: UploadGateDep
) -> dict[str, Any]:
    """Store the body at ``uploads/<key>`` (the images a pipeline will read).

    The body streams to a temporary file (memory up to ``PIPELINE_UPLOAD_MEMORY_MB``) and
    from there to the store in parts, so a request holds one part in memory whatever its
    size; past ``PIPELINE_MAX_CONCURRENT_UPLOADS`` uploads at once the answer is 503 with
    ``Retry-After``. A client that goes away mid-body is logged once and nothing is stored.
    """
    try:
        files.upload_key(key)  # a bad key or a full house is known before the body...
        gate.check()
    except SuiteError:
        await _discard(request)  # ...but an HTTP client reads no answer before it has sent
        raise
    content_type = request.headers.get("content-type", "application/octet-stream")
    async with gate.slot():
        with SpooledTemporaryFile(max_size=gate.memory_bytes) as spool:
            try:
                size = await _spool(request, spool)
            except ClientDisconnect as exc:
                log.info("upload of %s: the client went away mid-body; nothing stored", key)
                raise InvalidInputError(  # nobody reads the answer; it is no server fault
                    "the client closed the connection before the body ended",
                    code="client_disconnected",
                ) from exc
            spool.seek(0)
            stored = await run_in_threadpool(
                files.put_upload_stream,
                pipelines.store,
                key,
                cast(BinaryIO, spool),
                size,
                content_type,
            )
    return {"key": stored.key, "size": stored.size}


async def _discard(request: Request) -> None:
    """Read the body and drop it, so the refusal reaches a client still sending."""
    try:
        async for _ in request.stream():
            pass
    except ClientDisconnect:
        pass


async def _spool(request: Request, spool: IO[bytes]) -> int:
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        spool.write(chunk)
    return size


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
