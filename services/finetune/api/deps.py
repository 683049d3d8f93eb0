"""``Annotated`` dependencies of the finetune API: its typed state and the shared infrastructure."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from services.finetune.config import FinetuneSettings
from services.finetune.stores.datasets import DatasetCatalog
from services.finetune.stores.models import ModelRegistry
from shared.http.state import available, celery_of, jobs_of, service_state
from shared.jobs.producer import TaskSender
from shared.jobs.store import JobStore


@dataclass
class FinetuneState:
    """Settings from ``create_app``; the registry and dataset catalog from the lifespan."""

    settings: FinetuneSettings
    registry: ModelRegistry | None = None
    datasets: DatasetCatalog | None = None


def state_of(request: Request) -> FinetuneState:
    return service_state(request.app, FinetuneState)


def _registry(request: Request) -> ModelRegistry:
    return available(request, state_of(request).registry, "registry")


def _datasets(request: Request) -> DatasetCatalog:
    return available(request, state_of(request).datasets, "datasets")


JobsDep = Annotated[JobStore, Depends(jobs_of)]
SenderDep = Annotated[TaskSender, Depends(celery_of)]
RegistryDep = Annotated[ModelRegistry, Depends(_registry)]
DatasetsDep = Annotated[DatasetCatalog, Depends(_datasets)]
