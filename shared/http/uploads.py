"""One image upload for every image route: multipart field ``image`` or a raw ``image/*`` body.

Options come from the query string and, with multipart, from the form's text fields (a
form field wins over the same query parameter); they are validated by the route's pydantic
model and reported as ``query`` errors. A raw body is read with the route's byte cap as it
arrives. ``image_upload_openapi`` documents both body forms and the options, since FastAPI
cannot infer a body the route parses itself. ``negotiate`` picks a representation from
``Accept``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError
from starlette.datastructures import FormData, UploadFile

from shared.errors import InvalidInputError, NotAcceptableError, SuiteError, UnsupportedMediaError
from shared.http.body import read_limited

P = TypeVar("P", bound=BaseModel)
T = TypeVar("T")
IMAGE_FIELD = "image"
_RAW_IMAGE_TYPES = ("image/", "application/octet-stream")
_BINARY = {"type": "string", "format": "binary"}


@dataclass(frozen=True)
class ImageUpload(Generic[P]):
    """The image bytes of one request and its validated options."""

    data: bytes
    params: P


def media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


def validated(model: type[P], data: Any, where: str) -> P:
    """``model`` from ``data``; errors become a 422 located under ``where``."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        errors = [{**e, "loc": (where, *e["loc"])} for e in exc.errors(include_url=False)]
        raise RequestValidationError(errors) from exc


async def read_form(request: Request, *, max_files: int, max_fields: int) -> FormData:
    """The multipart form, a broken body being the caller's error (422), not ours."""
    try:
        return await request.form(max_files=max_files, max_fields=max_fields)
    except SuiteError:
        raise
    except Exception as exc:  # python-multipart raises several types on a broken body
        raise InvalidInputError(f"malformed multipart body: {exc}", code="bad_multipart") from exc


def _fields(pairs: Sequence[tuple[str, str]], multi: Sequence[str]) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    for key, value in pairs:
        if key in multi:
            fields.setdefault(key, []).append(value)
        else:
            fields[key] = value
    return fields


async def _multipart(request: Request, max_fields: int) -> tuple[bytes, list[tuple[str, str]]]:
    form = await read_form(request, max_files=1, max_fields=max_fields)
    image = form.get(IMAGE_FIELD)
    if not isinstance(image, UploadFile):
        raise InvalidInputError("the form has no 'image' file field", code="image_missing")
    pairs = [(k, v) for k, v in form.multi_items() if k != IMAGE_FIELD and isinstance(v, str)]
    return await image.read(), pairs


async def read_image_upload(
    request: Request,
    model: type[P],
    max_bytes: int,
    *,
    multi: Sequence[str] = (),
    max_fields: int = 64,
) -> ImageUpload[P]:
    """The image and options of one request; ``multi`` names options that may repeat."""
    pairs = list(request.query_params.multi_items())
    media = media_type(request)
    if media == "multipart/form-data":
        data, form_pairs = await _multipart(request, max_fields)
        pairs += form_pairs
    elif media.startswith(_RAW_IMAGE_TYPES):
        data = await read_limited(request.stream(), max_bytes)
    else:
        raise UnsupportedMediaError(
            "send the image as multipart/form-data (field 'image') or as an image/* body, "
            f"not {media or 'no content type'!r}",
            code="unsupported_media_type",
        )
    return ImageUpload(data=data, params=validated(model, _fields(pairs, multi), "query"))


def image_upload(
    model: type[P],
    max_bytes: Callable[[Request], int],
    *,
    multi: Sequence[str] = (),
    max_fields: int = 64,
) -> Callable[[Request], Awaitable[ImageUpload[P]]]:
    """A FastAPI dependency reading an image upload; ``max_bytes`` reads the service's cap."""

    async def dependency(request: Request) -> ImageUpload[P]:
        return await read_image_upload(
            request, model, max_bytes(request), multi=multi, max_fields=max_fields
        )

    return dependency


def image_upload_openapi(model: type[BaseModel]) -> dict[str, Any]:
    """``openapi_extra`` of an image route: the options as query parameters or form fields,
    and the two bodies (multipart with the ``image`` file, or the raw image)."""
    schema = model.model_json_schema()
    properties: dict[str, Any] = schema["properties"]
    required: list[str] = schema.get("required", [])
    parameters = [
        {"name": name, "in": "query", "required": name in required, "schema": prop}
        | ({"description": prop["description"]} if "description" in prop else {})
        for name, prop in properties.items()
    ]
    form = {
        "type": "object",
        "required": [IMAGE_FIELD, *required],
        "properties": {IMAGE_FIELD: _BINARY, **properties},
    }
    return {
        "parameters": parameters,
        "requestBody": {
            "required": True,
            "content": {"multipart/form-data": {"schema": form}, "image/*": {"schema": _BINARY}},
        },
    }


def negotiate(
    request: Request, offers: Mapping[str, T], default: T, *, refuse_others: bool = False
) -> T:
    """The offer of the first media type in ``Accept`` this route can produce.

    Without an ``Accept`` header, or with nothing it offers (unless ``refuse_others``: then
    406 listing what it can produce), the answer is ``default``.
    """
    accept = request.headers.get("accept", "").lower()
    asked = [part.split(";")[0].strip() for part in accept.split(",") if part.strip()]
    for media in asked:
        if media in offers:
            return offers[media]
    if asked and refuse_others:
        produced = ", ".join(m for m in offers if "*" not in m)
        raise NotAcceptableError(f"cannot produce {accept!r}; accepted: {produced}")
    return default
