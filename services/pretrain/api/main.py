"""``create_app`` for the pretrain service: job submission over HTTP; training runs in workers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from services.pretrain.config import PretrainSettings, get_settings
from shared.http.app import create_service_app
from shared.http.auth import ScopeRule
from shared.http.infra import attach_infrastructure
from shared.http.jobs import jobs_router
from shared.storage.base import ObjectStore

SCOPE_RULES = [
    ScopeRule("/v1/pretrain-jobs", "train"),
    ScopeRule("/v1/pseudo-label-jobs", "train"),
    ScopeRule("/v1/jobs", "train"),
]


def create_app(
    settings: PretrainSettings | None = None, *, store: ObjectStore | None = None
) -> FastAPI:
    """Build the app; collaborators are built in the lifespan unless given (tests)."""
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        attach_infrastructure(app, settings.common, store=store)
        yield

    app = create_service_app(
        service="pretrain", settings=settings.common, lifespan=lifespan, scope_rules=SCOPE_RULES
    )
    app.state.service_settings = settings
    app.include_router(jobs_router())
    return app


def app_factory() -> FastAPI:
    """Entry point for ``uvicorn --factory``."""
    return create_app()
