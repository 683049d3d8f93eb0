"""The table of the suite's services: the one place that lists what ``agssp`` can start.

``agssp up``, ``serve`` and ``worker`` and the deploy tests read this table, so a new service
is one row here. Factories and task modules are import paths, not imports: listing the suite
must not load FastAPI, Celery or torch (a unit test imports every path by name).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from shared.schemas.jobs import Queue


class Role(StrEnum):
    """How ``agssp up`` wires a service to the others."""

    API = "api"  # a backend API: the console and the pipeline are pointed at it
    CONSOLE = "console"  # web pages forwarding to the APIs and the pipeline; no jobs, no store
    PIPELINE = "pipeline"  # drives the APIs over HTTP; runs no jobs of its own


@dataclass(frozen=True)
class Service:
    """One servable service.

    Attributes:
        name: the package under ``services/`` and the ``agssp serve`` argument.
        factory: uvicorn factory, ``module:callable``.
        task_module: the Celery task module its worker imports; None when it has no jobs.
        queues: the Celery queues ``task_module`` consumes.
        port_offset: its port is ``BASE_PORT`` (``agssp up --base-port``) plus this offset.
        role: how ``agssp up`` points it at the other services.
    """

    name: str
    factory: str
    task_module: str | None
    queues: tuple[str, ...]
    port_offset: int
    role: Role = Role.API


BASE_PORT = 8001
# Every worker also runs the self-test job (broker, worker, store and publishing end to end).
SELFTEST_QUEUE = Queue.DEFAULT.value
SELFTEST_TASK_MODULE = "shared.jobs.selftest"
# Queues whose jobs load no model: a worker on these alone needs no GPU and no model cache
# (the finetune-exports-worker of compose and k8s).
LIGHT_QUEUES = frozenset({Queue.FINETUNE_EXPORTS.value})

SERVICES: tuple[Service, ...] = (
    Service(
        "anomaly_map",
        "services.anomaly_map.api.main:app_factory",
        "services.anomaly_map.worker.tasks",
        (Queue.MAPS.value,),
        0,
    ),
    Service(
        "pretrain",
        "services.pretrain.api.main:app_factory",
        "services.pretrain.worker.tasks",
        (Queue.PRETRAIN.value,),
        1,
    ),
    Service(
        "finetune",
        "services.finetune.api.main:app_factory",
        "services.finetune.worker.tasks",
        # Its worker takes exports too, so one worker (``agssp up``) runs every job kind.
        (Queue.FINETUNE.value, Queue.FINETUNE_EXPORTS.value),
        2,
    ),
    # /detect runs in the API process: inference has no queue.
    Service("inference", "services.inference.api.main:app_factory", None, (), 3),
    Service("console", "services.console.api.main:app_factory", None, (), 4, Role.CONSOLE),
    Service("pipeline", "services.pipeline.api.main:app_factory", None, (), 5, Role.PIPELINE),
)


def names(role: Role | None = None) -> tuple[str, ...]:
    """Service names in table order, all of them or those of one role."""
    return tuple(s.name for s in SERVICES if role is None or s.role is role)


def by_name(name: str) -> Service:
    """The table row of ``name``; KeyError names the known services."""
    for service in SERVICES:
        if service.name == name:
            return service
    raise KeyError(f"unknown service {name!r}; one of {names()}")


def only(role: Role) -> Service:
    """The single service of a role that has exactly one (the console, the pipeline)."""
    (service,) = (s for s in SERVICES if s.role is role)
    return service


def default_port(name: str) -> int:
    """The port ``agssp serve`` listens on when none is given."""
    return BASE_PORT + by_name(name).port_offset


def task_modules() -> dict[str, str]:
    """Celery queue -> the task module a worker on that queue imports, self-test included."""
    modules = {q: s.task_module for s in SERVICES if s.task_module for q in s.queues}
    return {**modules, SELFTEST_QUEUE: SELFTEST_TASK_MODULE}
