"""``Annotated`` dependencies of the pretrain API: objects the lifespan put on ``app.state``."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from services.pretrain.usecases.agbp_jobs import ConfigValidator
from shared.http.deps import state_object
from shared.jobs.producer import TaskSender
from shared.jobs.store import JobStore


def _jobs(request: Request) -> JobStore:
    jobs: JobStore = state_object(request, "jobs")
    return jobs


def _sender(request: Request) -> TaskSender:
    sender: TaskSender = state_object(request, "celery")
    return sender


def _validator(request: Request) -> ConfigValidator | None:
    # None is a valid state: the torch-free image has no full config check.
    validator: ConfigValidator | None = getattr(request.app.state, "config_validator", None)
    return validator


JobsDep = Annotated[JobStore, Depends(_jobs)]
SenderDep = Annotated[TaskSender, Depends(_sender)]
ValidatorDep = Annotated[ConfigValidator | None, Depends(_validator)]
