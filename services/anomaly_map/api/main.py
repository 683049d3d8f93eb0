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

from services.anomaly_map.api.routes import categories, maps
from services.anomaly_map.config import AnomalyMapSettings, get_settings
from services.anomaly_map.runtime.engine import MapEngine, build_engine
from services.anomaly_map.stores.categories import CategoryStore
from services.anomaly_map.usecases.categories import prompt_tokenizer
from shared.errors import UnavailableError
from shared.http.app import create_service_app
from shared.http.auth import ScopeRule
from shared.http.infra import attach_infrastructure
from shared.http.jobs import jobs_router
from shared.storage.base import ObjectStore

SCOPE_RULES = [
    ScopeRule("/v1/anomaly-maps", "inspect"),
    ScopeRule("/v1/categories", "inspect", frozenset({"GET"})),
    ScopeRule("/v1/anomaly-map-jobs", "train"),
    ScopeRule("/v1/evaluations", "train"),
    ScopeRule("/v1/tocoad-fits", "train"),
    ScopeRule("/v1/jobs", "train"),
]


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

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        attach_infrastructure(app, settings.common, store=store)
        app.state.categories = CategoryStore(app.state.store)
        app.state.tokenizer = prompt_tokenizer(settings)
        await _load_engine(app, settings, loader)
        yield
        if app.state.engine is not None:
            app.state.engine.close()
        app.state.engine = None

    app = create_service_app(
        service="anomaly_map", settings=settings.common, lifespan=lifespan, scope_rules=SCOPE_RULES
    )
    app.state.service_settings = settings
    app.include_router(categories)
    app.include_router(maps)
    app.include_router(jobs_router())
    return app


async def _load_engine(app: FastAPI, settings: AnomalyMapSettings, loader: EngineLoader) -> None:
    """Build the engine and try CLIP off the event loop; missing weights only disable CLIP."""
    app.state.engine = None
    app.state.engine_error = None
    app.state.readiness_details = method_readiness
    try:
        engine = await anyio.to_thread.run_sync(loader, settings, app.state.store)
    except UnavailableError as exc:  # a custom loader that needs weights (tests)
        app.state.engine_error = exc
        app.state.not_ready["clip_weights"] = exc.message
        return
    app.state.engine = engine
    await anyio.to_thread.run_sync(engine.clip.problem)  # load now when weights exist


def method_readiness(app: FastAPI) -> dict[str, Any]:
    """Which scoring methods can serve now (does not load anything)."""
    engine: MapEngine | None = getattr(app.state, "engine", None)
    if engine is None:
        return {"methods": {}}
    problem = engine.clip.last_problem()
    clip = {"ready": problem is None, "reason": problem}
    tocoad = {"ready": True, "reason": None, "note": "needs a finished fit per category version"}
    return {"methods": {"kead": clip, "winclip": dict(clip), "tocoad": tocoad}}


def app_factory() -> FastAPI:
    """Entry point for ``uvicorn --factory``."""
    return create_app()
