"""Bounded JSON requests: a size cap per route, depth and key count checked before parsing.

FastAPI parses a JSON body with ``json.loads`` and validates it on the event loop. A deep
body (``[`` x 1000) makes the C decoder raise ``RecursionError`` (a 500), and an object with
500,000 unknown keys holds the loop for tens of seconds while producing one error per key.
``JsonGuardMiddleware`` reads a JSON body first (a JSON cap, far below the image cap),
scans it without recursion, and refuses it with a short 413/422 that never echoes the input;
bodies above ``thread_above`` bytes are scanned in a worker thread, so ``/healthz`` keeps
answering meanwhile. Only a body that passes reaches the app, replayed unchanged.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass

import anyio.to_thread

from shared.http.body import ASGIApp, Message, Receive, Scope, Send, _request_id

_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_BRACKETS = bytes(range(256)).translate(None, b"[]{}")
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


@dataclass(frozen=True)
class JsonLimits:
    """Largest JSON body in bytes, deepest nesting, most object keys in one body."""

    max_bytes: int = 1 << 20
    max_depth: int = 32
    max_keys: int = 10_000


@dataclass(frozen=True)
class JsonProblem:
    status: int
    code: str
    detail: str


def scan_json(body: bytes, limits: JsonLimits) -> JsonProblem | None:
    """Depth and key count of ``body`` without parsing it (strings stripped first).

    Malformed JSON is left to the parser; only the bounds are checked here.
    """
    skeleton = _STRING.sub(b'""', body)
    keys = skeleton.count(b":")
    if keys > limits.max_keys:
        return JsonProblem(
            422,
            "json_too_many_keys",
            f"the JSON body has more than {limits.max_keys} object keys",
        )
    depth = deepest = 0
    for char in skeleton.translate(None, _BRACKETS):
        depth += 1 if char in b"[{" else -1
        if depth > deepest:
            deepest = depth
            if deepest > limits.max_depth:
                return JsonProblem(
                    422,
                    "json_too_deep",
                    f"the JSON body is nested deeper than {limits.max_depth} levels",
                )
    return None


def _is_json(scope: Scope) -> bool:
    for name, value in scope.get("headers", ()):
        if name.lower() == b"content-type":
            media = value.split(b";")[0].strip().lower()
            return bool(media == b"application/json" or media.endswith(b"+json"))
    return False


class JsonGuardMiddleware:
    """Refuse JSON bodies over their route's cap (413) or too deep / too many keys (422).

    Args:
        app: the ASGI app.
        limits: the default limits.
        route_max_bytes: path prefix -> JSON cap for routes that need another size (the
            longest matching prefix wins).
        thread_above: bodies larger than this are scanned off the event loop.
    """

    def __init__(
        self,
        app: ASGIApp,
        limits: JsonLimits,
        route_max_bytes: Mapping[str, int] | None = None,
        thread_above: int = 64 * 1024,
    ) -> None:
        self.app = app
        self.limits = limits
        self.routes = sorted((route_max_bytes or {}).items(), key=lambda kv: -len(kv[0]))
        self.thread_above = thread_above

    def cap_for(self, path: str) -> int:
        for prefix, cap in self.routes:
            if path.startswith(prefix):
                return cap
        return self.limits.max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in _BODY_METHODS or not _is_json(scope):
            await self.app(scope, receive, send)
            return
        cap = self.cap_for(scope["path"])
        body, complete = await _read_capped(receive, cap)
        if not complete:
            await _refuse(send, scope, JsonProblem(413, "json_too_large", _too_large(cap)))
            return
        problem = await self._scan(body)
        if problem is not None:
            await _refuse(send, scope, problem)
            return
        await self.app(scope, _replay(body, receive), send)

    async def _scan(self, body: bytes) -> JsonProblem | None:
        if len(body) <= self.thread_above:
            return scan_json(body, self.limits)
        return await anyio.to_thread.run_sync(scan_json, body, self.limits)


def _too_large(cap: int) -> str:
    return f"the JSON body is larger than this route's limit of {cap} bytes"


async def _read_capped(receive: Receive, cap: int) -> tuple[bytes, bool]:
    """The body, and False when it passed ``cap`` (reading stops there)."""
    chunks: list[bytes] = []
    total, more = 0, True
    while more:
        message = await receive()
        if message["type"] != "http.request":
            break  # disconnect: the app will see an empty body and the client is gone
        chunk = message.get("body", b"")
        total += len(chunk)
        if total > cap:
            return b"", False
        chunks.append(chunk)
        more = bool(message.get("more_body", False))
    return b"".join(chunks), True


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = {"done": False}

    async def replay() -> Message:
        if sent["done"]:
            return await receive()  # waits for the disconnect, as Starlette expects
        sent["done"] = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay


async def _refuse(send: Send, scope: Scope, problem: JsonProblem) -> None:
    payload = {"detail": problem.detail, "code": problem.code, "request_id": _request_id(scope)}
    body = json.dumps(payload).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode("ascii")),
    ]
    if problem.status == 413:
        headers.append((b"connection", b"close"))  # the unread rest is still on the wire
    await send({"type": "http.response.start", "status": problem.status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})
