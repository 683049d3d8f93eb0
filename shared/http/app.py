"""``create_service_app``: the FastAPI app every service starts from.

It wires request ids, the body cap, API-key scopes, Prometheus metrics, the error mapping,
``/healthz`` (the process is up), ``/readyz`` (what is missing: storage, broker, weights) and
``/metrics``. Services add their routers and a lifespan that loads heavy objects.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from contextlib import AbstractAsyncContextManager
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from shared.config import CommonSettings
from shared.http.auth import parse_keys, request_scopes
from shared.http.body import BodyLimitMiddleware
from shared.http.context import DecodeBudgetMiddleware, RequestIdMiddleware
from shared.http.docs import DOCS_ACCESS, install_offline_docs
from shared.http.errors import install_error_handlers
from shared.http.gate import ScopeGate
from shared.http.jsonguard import JsonGuardMiddleware, JsonLimits
from shared.http.metrics import HttpMetrics, MetricsMiddleware
from shared.http.openapi import install_error_responses
from shared.http.quiet import HeadAsGetMiddleware, RelativeRedirectMiddleware
from shared.http.scopes import open_route
from shared.http.state import HttpState, ReadinessCheck, http_state
from shared.imaging.budget import DecodeBounds, PixelBudget

log = logging.getLogger(__name__)

Lifespan = Callable[[FastAPI], AbstractAsyncContextManager[None]]


def _readiness(app: FastAPI) -> dict[str, str | None]:
    state = http_state(app)
    results: dict[str, str | None] = dict(state.not_ready)
    for name, check in state.readiness_checks.items():
        try:
            results[name] = check(app)
        except Exception as exc:  # a check that throws means "not ready", with the reason
            results[name] = f"{type(exc).__name__}: {exc}"
    return results


def create_service_app(
    *,
    service: str,
    settings: CommonSettings,
    lifespan: Lifespan | None,
    readiness_checks: dict[str, ReadinessCheck] | None = None,
    version: str = "0.1.0",
    json_route_max_bytes: Mapping[str, int] | None = None,
) -> FastAPI:
    """A FastAPI app with the suite's common parts; add routers to it.

    Every router added must declare its scope (``shared.http.scopes.require_scope``) or
    ``open_route()``; with keys configured, a route declaring neither answers 403 to every key.
    ``json_route_max_bytes`` (path prefix -> bytes) overrides ``HTTP_MAX_JSON_KB`` for routes
    whose JSON bodies are legitimately larger or smaller.
    """
    # docs_url/redoc_url None: FastAPI's own pages load from a CDN; ours are local files.
    app = FastAPI(
        title=f"AGSSP {service}",
        version=version,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    install_offline_docs(app)
    metrics = HttpMetrics(service)
    budget = PixelBudget(
        DecodeBounds(
            max_pixels=settings.http.image_pixel_cap(service),
            budget_pixels=settings.http.decode_budget_pixels,
        )
    )
    app.state.http = HttpState(
        service, settings, metrics, budget, readiness_checks=dict(readiness_checks or {})
    )
    install_error_handlers(app)
    install_error_responses(app)
    _add_probes(app, metrics)
    # Starlette applies the last-added middleware first: request id, then auth, then limits.
    app.add_middleware(
        JsonGuardMiddleware,
        limits=JsonLimits(
            max_bytes=settings.http.max_json_kb * 1024,
            max_depth=settings.http.max_json_depth,
            max_keys=settings.http.max_json_keys,
        ),
        route_max_bytes=json_route_max_bytes,
    )
    app.add_middleware(HeadAsGetMiddleware)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    app.add_middleware(DecodeBudgetMiddleware, budget=budget)
    app.add_middleware(BodyLimitMiddleware, max_bytes=int(settings.http.max_body_mb * 2**20))
    app.add_middleware(ScopeGate, keys=parse_keys(settings.auth.api_keys), fixed=DOCS_ACCESS)
    app.add_middleware(RelativeRedirectMiddleware)
    app.add_middleware(RequestIdMiddleware)
    if settings.http.cors_origins:
        # Outermost, so preflights are answered before the key check (browsers send none).
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(settings.http.cors_origins),
            allow_methods=["GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS"],
            allow_headers=["authorization", "x-api-key", "content-type", "x-request-id"],
            expose_headers=["x-request-id", "retry-after", "x-image-score"],
        )
    if not settings.auth.api_keys:
        log.warning("%s: AUTH_API_KEYS is empty, every route is open (loopback default)", service)
    return app


OPEN = open_route()


def _add_probes(app: FastAPI, metrics: HttpMetrics) -> None:
    """Probes are open: orchestrators and Prometheus carry no key."""

    @app.get("/healthz", tags=["probes"], include_in_schema=False, dependencies=[OPEN])
    def healthz() -> dict[str, Any]:
        """The process is up."""
        return {"status": "ok", "service": http_state(app).service}

    @app.get("/readyz", tags=["probes"], include_in_schema=False, dependencies=[OPEN])
    def readyz(request: Request) -> JSONResponse:
        """Ready when every dependency check passes; lists what is missing otherwise.

        With API keys configured, a caller without a known key learns only ready / not
        ready per component; the reasons (addresses, buckets, errors) need a key.
        """
        results = _readiness(app)
        missing = {name: why for name, why in results.items() if why}
        state = http_state(app)
        scopes = request_scopes(request.scope, bool(state.settings.auth.api_keys))
        quiet = scopes is not None and not scopes
        body: dict[str, Any] = {
            "ready": not missing,
            "service": state.service,
            "missing": dict.fromkeys(missing, "not ready") if quiet else missing,
            "checks": sorted(results),
        }
        # Optional service detail that does not decide readiness (e.g. anomaly_map: per method).
        if state.readiness_details is not None and not quiet:
            body["details"] = state.readiness_details(app)
        return JSONResponse(body, status_code=200 if not missing else 503)

    @app.get("/metrics", tags=["probes"], include_in_schema=False, dependencies=[OPEN])
    def metrics_endpoint(request: Request) -> Response:
        """Prometheus text format."""
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)
