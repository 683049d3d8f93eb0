"""``Annotated`` dependencies of the pretrain API: its typed state and the shared infrastructure."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends

from services.pretrain.config import PretrainSettings
from shared.http.state import celery_of, jobs_of
from shared.jobs.producer import TaskSender
from shared.jobs.store import JobStore


@dataclass
class PretrainState:
    """Settings from ``create_app``."""

    settings: PretrainSettings


JobsDep = Annotated[JobStore, Depends(jobs_of)]
SenderDep = Annotated[TaskSender, Depends(celery_of)]
