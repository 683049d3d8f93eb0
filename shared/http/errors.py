"""One error mapping for every service: domain exceptions -> status + stable ``code``."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from shared.errors import SuiteError, UnauthorizedError, UnavailableError
from shared.http.context import request_id_of
from shared.http.quiet import public_outage
from shared.redact import public_text

log = logging.getLogger(__name__)


def error_body(request: Request, detail: str, code: str, **extra: object) -> dict[str, object]:
    return {"detail": detail, "code": code, "request_id": request_id_of(request.scope), **extra}


def suite_error_response(request: Request, exc: SuiteError) -> JSONResponse:
    """The answer to a domain error: its status, ``code`` and the headers its kind needs.

    Also used by the key check, which runs before routing (outside the exception handlers).
    """
    headers = {}
    detail = exc.message
    if isinstance(exc, UnavailableError):
        headers["Retry-After"] = str(exc.retry_after_s)
    if isinstance(exc, UnauthorizedError):
        headers["WWW-Authenticate"] = "Bearer"
    if exc.http_status >= 500:
        log.warning("%s on %s: %s", exc.code, request.scope.get("path"), exc.message)
        detail = public_outage(exc.code, exc.message)
    elif public_text(detail) != detail:
        log.info("%s on %s: %s", exc.code, request.scope.get("path"), exc.message)
        detail = public_text(detail)
    return JSONResponse(
        error_body(request, detail, exc.code), status_code=exc.http_status, headers=headers
    )


async def _suite_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, SuiteError)
    return suite_error_response(request, exc)


MAX_ERRORS = 20
MAX_LOC_CHARS = 64
MAX_MSG_CHARS = 200


def _clip(value: object, limit: int) -> object:
    if isinstance(value, int):
        return value
    text = str(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def validation_errors(raw: Sequence[Any]) -> tuple[list[dict[str, object]], int]:
    """At most ``MAX_ERRORS`` entries of location and message, never the input itself.

    Returns the entries and the total number of errors.
    """
    errors = [
        {
            "loc": [_clip(part, MAX_LOC_CHARS) for part in e.get("loc", ())],
            "msg": _clip(e.get("msg", ""), MAX_MSG_CHARS),
        }
        for e in list(raw)[:MAX_ERRORS]
    ]
    return errors, len(raw)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors, total = validation_errors(exc.errors())
    extra: dict[str, object] = {"errors": errors}
    if total > len(errors):
        extra["errors_total"] = total
    return JSONResponse(
        error_body(request, "request validation failed", "validation_error", **extra),
        status_code=422,
    )


async def _too_deep(request: Request, exc: Exception) -> JSONResponse:
    # A structure nested past the interpreter's limit (e.g. a JSON field inside a form that
    # the JSON guard does not see) is bad input, not a server fault.
    log.warning("input nested too deeply on %s %s", request.method, request.scope.get("path"))
    return JSONResponse(
        error_body(request, "the input is nested too deeply", "input_too_deep"), status_code=422
    )


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = {404: "route_not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    return JSONResponse(
        error_body(request, str(exc.detail), code),
        status_code=exc.status_code,
        headers=getattr(exc, "headers", None),
    )


async def _unhandled(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.scope.get("path"))
    return JSONResponse(
        error_body(request, "internal server error", "internal_error"), status_code=500
    )


def install_error_handlers(app: FastAPI) -> None:
    """Register the suite's handlers; routes never catch broad exceptions themselves."""
    app.add_exception_handler(SuiteError, _suite_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RecursionError, _too_deep)
    app.add_exception_handler(Exception, _unhandled)
