"""Infrastructure every API needs: the object store, job records and a Celery producer.

Built in the lifespan (never at import) and exposed on ``app.state`` as ``store``, ``jobs``,
``celery``; readiness checks report storage and broker problems by name.
"""

from __future__ import annotations

from fastapi import FastAPI

from shared.config import CommonSettings
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
    """Put ``store``, ``jobs`` and (optionally) ``celery`` on ``app.state``; add checks."""
    app.state.store = store or create_store(settings)
    app.state.jobs = JobStore(app.state.store)
    app.state.readiness_checks["storage"] = storage_check
    metrics = getattr(app.state, "http_metrics", None)
    if metrics is not None:
        metrics.registry.register(StuckJobsCollector(app.state.jobs, settings.jobs))
    if with_jobs:
        app.state.celery = make_celery(settings, name=f"{app.state.service}-producer")
        app.state.readiness_checks["broker"] = broker_check


def storage_check(app: FastAPI) -> str | None:
    store: ObjectStore = app.state.store
    store.ping()
    return None


def broker_check(app: FastAPI) -> str | None:
    settings: CommonSettings = app.state.settings
    if not settings.redis.url:
        folder = settings.broker_dir() / "queue"
        return None if folder.is_dir() else f"embedded broker folder {folder} is missing"
    with app.state.celery.connection_for_write() as conn:
        conn.ensure_connection(max_retries=1, timeout=2)
    return None
