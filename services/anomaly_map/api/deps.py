"""``Annotated`` dependencies of the anomaly_map API: lifespan objects and body parsing."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from celery import Celery
from fastapi import Depends, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError
from starlette.datastructures import FormData, UploadFile

from services.anomaly_map.api.schemas import CategoryRequest, MapParams
from services.anomaly_map.config import AnomalyMapSettings
from services.anomaly_map.ml.prompts import Tokenizer
from services.anomaly_map.runtime.engine import MapEngine
from services.anomaly_map.stores.categories import CategoryStore
from shared.errors import InvalidInputError, SuiteError, UnavailableError, UnsupportedMediaError
from shared.http.body import read_limited
from shared.http.deps import state_object
from shared.jobs.store import JobStore

ResponseFormat = Literal["json", "npy", "octet", "png"]
_RAW_IMAGE_TYPES = ("image/", "application/octet-stream")


def _settings(request: Request) -> AnomalyMapSettings:
    settings: AnomalyMapSettings = request.app.state.service_settings
    return settings


def _engine(request: Request) -> MapEngine:
    engine: MapEngine | None = getattr(request.app.state, "engine", None)
    if engine is None:
        problem: SuiteError | None = getattr(request.app.state, "engine_error", None)
        if problem is not None:
            raise UnavailableError(problem.message, code=problem.code, retry_after_s=60)
        raise UnavailableError("the anomaly-map model is still loading", code="model_loading")
    return engine


def _categories(request: Request) -> CategoryStore:
    categories: CategoryStore = state_object(request, "categories")
    return categories


def _tokenizer(request: Request) -> Tokenizer:
    tokenizer: Tokenizer = state_object(request, "tokenizer")
    return tokenizer


def _jobs(request: Request) -> JobStore:
    jobs: JobStore = state_object(request, "jobs")
    return jobs


def _celery(request: Request) -> Celery:
    celery: Celery = state_object(request, "celery")
    return celery


SettingsDep = Annotated[AnomalyMapSettings, Depends(_settings)]
EngineDep = Annotated[MapEngine, Depends(_engine)]


def _optional_engine(request: Request) -> MapEngine | None:
    engine: MapEngine | None = getattr(request.app.state, "engine", None)
    return engine


OptionalEngineDep = Annotated[MapEngine | None, Depends(_optional_engine)]
CategoriesDep = Annotated[CategoryStore, Depends(_categories)]
TokenizerDep = Annotated[Tokenizer, Depends(_tokenizer)]
JobsDep = Annotated[JobStore, Depends(_jobs)]
CeleryDep = Annotated[Celery, Depends(_celery)]


def _validated(model: type[BaseModel], data: Any, where: str) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        errors = [{**e, "loc": (where, *e["loc"])} for e in exc.errors(include_url=False)]
        raise RequestValidationError(errors) from exc


def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


async def _form(request: Request, max_files: int) -> FormData:
    try:
        return await request.form(max_files=max_files, max_fields=64)
    except SuiteError:
        raise
    except Exception as exc:  # python-multipart raises several types on a broken body
        raise InvalidInputError(f"malformed multipart body: {exc}", code="bad_multipart") from exc


@dataclass(frozen=True)
class MapInput:
    """Image bytes and parameters of one anomaly-map request."""

    data: bytes
    params: MapParams


async def _map_input(request: Request, settings: SettingsDep) -> MapInput:
    fields: dict[str, Any] = dict(request.query_params)
    media = _media_type(request)
    if media == "multipart/form-data":
        form = await _form(request, max_files=1)
        image = form.get("image")
        if not isinstance(image, UploadFile):
            raise InvalidInputError("the form has no 'image' file field", code="image_missing")
        data = await image.read()
        fields.update({k: v for k, v in form.items() if isinstance(v, str)})
    elif media.startswith(_RAW_IMAGE_TYPES):
        limit = int(settings.max_image_mb * 2**20)
        data = await read_limited(request.stream(), limit)
    else:
        raise UnsupportedMediaError(
            f"send the image as multipart/form-data (field 'image') or as an image/* body, "
            f"not {media or 'no content type'!r}",
            code="unsupported_media_type",
        )
    return MapInput(data=data, params=_validated(MapParams, fields, "query"))


MapInputDep = Annotated[MapInput, Depends(_map_input)]


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
    media = _media_type(request)
    if media == "application/json":
        return CategoryInput(_validated(CategoryRequest, _json(await request.body()), "body"), [])
    if media != "multipart/form-data":
        raise UnsupportedMediaError(
            "send application/json or multipart/form-data (spec + references files)",
            code="unsupported_media_type",
        )
    form = await _form(request, max_files=settings.max_references)
    spec = form.get("spec")
    if not isinstance(spec, str):
        raise InvalidInputError("the form needs a 'spec' field with the JSON", code="spec_missing")
    uploads = []
    for item in form.getlist("references"):
        if not isinstance(item, UploadFile):
            raise InvalidInputError("'references' must be files", code="invalid_reference")
        uploads.append((item.filename or "reference", await item.read()))
    return CategoryInput(_validated(CategoryRequest, _json(spec), "spec"), uploads)


CategoryInputDep = Annotated[CategoryInput, Depends(_category_input)]


def _response_format(request: Request) -> ResponseFormat:
    """Pick the representation from the Accept header (JSON unless npy or PNG is asked)."""
    accept = request.headers.get("accept", "").lower()
    offered = [part.split(";")[0].strip() for part in accept.split(",") if part.strip()]
    for media in offered:
        if media in ("application/json", "*/*", "application/*"):
            return "json"
        if media == "application/x-npy":
            return "npy"
        if media == "application/octet-stream":
            return "octet"
        if media in ("image/png", "image/*"):
            return "png"
    if offered:
        raise NotAcceptableError(
            f"cannot produce {accept!r}; accepted: application/json, application/x-npy, "
            "application/octet-stream, image/png"
        )
    return "json"


class NotAcceptableError(InvalidInputError):
    """The Accept header names no representation this route can produce."""

    code = "not_acceptable"
    http_status = 406


ResponseFormatDep = Annotated[ResponseFormat, Depends(_response_format)]
