"""Request-body size limits counted in the ASGI receive path.

A Content-Length check alone is bypassed by chunked uploads, so bytes are counted as they arrive.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterable, Awaitable, Callable, Mapping, MutableMapping
from typing import Any

from shared.errors import PayloadTooLargeError

# Plain ASGI types (structurally the same as Starlette's), so this module needs no framework.
Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

PAYLOAD_TOO_LARGE = "payload_too_large"


class BodyLimitMiddleware:
    """Refuse HTTP requests whose body is larger than ``max_bytes`` with a 413 JSON answer.

    A declared Content-Length above the cap is refused before the app runs. Otherwise body
    bytes are counted as the app receives them; past the cap, ``receive`` raises
    :class:`PayloadTooLargeError`, anything the app then sends is dropped and the middleware
    answers 413 itself. If the app had already started its response, the error is re-raised
    so the server closes the connection. Install it inside the request-id middleware so that
    ``scope["state"]["request_id"]`` is set when the 413 is written.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        """Wrap ``app``.

        Args:
            app: The ASGI application to protect.
            max_bytes: Largest accepted request body; a body of exactly this size passes.
        """
        if max_bytes < 0:
            raise ValueError("max_bytes must be >= 0")
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _declared_length(scope)
        if declared is not None and declared > self.max_bytes:
            await _send_413(send, scope, self.max_bytes)
            return
        guard = _Guard(receive, send, self.max_bytes)
        try:
            await self.app(scope, guard.receive, guard.send)
        except Exception:
            if not guard.exceeded or guard.response_started:
                raise
        if not guard.exceeded:
            return
        if guard.response_started:
            # The status line is gone; only dropping the connection tells the client.
            raise PayloadTooLargeError(_detail(self.max_bytes), code=PAYLOAD_TOO_LARGE)
        await _send_413(send, scope, self.max_bytes)


class _Guard:
    """Counting ``receive`` and gating ``send`` for one request."""

    def __init__(self, receive: Receive, send: Send, max_bytes: int) -> None:
        self._receive = receive
        self._send = send
        self._max_bytes = max_bytes
        self._received = 0
        self.exceeded = False
        self.response_started = False

    async def receive(self) -> Message:
        if self.exceeded:
            raise PayloadTooLargeError(_detail(self._max_bytes), code=PAYLOAD_TOO_LARGE)
        message = await self._receive()
        if message["type"] == "http.request":
            self._received += len(message.get("body", b""))
            if self._received > self._max_bytes:
                self.exceeded = True
                raise PayloadTooLargeError(_detail(self._max_bytes), code=PAYLOAD_TOO_LARGE)
        return message

    async def send(self, message: Message) -> None:
        if self.exceeded:
            return
        if message["type"] == "http.response.start":
            self.response_started = True
        await self._send(message)


async def read_limited(request_stream: AsyncIterable[bytes], max_bytes: int) -> bytes:
    """Read a raw body stream, stopping as soon as it passes ``max_bytes``.

    Args:
        request_stream: Body chunks, e.g. Starlette's ``request.stream()``.
        max_bytes: Largest accepted body; a body of exactly this size passes.

    Returns:
        The whole body.

    Raises:
        PayloadTooLargeError: ``payload_too_large`` once more than ``max_bytes`` arrived.
    """
    chunks: list[bytes] = []
    total = 0
    async for chunk in request_stream:
        total += len(chunk)
        if total > max_bytes:
            aclose = getattr(request_stream, "aclose", None)
            if aclose is not None:
                await aclose()
            raise PayloadTooLargeError(_detail(max_bytes), code=PAYLOAD_TOO_LARGE)
        chunks.append(chunk)
    return b"".join(chunks)


def _detail(max_bytes: int) -> str:
    return f"the request body is larger than the limit of {max_bytes} bytes"


def _declared_length(scope: Scope) -> int | None:
    declared: int | None = None
    for name, value in scope.get("headers", ()):
        if name.lower() != b"content-length":
            continue
        try:
            length = int(value)
        except ValueError:
            continue  # malformed framing is the server's to refuse; bytes are counted anyway
        declared = length if declared is None else max(declared, length)
    return declared


def _request_id(scope: Scope) -> str | None:
    state = scope.get("state")
    if isinstance(state, Mapping):
        value = state.get("request_id")
        return None if value is None else str(value)
    return None


async def _send_413(send: Send, scope: Scope, max_bytes: int) -> None:
    payload = {
        "detail": _detail(max_bytes),
        "code": PAYLOAD_TOO_LARGE,
        "request_id": _request_id(scope),
    }
    body = json.dumps(payload).encode("utf-8")
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode("ascii")),
        # The unread body is still on the wire; do not reuse the connection.
        (b"connection", b"close"),
    ]
    await send({"type": "http.response.start", "status": 413, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})
