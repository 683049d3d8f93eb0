"""BodyLimitMiddleware and read_limited cap request bodies, with or without Content-Length."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from fastapi import FastAPI, UploadFile
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.testclient import TestClient

from shared.errors import PayloadTooLargeError
from shared.http.body import BodyLimitMiddleware, Message, Receive, Scope, Send, read_limited

CAP = 10


class EchoApp:
    """Reads the whole body through ``receive``, then answers 200 with it."""

    def __init__(self, respond_first: bool = False, swallow: bool = False) -> None:
        self.calls = 0
        self.receives = 0
        self.respond_first = respond_first
        self.swallow = swallow

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.calls += 1
        if self.respond_first:
            await send({"type": "http.response.start", "status": 200, "headers": []})
        try:
            body = await self._read(receive)
        except PayloadTooLargeError:
            if not self.swallow:
                raise
            body = b"partial"
        if not self.respond_first:
            await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": body, "more_body": False})

    async def _read(self, receive: Receive) -> bytes:
        body, more = b"", True
        while more:
            message = await receive()
            self.receives += 1
            body += message.get("body", b"")
            more = message.get("more_body", False)
        return body


def _scope(headers: list[tuple[bytes, bytes]] | None = None, **extra: Any) -> dict[str, Any]:
    return {"type": "http", "method": "POST", "path": "/", "headers": headers or [], **extra}


def _run(
    app: Any, scope: dict[str, Any], chunks: list[bytes], sent: list[Message] | None = None
) -> list[Message]:
    """Drive an ASGI app with the chunks as one streamed body; return what it sent."""
    incoming = [
        {"type": "http.request", "body": chunk, "more_body": i < len(chunks) - 1}
        for i, chunk in enumerate(chunks)
    ]
    sent = [] if sent is None else sent

    async def receive() -> Message:
        return incoming.pop(0) if incoming else {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    return sent


def _status_and_body(sent: list[Message]) -> tuple[int, bytes]:
    start = next(m for m in sent if m["type"] == "http.response.start")
    return start["status"], b"".join(m.get("body", b"") for m in sent[1:])


def test_declared_length_over_cap_is_refused_without_running_the_app() -> None:
    # given
    app = EchoApp()
    scope = _scope([(b"content-length", b"11")])
    # when
    sent = _run(BodyLimitMiddleware(app, CAP), scope, [b"x" * 11])
    # then
    assert (_status_and_body(sent)[0], app.calls, app.receives) == (413, 0, 0)


def test_refusal_is_json_with_code_and_request_id() -> None:
    # given
    scope = _scope([(b"content-length", b"99")], state={"request_id": "req-7"})
    # when
    sent = _run(BodyLimitMiddleware(EchoApp(), CAP), scope, [b""])
    # then
    body = json.loads(_status_and_body(sent)[1])
    assert (body["code"], body["request_id"], bool(body["detail"])) == (
        "payload_too_large",
        "req-7",
        True,
    )


def test_chunked_body_over_cap_is_refused() -> None:
    # given: no Content-Length, three chunks adding up to 12 bytes
    app = EchoApp()
    # when
    sent = _run(BodyLimitMiddleware(app, CAP), _scope(), [b"abcd", b"efgh", b"ijkl"])
    # then: the app's 200 never went out
    assert [m.get("status") for m in sent if m["type"] == "http.response.start"] == [413]


def test_app_that_swallows_the_error_still_gets_a_413() -> None:
    # given
    app = EchoApp(swallow=True)
    # when
    sent = _run(BodyLimitMiddleware(app, CAP), _scope(), [b"x" * 6, b"y" * 6])
    # then
    assert _status_and_body(sent)[0] == 413


def test_body_under_cap_passes_through_unchanged() -> None:
    # given
    chunks = [b"abc", b"def"]
    # when
    sent = _run(BodyLimitMiddleware(EchoApp(), CAP), _scope([(b"content-length", b"6")]), chunks)
    # then
    assert _status_and_body(sent) == (200, b"abcdef")


def test_body_of_exactly_the_cap_passes() -> None:
    # given / when
    sent = _run(BodyLimitMiddleware(EchoApp(), CAP), _scope(), [b"x" * 5, b"y" * 5])
    # then
    assert _status_and_body(sent) == (200, b"x" * 5 + b"y" * 5)


def test_overflow_after_response_started_aborts_the_connection() -> None:
    # given: the app answers before reading, so the status line is already out
    app = EchoApp(respond_first=True)
    sent: list[Message] = []
    # when
    with pytest.raises(PayloadTooLargeError):
        _run(BodyLimitMiddleware(app, CAP), _scope(), [b"x" * 20], sent)
    # then: no body and no second status; raising tells the ASGI server to drop the connection
    assert [(m["type"], m.get("status")) for m in sent] == [("http.response.start", 200)]


def test_non_http_scopes_pass_through() -> None:
    # given
    seen: list[str] = []

    async def lifespan_app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(scope["type"])

    # when
    _run(BodyLimitMiddleware(lifespan_app, CAP), {"type": "lifespan"}, [])
    # then
    assert seen == ["lifespan"]


def test_starlette_app_refuses_a_streamed_body_without_content_length() -> None:
    # given
    async def upload(request: Request) -> Response:
        return Response(await request.body())

    app = Starlette(routes=[Route("/upload", upload, methods=["POST"])])
    app.add_middleware(BodyLimitMiddleware, max_bytes=CAP)
    client = TestClient(app)
    # when: a generator body makes httpx send Transfer-Encoding: chunked
    response = client.post("/upload", content=(chunk for chunk in [b"a" * 8, b"b" * 8]))
    # then
    assert (response.status_code, response.json()["code"]) == (413, "payload_too_large")


def test_fastapi_form_upload_streamed_over_cap_is_a_413_not_fastapis_400() -> None:
    # given: FastAPI turns any error while parsing a form into 400; the middleware overrides it
    api = FastAPI()

    @api.post("/detect")
    async def detect(file: UploadFile) -> dict[str, int]:
        return {"size": len(await file.read())}

    api.add_middleware(BodyLimitMiddleware, max_bytes=100)
    body = (
        b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n'
        b"Content-Type: image/png\r\n\r\n" + b"x" * 500 + b"\r\n--b--\r\n"
    )
    # when
    response = TestClient(api).post(
        "/detect",
        content=(part for part in [body[:50], body[50:]]),
        headers={"content-type": "multipart/form-data; boundary=b"},
    )
    # then
    assert (response.status_code, response.json()["code"]) == (413, "payload_too_large")


async def _stream(chunks: list[bytes], pulled: list[bytes]) -> AsyncIterator[bytes]:
    for chunk in chunks:
        pulled.append(chunk)
        yield chunk


def test_read_limited_returns_a_body_within_the_cap() -> None:
    # given
    pulled: list[bytes] = []
    # when
    body = asyncio.run(read_limited(_stream([b"ab", b"cd"], pulled), CAP))
    # then
    assert body == b"abcd"


def test_read_limited_stops_reading_once_over_the_cap() -> None:
    # given
    pulled: list[bytes] = []
    stream = _stream([b"x" * 6, b"y" * 6, b"z" * 6], pulled)
    # when
    with pytest.raises(PayloadTooLargeError) as excinfo:
        asyncio.run(read_limited(stream, CAP))
    # then
    assert (excinfo.value.code, excinfo.value.http_status, len(pulled)) == (
        "payload_too_large",
        413,
        2,
    )
