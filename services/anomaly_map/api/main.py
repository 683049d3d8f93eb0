"""``create_app`` for the anomaly-map service: KeAD maps over HTTP, categories, map jobs."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import anyio
from fastapi import FastAPI

from services.anomaly_map import service
from services.anomaly_map.api.routes import categories, maps
from services.anomaly_map.categories import CategoryStore
from services.anomaly_map.config import AnomalyMapSettings, get_settings
from services.anomaly_map.engine import MapEngine
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
    loader = load_engine or service.build_engine

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        attach_infrastructure(app, settings.common, store=store)
        app.state.categories = CategoryStore(app.state.store)
        app.state.tokenizer = service.prompt_tokenizer(settings)
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
    """Load the encoder off the event loop; missing weights leave the app up but not ready."""
    app.state.engine = None
    app.state.engine_error = None
    try:
        app.state.engine = await anyio.to_thread.run_sync(loader, settings, app.state.store)
    except UnavailableError as exc:  # model_weights_missing / model_weights_invalid
        app.state.engine_error = exc
        app.state.not_ready["clip_weights"] = exc.message


def app_factory() -> FastAPI:
    """Entry point for ``uvicorn --factory``."""
    return create_app()
