"""``Annotated`` dependencies of the anomaly_map API: its typed state and request bodies."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from celery import Celery
from fastapi import Depends, Request
from starlette.datastructures import UploadFile

from services.anomaly_map.api.schemas import CategoryRequest, MapParams
from services.anomaly_map.config import AnomalyMapSettings
from services.anomaly_map.ml.clip.prompts import Tokenizer
from services.anomaly_map.runtime.engine import MapEngine
from services.anomaly_map.stores.categories import CategoryStore
from shared.errors import InvalidInputError, SuiteError, UnavailableError, UnsupportedMediaError
from shared.http.state import available, celery_of, jobs_of, service_state
from shared.http.uploads import (
    ImageUpload,
    image_upload,
    media_type,
    negotiate,
    read_form,
    validated,
)
from shared.jobs.store import JobStore

ResponseFormat = Literal["json", "npy", "octet", "png"]


@dataclass
class AnomalyMapState:
    """What the app holds: settings from ``create_app``, the rest from the lifespan."""

    settings: AnomalyMapSettings
    categories: CategoryStore | None = None
    tokenizer: Tokenizer | None = None
    engine: MapEngine | None = None
    # Why the engine could not be built (a loader that needs weights), for the 503.
    engine_error: SuiteError | None = None


def state_of(request: Request) -> AnomalyMapState:
    return service_state(request.app, AnomalyMapState)


def _settings(request: Request) -> AnomalyMapSettings:
    return state_of(request).settings


def _engine(request: Request) -> MapEngine:
    state = state_of(request)
    if state.engine is None:
        if state.engine_error is not None:
            problem = state.engine_error
            raise UnavailableError(problem.message, code=problem.code, retry_after_s=60)
        raise UnavailableError("the anomaly-map model is still loading", code="model_loading")
    return state.engine


def _categories(request: Request) -> CategoryStore:
    return available(request, state_of(request).categories, "categories")


def _tokenizer(request: Request) -> Tokenizer:
    return available(request, state_of(request).tokenizer, "tokenizer")


def _optional_engine(request: Request) -> MapEngine | None:
    return state_of(request).engine


def _max_image_bytes(request: Request) -> int:
    return int(_settings(request).max_image_mb * 2**20)


SettingsDep = Annotated[AnomalyMapSettings, Depends(_settings)]
EngineDep = Annotated[MapEngine, Depends(_engine)]
OptionalEngineDep = Annotated[MapEngine | None, Depends(_optional_engine)]
CategoriesDep = Annotated[CategoryStore, Depends(_categories)]
TokenizerDep = Annotated[Tokenizer, Depends(_tokenizer)]
JobsDep = Annotated[JobStore, Depends(jobs_of)]
CeleryDep = Annotated[Celery, Depends(celery_of)]
MapInput = ImageUpload[MapParams]
MapInputDep = Annotated[MapInput, Depends(image_upload(MapParams, _max_image_bytes))]


@dataclass(frozen=True)
class CategoryInput:
    """A category definition plus uploaded reference images (filename, bytes)."""

    spec: CategoryRequest
    uploads: list[tuple[str, bytes]]


def _json(raw: str | bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise InvalidInputError(f"the body is not valid JSON: {exc}", code="invalid_json") from exc


async def _category_input(request: Request, settings: SettingsDep) -> CategoryInput:
    media = media_type(request)
    if media == "application/json":
        return CategoryInput(validated(CategoryRequest, _json(await request.body()), "body"), [])
    if media != "multipart/form-data":
        raise UnsupportedMediaError(
            "send application/json or multipart/form-data (spec + references files)",
            code="unsupported_media_type",
        )
    form = await read_form(request, max_files=settings.max_references, max_fields=64)
    spec = form.get("spec")
    if not isinstance(spec, str):
        raise InvalidInputError("the form needs a 'spec' field with the JSON", code="spec_missing")
    uploads = []
    for item in form.getlist("references"):
        if not isinstance(item, UploadFile):
            raise InvalidInputError("'references' must be files", code="invalid_reference")
        uploads.append((item.filename or "reference", await item.read()))
    return CategoryInput(validated(CategoryRequest, _json(spec), "spec"), uploads)


CategoryInputDep = Annotated[CategoryInput, Depends(_category_input)]


_FORMATS: dict[str, ResponseFormat] = {
    "application/json": "json",
    "*/*": "json",
    "application/*": "json",
    "application/x-npy": "npy",
    "application/octet-stream": "octet",
    "image/png": "png",
    "image/*": "png",
}


def _response_format(request: Request) -> ResponseFormat:
    """Pick the representation from the Accept header (JSON unless npy or PNG is asked)."""
    return negotiate(request, _FORMATS, "json", refuse_others=True)


ResponseFormatDep = Annotated[ResponseFormat, Depends(_response_format)]
