"""``create_app`` for the console: pages, ``/static`` and the ``/api/<service>/…`` proxy."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

import httpx
from fastapi import APIRouter, FastAPI, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.background import BackgroundTask

from services.console import pages, proxy
from services.console.config import ConsoleSettings, get_settings
from shared.http.app import create_service_app
from shared.http.scopes import open_route
from shared.http.state import available, service_state, set_service_state

PROXY_METHODS = ["GET", "POST", "PUT", "DELETE"]
# Pages load only what the console serves: the browser refuses anything from another host.
PAGE_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data: blob:; connect-src 'self'; object-src 'none'; base-uri 'self'; "
    "form-action 'self'; frame-ancestors 'none'"
)


@dataclass
class ConsoleState:
    """The console's settings, and the proxy's HTTP client while the app runs."""

    settings: ConsoleSettings
    client: httpx.AsyncClient | None = None


def _state(request: Request) -> ConsoleState:
    return service_state(request.app, ConsoleState)


def _client(request: Request) -> httpx.AsyncClient:
    return available(request, _state(request).client, "proxy_client")


def _settings(request: Request) -> ConsoleSettings:
    return _state(request).settings


def _page_config(settings: ConsoleSettings) -> dict[str, object]:
    return {"poll_interval_ms": settings.poll_interval_ms, "services": list(settings.upstreams())}


def _page_endpoint(slug: str) -> Callable[[Request], HTMLResponse]:
    def endpoint(request: Request) -> HTMLResponse:
        body = pages.render(slug, _page_config(_settings(request)))
        return HTMLResponse(body, headers={"Content-Security-Policy": PAGE_CSP})

    endpoint.__name__ = f"page_{slug}"
    return endpoint


def page_router() -> APIRouter:
    router = APIRouter(include_in_schema=False, dependencies=[open_route()])

    @router.get("/")
    def home() -> RedirectResponse:
        return RedirectResponse("/inspect", status_code=307)

    for page in pages.PAGES:
        router.add_api_route(
            f"/{page.slug}", _page_endpoint(page.slug), methods=["GET"], response_class=HTMLResponse
        )
    return router


async def _forward(service: str, path: str, request: Request) -> Response:
    """Forward a request, with the caller's API key, to one of the APIs."""
    url = proxy.target_url(_settings(request).upstreams(), service, path)
    answer = await proxy.forward(
        _client(request),
        service=service,
        method=request.method,
        url=url,
        query=request.url.query,
        headers=dict(request.headers),
        body=request.stream() if _has_body(request) else b"",
    )
    return StreamingResponse(
        answer.chunks, status_code=answer.status, headers=answer.headers,
        background=BackgroundTask(answer.close),
    )  # fmt: skip


def _has_body(request: Request) -> bool:
    headers = request.headers
    return "transfer-encoding" in headers or int(headers.get("content-length") or 0) > 0


def proxy_router() -> APIRouter:
    # Open here: the API behind the proxy checks the forwarded key.
    router = APIRouter(tags=["proxy"], dependencies=[open_route()])
    for method in PROXY_METHODS:  # one route per method: each gets its own operation id
        router.add_api_route(
            "/api/{service}/{path:path}",
            _forward,
            methods=[method],
            name=f"proxy_{method.lower()}",
            operation_id=f"proxy_{method.lower()}",
            summary=f"{method} through the proxy to one of the APIs",
        )
    return router


def create_app(
    settings: ConsoleSettings | None = None, *, transport: httpx.AsyncBaseTransport | None = None
) -> FastAPI:
    """Build the console app; the proxy's HTTP client lives as long as the app.

    ``transport`` replaces the network under the proxy (tests hand in a fake upstream).
    """
    settings = settings or get_settings()
    state = ConsoleState(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        timeout = httpx.Timeout(settings.proxy_timeout_s, connect=5.0)
        client = httpx.AsyncClient(timeout=timeout, follow_redirects=False, transport=transport)
        async with client:
            state.client = client
            yield

    # The console checks no key itself: pages and assets are public, and every API call is
    # forwarded with the user's key to the API that checks it (see proxy.py).
    common = settings.common.model_copy(
        update={"auth": settings.common.auth.model_copy(update={"api_keys": []})}
    )
    app = create_service_app(service="console", settings=common, lifespan=lifespan)
    set_service_state(app, state)
    app.mount("/static", StaticFiles(directory=pages.STATIC_DIR), name="static")
    app.include_router(proxy_router())
    app.include_router(page_router())
    return app


def app_factory() -> FastAPI:
    """Entry point for ``uvicorn --factory``."""
    return create_app()
