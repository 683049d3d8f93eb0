"""``create_app`` for the pretrain service: job submission over HTTP; training runs in workers.

The API validates requests, AGBP configs included (``params.AgbpJobParams`` is torch-free:
unknown keys, values and recipe conflicts are refused at once), and enqueues jobs on
``pretrain``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from services.pretrain.api.deps import PretrainState
from services.pretrain.api.routes import router
from services.pretrain.config import PretrainSettings, get_settings
from shared.http.app import create_service_app
from shared.http.infra import attach_infrastructure
from shared.http.jobs import jobs_router
from shared.http.state import set_service_state
from shared.storage.base import ObjectStore


def create_app(
    settings: PretrainSettings | None = None,
    *,
    store: ObjectStore | None = None,
) -> FastAPI:
    """Build the app; collaborators are built in the lifespan unless given (tests)."""
    settings = settings or get_settings()
    state = PretrainState(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        attach_infrastructure(app, settings.common, store=store)
        yield

    app = create_service_app(service="pretrain", settings=settings.common, lifespan=lifespan)
    set_service_state(app, state)
    app.include_router(jobs_router())
    app.include_router(router)
    return app


def app_factory() -> FastAPI:
    """Entry point for ``uvicorn --factory``."""
    return create_app()
