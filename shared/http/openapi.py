"""OpenAPI that matches the answers: every operation documents the suite's error bodies.

Routes declare their success answers; the errors every route can give come from the
common middleware and handlers (401/403 from the key check, 413 from the body caps, 422
from validation and the JSON guard, 503 + Retry-After from an outage or a full decode
budget, ...). ``install_error_responses`` adds them, with one ``ErrorBody`` schema, to every
operation of the app's generated schema, keeping what a route documents itself.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

ERROR_BODY: dict[str, Any] = {
    "title": "ErrorBody",
    "type": "object",
    "required": ["detail", "code"],
    "properties": {
        "detail": {"type": "string"},
        "code": {"type": "string", "description": "stable, machine-readable"},
        "request_id": {"type": ["string", "null"]},
        "errors": {
            "type": "array",
            "description": "validation errors: location and message, at most 20",
            "items": {
                "type": "object",
                "properties": {
                    "loc": {"type": "array", "items": {"type": ["string", "integer"]}},
                    "msg": {"type": "string"},
                },
            },
        },
        "errors_total": {"type": "integer"},
    },
}

COMMON_ERRORS: dict[str, str] = {
    "400": "malformed request",
    "401": "missing or unknown API key",
    "403": "the API key lacks the scope (or the job belongs to another service)",
    "404": "no such resource",
    "405": "method not allowed",
    "409": "conflicts with the current state",
    "413": "body, JSON or image over its configured limit",
    "415": "unsupported content or image type",
    "422": "invalid input (validation, JSON depth or key count, bad image)",
    "429": "a bounded queue is full; retry after Retry-After",
    "503": "a dependency is unavailable or the decode budget is full; retry after Retry-After",
}
_REF = {"$ref": "#/components/schemas/ErrorBody"}
_RETRY = {"Retry-After": {"schema": {"type": "integer"}, "description": "seconds"}}


def _error_response(description: str, status: str) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": description,
        "content": {"application/json": {"schema": _REF}},
    }
    if status in ("429", "503"):
        response["headers"] = _RETRY
    return response


def add_error_responses(schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` with ``ErrorBody`` and the common errors on every operation (in place)."""
    schema.setdefault("components", {}).setdefault("schemas", {})["ErrorBody"] = ERROR_BODY
    for path_item in schema.get("paths", {}).values():
        for operation in path_item.values():
            if not isinstance(operation, dict) or "responses" not in operation:
                continue
            responses = operation["responses"]
            for status, description in COMMON_ERRORS.items():
                if status not in responses:
                    responses[status] = _error_response(description, status)
                elif "content" not in responses[status]:
                    responses[status]["content"] = {"application/json": {"schema": _REF}}
            if "422" in responses:  # FastAPI's own HTTPValidationError is not what we send
                responses["422"] = _error_response(COMMON_ERRORS["422"], "422")
    return schema


def install_error_responses(app: FastAPI) -> None:
    """Make ``app.openapi()`` document the common errors on every operation."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title,
                version=app.version,
                openapi_version=app.openapi_version,
                description=app.description,
                routes=app.routes,
            )
            app.openapi_schema = add_error_responses(schema)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
