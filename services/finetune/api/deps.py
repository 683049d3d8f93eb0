"""``Annotated`` dependencies of the finetune API: objects the lifespan put on ``app.state``."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from services.finetune.datasets_store import DatasetCatalog
from services.finetune.registry import ModelRegistry
from shared.http.deps import state_object
from shared.jobs.producer import TaskSender
from shared.jobs.store import JobStore


def _jobs(request: Request) -> JobStore:
    jobs: JobStore = state_object(request, "jobs")
    return jobs


def _sender(request: Request) -> TaskSender:
    sender: TaskSender = state_object(request, "celery")
    return sender


def _registry(request: Request) -> ModelRegistry:
    registry: ModelRegistry = state_object(request, "registry")
    return registry


def _datasets(request: Request) -> DatasetCatalog:
    datasets: DatasetCatalog = state_object(request, "datasets")
    return datasets


JobsDep = Annotated[JobStore, Depends(_jobs)]
SenderDep = Annotated[TaskSender, Depends(_sender)]
RegistryDep = Annotated[ModelRegistry, Depends(_registry)]
DatasetsDep = Annotated[DatasetCatalog, Depends(_datasets)]
