"""``create_app`` for the pipeline service: pipeline records over HTTP and the driver loop.

The service holds no model and runs no training: its driver calls the other four services'
public routes (see :mod:`services.pipeline.usecases.steps`) and keeps the record in the store.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from services.pipeline.api.deps import PipelineState, UploadGate
from services.pipeline.api.files import router as files_router
from services.pipeline.api.routes import router
from services.pipeline.config import PipelineSettings, get_settings
from services.pipeline.stores.pipelines import PipelineStore
from services.pipeline.usecases.clients import ServiceClient
from services.pipeline.usecases.driver import PipelineDriver
from shared.http.app import create_service_app
from shared.http.state import http_state, set_service_state
from shared.storage.base import ObjectStore
from shared.storage.factory import create_store


def _storage_check(app: FastAPI) -> str | None:
    store = http_state(app).store
    if store is None:
        return "no object store attached"
    store.ping()
    return None


def create_app(
    settings: PipelineSettings | None = None,
    *,
    store: ObjectStore | None = None,
    client: ServiceClient | None = None,
) -> FastAPI:
    """Build the app; the store, client and driver are built in the lifespan unless given."""
    settings = settings or get_settings()
    gate = UploadGate(settings.max_concurrent_uploads, int(settings.upload_memory_mb * 2**20))
    state = PipelineState(settings, uploads=gate)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Only the store: the pipeline keeps its own records and queues no Celery jobs.
        infra = http_state(app)
        infra.store = store or create_store(settings.common)
        infra.readiness_checks["storage"] = _storage_check
        state.pipelines = PipelineStore(infra.store)
        service_client = client or ServiceClient(
            settings.urls(), settings.api_key.get_secret_value(), settings.http_timeout_s
        )
        driver = PipelineDriver(
            state.pipelines, service_client, settings.poll_interval_s, settings.lease_ttl_s
        )
        if settings.driver:
            driver.start()
        state.driver = driver
        try:
            yield
        finally:
            driver.stop()
            service_client.close()

    app = create_service_app(service="pipeline", settings=settings.common, lifespan=lifespan)
    set_service_state(app, state)
    app.include_router(router)
    app.include_router(files_router)
    return app


def app_factory() -> FastAPI:
    """Entry point for ``uvicorn --factory``."""
    return create_app()
