"""The console app with a fake upstream behind its proxy (httpx's mock transport)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import httpx
import pytest
from fastapi.testclient import TestClient

from services.console.api.main import create_app
from services.console.config import ConsoleSettings

Handler = Callable[[httpx.Request], httpx.Response]


class Upstream:
    """Answers with ``handler`` and keeps every request the proxy sent."""

    def __init__(self) -> None:
        self.seen: list[httpx.Request] = []
        self.handler: Handler = lambda request: httpx.Response(200, json={"ok": True})

    def __call__(self, request: httpx.Request) -> httpx.Response:
        request.read()
        self.seen.append(request)
        return self.handler(request)


@pytest.fixture
def upstream() -> Upstream:
    return Upstream()


@pytest.fixture
def settings() -> ConsoleSettings:
    return ConsoleSettings(
        anomaly_map_url="http://maps.internal:9001",  # type: ignore[arg-type]
        finetune_url="http://finetune.internal:9003/",  # type: ignore[arg-type]
        poll_interval_ms=700,
    )


@pytest.fixture
def client(settings: ConsoleSettings, upstream: Upstream) -> Iterator[TestClient]:
    app = create_app(settings, transport=httpx.MockTransport(upstream))
    with TestClient(app) as test_client:
        yield test_client
