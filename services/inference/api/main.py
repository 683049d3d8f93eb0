"""``create_app`` for the inference service: ``/detect`` for factory cameras."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from services.inference.config import InferenceSettings, get_settings
from shared.http.app import create_service_app
from shared.http.auth import ScopeRule
from shared.http.infra import attach_infrastructure
from shared.storage.base import ObjectStore

SCOPE_RULES = [
    ScopeRule("/detect", "inspect"),
    ScopeRule("/v1/detect", "inspect"),
]


def create_app(
    settings: InferenceSettings | None = None, *, store: ObjectStore | None = None
) -> FastAPI:
    """Build the app; collaborators are built in the lifespan unless given (tests)."""
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        attach_infrastructure(app, settings.common, store=store, with_jobs=False)
        yield

    app = create_service_app(
        service="inference", settings=settings.common, lifespan=lifespan, scope_rules=SCOPE_RULES
    )
    app.state.service_settings = settings
    return app


def app_factory() -> FastAPI:
    """Entry point for ``uvicorn --factory``."""
    return create_app()
