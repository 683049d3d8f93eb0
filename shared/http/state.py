"""Typed application state: two objects on ``app.state`` instead of loose named attributes.

``app.state.http`` is the :class:`HttpState` every app has (settings, probes, metrics, and
the store / job records / Celery producer once the lifespan attached them);
``app.state.services`` is the service's own dataclass (``AnomalyMapState``, ...). Routes
reach both through the typed accessors here, so a misspelt name is a type error, not a
``None`` at run time.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from fastapi import FastAPI, Request

from shared.config import CommonSettings
from shared.errors import UnavailableError
from shared.http.metrics import HttpMetrics
from shared.imaging.budget import PixelBudget
from shared.jobs.producer import TaskSender
from shared.jobs.store import JobStore
from shared.storage.base import ObjectStore

S = TypeVar("S")
T = TypeVar("T")
ReadinessCheck = Callable[[FastAPI], str | None]


class JobProducer(TaskSender, Protocol):
    """What an API needs of its Celery app: send tasks, and a broker connection to probe.

    A protocol, so this module (and the pipeline API, which queues nothing) never imports
    celery.
    """

    def connection_for_write(self) -> Any: ...


@dataclass
class HttpState:
    """What the common app and its lifespan hold; ``not_ready`` names missing parts."""

    service: str
    settings: CommonSettings
    metrics: HttpMetrics
    pixel_budget: PixelBudget
    readiness_checks: dict[str, ReadinessCheck] = field(default_factory=dict)
    not_ready: dict[str, str] = field(default_factory=dict)
    # Optional service detail in /readyz that does not decide readiness.
    readiness_details: Callable[[FastAPI], dict[str, Any]] | None = None
    store: ObjectStore | None = None
    jobs: JobStore | None = None
    celery: JobProducer | None = None


def http_state(app: FastAPI) -> HttpState:
    state: HttpState = app.state.http
    return state


def set_service_state(app: FastAPI, state: object) -> None:
    """Store the service's own state object (once, in ``create_app``)."""
    app.state.services = state


def service_state(app: FastAPI, kind: type[S]) -> S:
    """The service's state object, checked to be a ``kind``."""
    state = getattr(app.state, "services", None)
    if not isinstance(state, kind):
        raise TypeError(f"app.state.services is {type(state).__name__}, not {kind.__name__}")
    return state


def available(request: Request, value: T | None, name: str) -> T:
    """``value``, or a 503 naming what is not loaded (and why, when the lifespan said)."""
    if value is None:
        reason = http_state(request.app).not_ready.get(name)
        raise UnavailableError(
            f"{name} is not available: {reason or 'still loading'}", code=f"{name}_unavailable"
        )
    return value


def store_of(request: Request) -> ObjectStore:
    return available(request, http_state(request.app).store, "store")


def jobs_of(request: Request) -> JobStore:
    return available(request, http_state(request.app).jobs, "jobs")


def celery_of(request: Request) -> JobProducer:
    return available(request, http_state(request.app).celery, "celery")
