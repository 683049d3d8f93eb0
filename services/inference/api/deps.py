"""``Annotated`` dependencies of the inference API: lifespan objects and the detect request."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.datastructures import UploadFile

from services.inference.api.metrics import InferenceMetrics
from services.inference.api.schemas import DetectQuery
from services.inference.config import InferenceSettings
from services.inference.runtime.model_runtime import ModelRuntime
from services.inference.usecases.sinks import SinkDispatcher
from shared.errors import InvalidInputError, SuiteError, UnsupportedMediaError
from shared.http.body import read_limited
from shared.http.deps import state_object

_RAW_IMAGE_TYPES = ("image/", "application/octet-stream")
_MULTI_VALUED = ("classes",)


def _settings(request: Request) -> InferenceSettings:
    settings: InferenceSettings = request.app.state.service_settings
    return settings


def _runtime(request: Request) -> ModelRuntime:
    runtime: ModelRuntime = state_object(request, "runtime")
    return runtime


def _sinks(request: Request) -> SinkDispatcher | None:
    sinks: SinkDispatcher | None = getattr(request.app.state, "sinks", None)
    return sinks


def _metrics(request: Request) -> InferenceMetrics:
    metrics: InferenceMetrics = request.app.state.inference_metrics
    return metrics


SettingsDep = Annotated[InferenceSettings, Depends(_settings)]
RuntimeDep = Annotated[ModelRuntime, Depends(_runtime)]
MetricsDep = Annotated[InferenceMetrics, Depends(_metrics)]
SinksDep = Annotated[SinkDispatcher | None, Depends(_sinks)]


@dataclass(frozen=True)
class DetectInput:
    """The image bytes of one detect request, its options, and whether a PNG is wanted."""

    data: bytes
    query: DetectQuery
    png: bool


def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


def _fields(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    for key, value in pairs:
        if key in _MULTI_VALUED:
            fields.setdefault(key, []).append(value)
        else:
            fields[key] = value
    return fields


async def _multipart(request: Request) -> tuple[bytes, list[tuple[str, Any]]]:
    try:
        form = await request.form(max_files=1, max_fields=32)
    except SuiteError:
        raise
    except Exception as exc:  # python-multipart raises several types on a broken body
        raise InvalidInputError(f"malformed multipart body: {exc}", code="bad_multipart") from exc
    image = form.get("image")
    if not isinstance(image, UploadFile):
        raise InvalidInputError("the form has no 'image' file field", code="image_missing")
    pairs = [(k, v) for k, v in form.multi_items() if k != "image" and isinstance(v, str)]
    return await image.read(), pairs


def _wants_png(request: Request, query: DetectQuery) -> bool:
    """PNG when ``annotated=true`` or when the Accept header prefers an image to JSON."""
    if query.annotated:
        return True
    for part in request.headers.get("accept", "").lower().split(","):
        media = part.split(";")[0].strip()
        if media in ("application/json", "application/*", "*/*"):
            return False
        if media in ("image/png", "image/*"):
            return True
    return False


async def _detect_input(request: Request, settings: SettingsDep) -> DetectInput:
    pairs = list(request.query_params.multi_items())
    media = _media_type(request)
    if media == "multipart/form-data":
        data, form_pairs = await _multipart(request)
        pairs += form_pairs
    elif media.startswith(_RAW_IMAGE_TYPES):
        data = await read_limited(request.stream(), int(settings.max_image_mb * 2**20))
    else:
        raise UnsupportedMediaError(
            "send the image as multipart/form-data (field 'image') or as an image/* body, "
            f"not {media or 'no content type'!r}",
            code="unsupported_media_type",
        )
    try:
        query = DetectQuery.model_validate(_fields(pairs))
    except ValidationError as exc:
        errors = [{**e, "loc": ("query", *e["loc"])} for e in exc.errors(include_url=False)]
        raise RequestValidationError(errors) from exc
    return DetectInput(data=data, query=query, png=_wants_png(request, query))


DetectInputDep = Annotated[DetectInput, Depends(_detect_input)]
