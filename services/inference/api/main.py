"""``create_app`` for the inference service: ``/detect`` for factory cameras."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from services.inference.api.deps import InferenceState
from services.inference.api.metrics import install_metrics
from services.inference.api.routes import router
from services.inference.config import InferenceSettings, get_settings
from services.inference.runtime.build import build_runtime
from services.inference.runtime.model_runtime import DetectorFactory
from services.inference.runtime.slots import ResidentModel
from services.inference.usecases.sinks import SinkStats, build_dispatcher
from shared.http.app import create_service_app
from shared.http.infra import attach_infrastructure
from shared.http.state import http_state, set_service_state
from shared.ml.cpu_features import CpuFeatures
from shared.storage.base import ObjectStore


def create_app(
    settings: InferenceSettings | None = None,
    *,
    store: ObjectStore | None = None,
    detector_factory: DetectorFactory | None = None,
    cpu: CpuFeatures | None = None,
) -> FastAPI:
    """Build the app; collaborators are built in the lifespan unless given (tests).

    ``cpu`` stands for this machine's CPU (tests give the flags of another host).
    """
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        attach_infrastructure(app, settings.common, store=store, with_jobs=False)
        infra = http_state(app)
        assert infra.store is not None  # attach_infrastructure set it
        runtime = build_runtime(
            settings,
            infra.store,
            factory=detector_factory,
            observer=state.metrics,
            on_default_status=lambda reason: _model_status(app, reason),
            cpu=cpu,
        )
        await runtime.refresh()  # the first load; failures leave the app up but not ready
        state.runtime = runtime
        state.sinks = build_dispatcher(settings)
        poller = asyncio.create_task(runtime.poll_forever(settings.poll_interval_s))
        try:
            yield
        finally:
            poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await poller
            state.runtime = None
            await runtime.close()
            if state.sinks is not None:
                await state.sinks.close()
            state.sinks = None

    app = create_service_app(service="inference", settings=settings.common, lifespan=lifespan)
    state = InferenceState(settings)
    set_service_state(app, state)
    http_state(app).not_ready["model"] = "starting"
    state.metrics = install_metrics(
        http_state(app).metrics.registry, lambda: _resident(state), lambda: _sink_stats(state)
    )
    app.include_router(router)
    return app


def _model_status(app: FastAPI, reason: str | None) -> None:
    """Readiness: /readyz answers 503 naming the reason while no default model is served."""
    not_ready = http_state(app).not_ready
    if reason is None:
        not_ready.pop("model", None)
    else:
        not_ready["model"] = reason


def _resident(state: InferenceState) -> list[ResidentModel]:
    return state.runtime.resident() if state.runtime is not None else []


def _sink_stats(state: InferenceState) -> dict[str, SinkStats]:
    return state.sinks.stats() if state.sinks is not None else {}


def app_factory() -> FastAPI:
    """Entry point for ``uvicorn --factory``."""
    return create_app()
