"""``Annotated`` dependencies of the pipeline API: its typed state."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from services.pipeline.config import PipelineSettings
from services.pipeline.stores.pipelines import PipelineStore
from services.pipeline.usecases.driver import PipelineDriver
from shared.http.state import available, service_state


@dataclass
class PipelineState:
    """Settings from ``create_app``; the pipeline records and the driver from the lifespan."""

    settings: PipelineSettings
    pipelines: PipelineStore | None = None
    driver: PipelineDriver | None = None


def _pipelines(request: Request) -> PipelineStore:
    state = service_state(request.app, PipelineState)
    return available(request, state.pipelines, "pipelines")


PipelinesDep = Annotated[PipelineStore, Depends(_pipelines)]
