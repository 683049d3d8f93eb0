"""``Annotated`` dependencies of the pretrain API: its typed state and the shared infrastructure."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from services.pretrain.config import PretrainSettings
from services.pretrain.usecases.agbp_jobs import ConfigValidator
from shared.http.state import celery_of, jobs_of, service_state
from shared.jobs.producer import TaskSender
from shared.jobs.store import JobStore


@dataclass
class PretrainState:
    """Settings from ``create_app``; the AGBP config check from the lifespan.

    ``config_validator`` None is a valid state: the torch-free image has no full check.
    """

    settings: PretrainSettings
    config_validator: ConfigValidator | None = None


def _validator(request: Request) -> ConfigValidator | None:
    return service_state(request.app, PretrainState).config_validator


JobsDep = Annotated[JobStore, Depends(jobs_of)]
SenderDep = Annotated[TaskSender, Depends(celery_of)]
ValidatorDep = Annotated[ConfigValidator | None, Depends(_validator)]
