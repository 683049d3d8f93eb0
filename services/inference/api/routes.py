"""Routes of the inference API: ``/detect`` for cameras, model listing and reload for admins."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response

from services.inference.api.deps import (
    DetectInputDep,
    MetricsDep,
    RuntimeDep,
    SettingsDep,
    SinksDep,
)
from services.inference.api.schemas import (
    DetectQuery,
    DetectResponse,
    ModelsResponse,
    SinksResponse,
)
from services.inference.usecases import detect as service
from services.inference.usecases.detect import DetectResult
from shared.http.scopes import require_scope
from shared.http.uploads import image_upload_openapi

router = APIRouter(tags=["inference"])
INSPECT = [require_scope("inspect")]
# Model listing, reload and sink counters are for operators.
ADMIN = [require_scope("admin")]

_ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"description": "Unknown model, version or stage."},
    413: {"description": "Image larger than INFERENCE_MAX_IMAGE_MB or HTTP_MAX_IMAGE_PIXELS."},
    415: {"description": "Not multipart/image, or an image format not accepted."},
    422: {"description": "Corrupt image or bad options (codes in the body)."},
    429: {"description": "The model's queue is full; retry after Retry-After seconds."},
    503: {"description": "No model loaded (or it failed to load)."},
}
_DETECT_BODY = image_upload_openapi(DetectQuery)
_PNG: dict[int | str, dict[str, Any]] = {
    200: {"content": {"image/png": {}}, "description": "JSON, or the annotated PNG."}
}


@router.post(
    "/v1/detect",
    response_model=DetectResponse,
    responses={**_PNG, **_ERRORS},
    openapi_extra=_DETECT_BODY,
    dependencies=INSPECT,
)
@router.post(
    "/detect",
    operation_id="detect_camera",
    response_model=DetectResponse,
    responses={**_PNG, **_ERRORS},
    openapi_extra=_DETECT_BODY,
    dependencies=INSPECT,
)
async def detect(
    payload: DetectInputDep,
    runtime: RuntimeDep,
    settings: SettingsDep,
    metrics: MetricsDep,
    sinks: SinksDep,
) -> DetectResponse | Response:
    """Detect objects in one image; JSON, or an annotated PNG (annotated=true / Accept)."""
    options = payload.query.options(settings, annotate=payload.png)
    result = await service.detect(
        runtime, payload.data, options, settings=settings, observer=metrics, sinks=sinks
    )
    if result.png is not None:
        return Response(result.png, media_type="image/png", headers=_png_headers(result))
    return DetectResponse.of(result)


@router.get("/v1/models", response_model=ModelsResponse, dependencies=ADMIN)
async def list_models(runtime: RuntimeDep, settings: SettingsDep) -> ModelsResponse:
    """Resident models and the followed stage."""
    return ModelsResponse.of(runtime, settings)


@router.get("/v1/sinks", response_model=SinksResponse, dependencies=ADMIN)
async def list_sinks(sinks: SinksDep) -> SinksResponse:
    """Delivery counters and queue depth of every configured result sink."""
    return SinksResponse.of(sinks.stats() if sinks is not None else {})


@router.post("/v1/models/reload", response_model=ModelsResponse, dependencies=ADMIN)
async def reload_models(runtime: RuntimeDep, settings: SettingsDep) -> ModelsResponse:
    """Re-read the registry now: followed stages that moved are loaded and swapped in."""
    await runtime.refresh(forget_failures=True)
    return ModelsResponse.of(runtime, settings)


def _png_headers(result: DetectResult) -> dict[str, str]:
    t = result.timings
    return {
        "X-Model-Name": result.model.name,
        "X-Model-Version": result.model.version,
        "X-Detections": str(len(result.detections)),
        "Server-Timing": (
            f"decode;dur={t.decode_ms}, queue;dur={t.queue_wait_ms}, "
            f"inference;dur={t.inference_ms}, total;dur={t.total_ms}"
        ),
    }
