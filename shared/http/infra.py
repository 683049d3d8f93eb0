"""Infrastructure every API needs: the object store, job records and a Celery producer.

Built in the lifespan (never at import) and kept on the app's :class:`HttpState` as ``store``,
``jobs``, ``celery``; readiness checks report storage and broker problems by name.
"""

from __future__ import annotations

from fastapi import FastAPI

from shared.config import CommonSettings
from shared.http.state import http_state
from shared.jobs.celery_app import make_celery
from shared.jobs.store import JobStore
from shared.jobs.stuck import StuckJobsCollector
from shared.storage.base import ObjectStore
from shared.storage.factory import create_store


def attach_infrastructure(
    app: FastAPI,
    settings: CommonSettings,
    *,
    store: ObjectStore | None = None,
    with_jobs: bool = True,
) -> None:
    """Set ``store``, ``jobs`` and (optionally) ``celery`` on the app's state; add checks."""
    state = http_state(app)
    state.store = store or create_store(settings)
    state.jobs = JobStore(state.store)
    state.readiness_checks["storage"] = storage_check
    state.metrics.registry.register(StuckJobsCollector(state.jobs, settings.jobs))
    if with_jobs:
        state.celery = make_celery(settings, name=f"{state.service}-producer")
        state.readiness_checks["broker"] = broker_check


def storage_check(app: FastAPI) -> str | None:
    store = http_state(app).store
    if store is None:
        return "no object store attached"
    store.ping()
    return None


def broker_check(app: FastAPI) -> str | None:
    state = http_state(app)
    settings = state.settings
    if not settings.redis.url:
        folder = settings.broker_dir() / "queue"
        return None if folder.is_dir() else f"embedded broker folder {folder} is missing"
    if state.celery is None:
        return "no job producer attached"
    with state.celery.connection_for_write() as conn:
        conn.ensure_connection(max_retries=1, timeout=2)
    return None
