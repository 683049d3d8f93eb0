"""``create_app`` for the anomaly-map service: KeAD maps over HTTP, categories, map jobs.

The engine needs no weights: the app is ready once storage is; ``/readyz`` lists per method
(``details.methods``) what can serve. CLIP is tried once at start-up so the first KeAD map is
fast where weights exist; without them KeAD/WinCLIP routes answer 503 and ToCoAD serves.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
from fastapi import FastAPI

from services.anomaly_map.api.deps import AnomalyMapState
from services.anomaly_map.api.routes import categories, maps
from services.anomaly_map.config import AnomalyMapSettings, get_settings
from services.anomaly_map.params.catalog import CATALOG
from services.anomaly_map.runtime.engine import MapEngine, build_engine
from services.anomaly_map.stores.categories import CategoryStore
from services.anomaly_map.usecases.categories import prompt_tokenizer
from shared.errors import UnavailableError
from shared.http.app import create_service_app
from shared.http.infra import attach_infrastructure
from shared.http.jobs import jobs_router
from shared.http.state import http_state, service_state, set_service_state
from shared.storage.base import ObjectStore

EngineLoader = Callable[[AnomalyMapSettings, ObjectStore], MapEngine]


def create_app(
    settings: AnomalyMapSettings | None = None,
    *,
    store: ObjectStore | None = None,
    load_engine: EngineLoader | None = None,
) -> FastAPI:
    """Build the app; collaborators are built in the lifespan unless given (tests)."""
    settings = settings or get_settings()
    loader = load_engine or build_engine
    state = AnomalyMapState(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        attach_infrastructure(app, settings.common, store=store)
        state.categories = CategoryStore(_store(app))
        state.tokenizer = prompt_tokenizer(settings)
        await _load_engine(app, state, loader)
        yield
        if state.engine is not None:
            state.engine.close()
        state.engine = None

    app = create_service_app(service="anomaly_map", settings=settings.common, lifespan=lifespan)
    set_service_state(app, state)
    app.include_router(categories)
    app.include_router(maps)
    app.include_router(jobs_router())
    return app


def _store(app: FastAPI) -> ObjectStore:
    store = http_state(app).store
    assert store is not None  # attach_infrastructure ran first
    return store


async def _load_engine(app: FastAPI, state: AnomalyMapState, loader: EngineLoader) -> None:
    """Build the engine and try CLIP off the event loop; missing weights only disable CLIP."""
    state.engine = None
    state.engine_error = None
    http_state(app).readiness_details = method_readiness
    try:
        engine = await anyio.to_thread.run_sync(loader, state.settings, _store(app))
    except UnavailableError as exc:  # a custom loader that needs weights (tests)
        state.engine_error = exc
        http_state(app).not_ready["clip_weights"] = exc.message
        return
    state.engine = engine
    await anyio.to_thread.run_sync(engine.clip.problem)  # load now when weights exist


def method_readiness(app: FastAPI) -> dict[str, Any]:
    """Which scoring methods can serve now (does not load anything)."""
    engine = service_state(app, AnomalyMapState).engine
    if engine is None:
        return {"methods": {}}
    problem = engine.clip.last_problem()
    methods = {}
    for spec in CATALOG.values():
        blocked = problem if spec.needs.clip else None
        state: dict[str, Any] = {"ready": blocked is None, "reason": blocked}
        if spec.needs.fitted_model:
            state["note"] = "needs a finished fit per category version"
        methods[spec.name] = {**state, "label": spec.label, "summary": spec.summary}
    return {"methods": methods}


def app_factory() -> FastAPI:
    """Entry point for ``uvicorn --factory``."""
    return create_app()
