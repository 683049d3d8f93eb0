"""Quiet answers: no internal addresses in error bodies, redirects that never use Host.

* 4xx bodies and job records go out without URLs, absolute paths or bucket names
  (``shared.redact.public_text``); 5xx bodies also without IP addresses or ``host:port``
  pairs (``scrub``); a
  storage or broker outage is named by kind only ("the object store is unavailable"), the
  full message goes to the log.
* Starlette's trailing-slash redirect builds an absolute ``Location`` from the request's
  ``Host`` header, so a forged Host ends up in the answer. ``RelativeRedirectMiddleware``
  rewrites any absolute ``Location`` to its path and query (RFC 9110 allows relative ones).
"""

from __future__ import annotations

from urllib.parse import urlsplit

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared.redact import scrub

_REDIRECTS = frozenset({301, 302, 303, 307, 308})

PUBLIC_OUTAGES = {
    "storage": "the object store is unavailable; retry later",
    "bucket": "the object store is unavailable; retry later",
    "broker": "the job broker is unavailable; retry later",
}


def public_outage(code: str, message: str) -> str:
    """What a 503 body says: the dependency's kind for infrastructure codes, else scrubbed."""
    for prefix, sentence in PUBLIC_OUTAGES.items():
        if code.startswith(prefix):
            return sentence
    return scrub(message)


def relative_location(location: bytes) -> bytes:
    """``http://host/p?q`` -> ``/p?q``; relative locations are returned as they are."""
    parts = urlsplit(location.decode("latin-1"))
    if not parts.scheme and not parts.netloc:
        return location
    path = parts.path or "/"
    return (path + (f"?{parts.query}" if parts.query else "")).encode("latin-1")


class RelativeRedirectMiddleware:
    """Make every redirect's ``Location`` relative, so the Host header never reaches it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_relative(message: Message) -> None:
            if message["type"] == "http.response.start" and message["status"] in _REDIRECTS:
                message["headers"] = [
                    (name, relative_location(value) if name.lower() == b"location" else value)
                    for name, value in message.get("headers", [])
                ]
            await send(message)

        await self.app(scope, receive, send_relative)


class HeadAsGetMiddleware:
    """Answer ``HEAD`` like ``GET`` without the body (FastAPI routes list GET only).

    The key check maps HEAD to GET's scope, so a key that may GET a path may HEAD it.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return
        finished = {"done": False}

        async def send_headers_only(message: Message) -> None:
            if message["type"] == "http.response.body":
                if finished["done"] or message.get("more_body", False):
                    return
                finished["done"] = True
                message = {"type": "http.response.body", "body": b"", "more_body": False}
            await send(message)

        await self.app({**scope, "method": "GET"}, receive, send_headers_only)
