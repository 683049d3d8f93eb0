"""``create_app`` for the finetune service: datasets, detector jobs, evaluations and the model
registry. It only queues jobs and reads the store: no torch, no ultralytics.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from services.finetune.api.deps import FinetuneState
from services.finetune.api.evaluation_routes import router as evaluation_routes
from services.finetune.api.gallery_routes import galleries
from services.finetune.api.routes import datasets, jobs, models
from services.finetune.config import FinetuneSettings, get_settings
from services.finetune.stores.datasets import DatasetCatalog
from services.finetune.stores.models import ModelRegistry
from shared.http.app import create_service_app
from shared.http.infra import attach_infrastructure
from shared.http.jobs import jobs_router
from shared.http.state import http_state, set_service_state
from shared.storage.base import ObjectStore


def create_app(
    settings: FinetuneSettings | None = None, *, store: ObjectStore | None = None
) -> FastAPI:
    """Build the app; collaborators are built in the lifespan unless given (tests)."""
    settings = settings or get_settings()
    state = FinetuneState(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        attach_infrastructure(app, settings.common, store=store)
        objects = http_state(app).store
        assert objects is not None  # attach_infrastructure set it
        state.registry = ModelRegistry(objects)
        state.datasets = DatasetCatalog(objects)
        yield

    app = create_service_app(service="finetune", settings=settings.common, lifespan=lifespan)
    set_service_state(app, state)
    app.include_router(datasets)
    app.include_router(jobs)
    app.include_router(models)
    app.include_router(evaluation_routes)
    app.include_router(galleries)
    app.include_router(jobs_router())
    return app


def app_factory() -> FastAPI:
    """Entry point for ``uvicorn --factory``."""
    return create_app()
