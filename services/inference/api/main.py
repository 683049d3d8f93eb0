"""``create_app`` for the inference service: ``/detect`` for factory cameras."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from services.inference.api.metrics import install_metrics
from services.inference.api.routes import router
from services.inference.config import InferenceSettings, get_settings
from services.inference.runtime.build import build_runtime
from services.inference.runtime.model_runtime import DetectorFactory, ModelRuntime
from services.inference.runtime.slots import ResidentModel
from services.inference.usecases.sinks import SinkDispatcher, SinkStats, build_dispatcher
from shared.http.app import create_service_app
from shared.http.auth import ScopeRule
from shared.http.infra import attach_infrastructure
from shared.storage.base import ObjectStore

# /v1/models and /v1/models/reload match no rule, so they need admin (deny by default).
SCOPE_RULES = [
    ScopeRule("/detect", "inspect"),
    ScopeRule("/v1/detect", "inspect"),
]


def create_app(
    settings: InferenceSettings | None = None,
    *,
    store: ObjectStore | None = None,
    detector_factory: DetectorFactory | None = None,
) -> FastAPI:
    """Build the app; collaborators are built in the lifespan unless given (tests)."""
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        attach_infrastructure(app, settings.common, store=store, with_jobs=False)
        runtime = build_runtime(
            settings,
            app.state.store,
            factory=detector_factory,
            observer=app.state.inference_metrics,
            on_default_status=lambda reason: _model_status(app, reason),
        )
        await runtime.refresh()  # the first load; failures leave the app up but not ready
        app.state.runtime = runtime
        app.state.sinks = build_dispatcher(settings)
        poller = asyncio.create_task(runtime.poll_forever(settings.poll_interval_s))
        try:
            yield
        finally:
            poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await poller
            app.state.runtime = None
            await runtime.close()
            if app.state.sinks is not None:
                await app.state.sinks.close()
            app.state.sinks = None

    app = create_service_app(
        service="inference", settings=settings.common, lifespan=lifespan, scope_rules=SCOPE_RULES
    )
    app.state.service_settings = settings
    app.state.runtime = None
    app.state.sinks = None
    app.state.not_ready["model"] = "starting"
    app.state.inference_metrics = install_metrics(
        app.state.http_metrics.registry, lambda: _resident(app), lambda: _sink_stats(app)
    )
    app.include_router(router)
    return app


def _model_status(app: FastAPI, reason: str | None) -> None:
    """Readiness: /readyz answers 503 naming the reason while no default model is served."""
    if reason is None:
        app.state.not_ready.pop("model", None)
    else:
        app.state.not_ready["model"] = reason


def _resident(app: FastAPI) -> list[ResidentModel]:
    runtime: ModelRuntime | None = getattr(app.state, "runtime", None)
    return runtime.resident() if runtime is not None else []


def _sink_stats(app: FastAPI) -> dict[str, SinkStats]:
    sinks: SinkDispatcher | None = getattr(app.state, "sinks", None)
    return sinks.stats() if sinks is not None else {}


def app_factory() -> FastAPI:
    """Entry point for ``uvicorn --factory``."""
    return create_app()
