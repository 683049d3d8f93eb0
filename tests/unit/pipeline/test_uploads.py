"""Uploads stream to the store: large bodies with bounded memory, a cap on uploads at once
(503 + Retry-After past it), and a client that leaves mid-body stores nothing and is no
server error."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from services.pipeline.api.main import create_app
from services.pipeline.config import PipelineSettings
from shared.config import CommonSettings, PathSettings
from shared.storage.filesystem import FileObjectStore

pytestmark = pytest.mark.unit
MB = 2**20


def _app(tmp_path: Path, store: FileObjectStore, **settings: Any) -> FastAPI:
    common = CommonSettings(paths=PathSettings(home=tmp_path / "home"))
    return create_app(PipelineSettings(common=common, driver=False, **settings), store=store)


async def _client(app: FastAPI) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app)
    return httpx.AsyncClient(transport=transport, base_url="http://pipeline")


async def _chunks(total: int, gate: asyncio.Event | None = None) -> AsyncIterator[bytes]:
    sent = 0
    while sent < total:
        piece = bytes([sent // MB % 251]) * min(MB, total - sent)
        sent += len(piece)
        yield piece
        if gate is not None and sent >= MB:
            await gate.wait()


def test_a_large_upload_streams_through_a_small_memory_spool(tmp_path: Path) -> None:
    store = FileObjectStore(tmp_path / "store")
    app = _app(tmp_path, store, upload_memory_mb=1)

    async def scenario() -> httpx.Response:
        async with app.router.lifespan_context(app), await _client(app) as client:
            return await client.put("/v1/uploads/big/scan.tif", content=_chunks(12 * MB))

    answer = asyncio.run(scenario())
    assert answer.status_code == 201, answer.text
    assert answer.json() == {"key": "uploads/big/scan.tif", "size": 12 * MB}
    stored = store.get_bytes("uploads/big/scan.tif")
    assert len(stored) == 12 * MB
    assert stored[5 * MB] == 5


def test_past_the_cap_an_upload_is_told_to_retry_and_the_first_one_finishes(
    tmp_path: Path,
) -> None:
    # given a cap of one upload at once and a slow client holding it
    store = FileObjectStore(tmp_path / "store")
    app = _app(tmp_path, store, max_concurrent_uploads=1)

    async def scenario() -> tuple[httpx.Response, httpx.Response, httpx.Response]:
        async with app.router.lifespan_context(app), await _client(app) as client:
            release = asyncio.Event()
            slow = asyncio.create_task(
                client.put("/v1/uploads/a.bin", content=_chunks(3 * MB, release))
            )
            await asyncio.sleep(0.2)  # the slow upload holds the only slot
            # when a second client sends meanwhile, and again after the first finished
            busy = await client.put("/v1/uploads/b.bin", content=b"x" * 1000)
            release.set()
            first = await slow
            later = await client.put("/v1/uploads/b.bin", content=b"x" * 1000)
            return busy, first, later

    busy, first, later = asyncio.run(scenario())
    # then the second is refused with a retry hint, and nothing else is lost
    assert busy.status_code == 503
    assert busy.json()["code"] == "uploads_busy"
    assert int(busy.headers["retry-after"]) > 0
    assert first.status_code == 201
    assert later.status_code == 201
    assert store.size("uploads/a.bin") == 3 * MB


def test_a_client_that_leaves_mid_body_stores_nothing_and_logs_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # given a client that sends half a body, then disconnects
    store = FileObjectStore(tmp_path / "store")
    app = _app(tmp_path, store)
    messages = [
        {"type": "http.request", "body": b"x" * 1000, "more_body": True},
        {"type": "http.disconnect"},
    ]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "PUT",
        "scheme": "http", "path": "/v1/uploads/half.bin", "raw_path": b"/v1/uploads/half.bin",
        "query_string": b"", "root_path": "", "client": ("127.0.0.1", 5000),
        "server": ("127.0.0.1", 80), "headers": [(b"content-length", b"100000")],
    }  # fmt: skip

    async def scenario() -> None:
        async with app.router.lifespan_context(app):
            await app(scope, receive, send)

    # when
    with caplog.at_level(logging.INFO):
        asyncio.run(scenario())
    # then nothing is stored, the answer is no 5xx, and one line (no traceback) says why
    assert not store.exists("uploads/half.bin")
    start = next(m for m in sent if m["type"] == "http.response.start")
    assert start["status"] < 500
    lines = [r for r in caplog.records if "went away" in r.getMessage()]
    assert len(lines) == 1
    assert not any(r.exc_info for r in caplog.records)
