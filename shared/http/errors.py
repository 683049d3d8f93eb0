"""One error mapping for every service: domain exceptions -> status + stable ``code``."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from shared.errors import SuiteError, UnavailableError
from shared.http.context import request_id_of

log = logging.getLogger(__name__)


def error_body(request: Request, detail: str, code: str, **extra: object) -> dict[str, object]:
    return {"detail": detail, "code": code, "request_id": request_id_of(request.scope), **extra}


async def _suite_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, SuiteError)
    headers = {}
    if isinstance(exc, UnavailableError):
        headers["Retry-After"] = str(exc.retry_after_s)
    return JSONResponse(
        error_body(request, exc.message, exc.code), status_code=exc.http_status, headers=headers
    )


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", "")} for e in exc.errors()]
    return JSONResponse(
        error_body(request, "request validation failed", "validation_error", errors=errors),
        status_code=422,
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
    app.add_exception_handler(Exception, _unhandled)
