"""``create_app`` for the pretrain service: job submission over HTTP; training runs in workers.

The API validates requests and enqueues jobs on ``pretrain``. Where the training stack is
installed, the lifespan also loads the full AGBP config check (values, recipe conflicts);
the torch-free API image refuses unknown keys and leaves values to the worker.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI

from services.pretrain.api.deps import PretrainState
from services.pretrain.api.routes import router
from services.pretrain.config import PretrainSettings, get_settings
from services.pretrain.usecases.agbp_jobs import ConfigValidator
from shared.http.app import create_service_app
from shared.http.infra import attach_infrastructure
from shared.http.jobs import jobs_router
from shared.http.state import set_service_state
from shared.storage.base import ObjectStore

log = logging.getLogger(__name__)


ValidatorLoader = Callable[[], ConfigValidator | None]


def load_config_validator() -> ConfigValidator | None:
    """``agbp_config`` when torch and the AGBP code import; None in the torch-free image."""
    try:
        from services.pretrain.params import agbp_config
    except ImportError as exc:
        log.info("AGBP config values are checked by the workers only (%s)", exc)
        return None
    return agbp_config


def create_app(
    settings: PretrainSettings | None = None,
    *,
    store: ObjectStore | None = None,
    load_validator: ValidatorLoader = load_config_validator,
) -> FastAPI:
    """Build the app; collaborators are built in the lifespan unless given (tests)."""
    settings = settings or get_settings()
    state = PretrainState(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        attach_infrastructure(app, settings.common, store=store)
        state.config_validator = load_validator()
        yield

    app = create_service_app(service="pretrain", settings=settings.common, lifespan=lifespan)
    set_service_state(app, state)
    app.include_router(jobs_router())
    app.include_router(router)
    return app


def app_factory() -> FastAPI:
    """Entry point for ``uvicorn --factory``."""
    return create_app()
