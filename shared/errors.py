"""Domain exceptions shared by every service.

Service and storage code raise these; each service's ``api/errors.py`` (through
``shared.http.errors``) maps them to HTTP status codes with a stable machine-readable ``code``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


class SuiteError(Exception):
    """Base of every expected failure. ``code`` is stable and machine-readable."""

    code = "error"
    http_status = 500

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class InvalidInputError(SuiteError):
    """The caller sent something we cannot use (bad image, bad config, bad key)."""

    code = "invalid_input"
    http_status = 422


class PayloadTooLargeError(InvalidInputError):
    """A body, file or image is larger than the configured cap."""

    code = "payload_too_large"
    http_status = 413


class UnsupportedMediaError(InvalidInputError):
    """The content type or image format is not on the allow-list."""

    code = "unsupported_media_type"
    http_status = 415


class NotAcceptableError(InvalidInputError):
    """The Accept header names no representation the route can produce."""

    code = "not_acceptable"
    http_status = 406


class NotFoundError(SuiteError):
    """A named resource (category, job, model, object) does not exist."""

    code = "not_found"
    http_status = 404


class ConflictError(SuiteError):
    """The request conflicts with the current state (e.g. cancel a finished job)."""

    code = "conflict"
    http_status = 409


class UnauthorizedError(SuiteError):
    """No or unknown API key."""

    code = "unauthorized"
    http_status = 401


class ForbiddenError(SuiteError):
    """The API key lacks the scope this route needs."""

    code = "forbidden"
    http_status = 403


class UnavailableError(SuiteError):
    """A dependency (storage, broker, model weights) is not available right now."""

    code = "unavailable"
    http_status = 503

    def __init__(self, message: str, *, code: str | None = None, retry_after_s: int = 5) -> None:
        super().__init__(message, code=code)
        self.retry_after_s = retry_after_s


class OverloadedError(UnavailableError):
    """A bounded queue is full; the caller should retry later."""

    code = "overloaded"
    http_status = 429


class JobCanceledError(SuiteError):
    """Raised inside a job when a cooperative cancel was requested."""

    code = "canceled"
    http_status = 409


@contextmanager
def naming(subject: str) -> Iterator[None]:
    """Say which object a ``SuiteError`` raised inside is about (``"<subject>: ..."``), so a
    refusal met halfway through a dataset names the file, not only what was wrong with it."""
    try:
        yield
    except SuiteError as exc:
        if not exc.message.startswith(f"{subject}: "):
            exc.message = f"{subject}: {exc.message}"
            exc.args = (exc.message,)
        raise
