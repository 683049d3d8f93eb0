"""``Annotated`` dependencies of the pipeline API: objects the lifespan put on ``app.state``."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from services.pipeline.stores.pipelines import PipelineStore
from shared.http.deps import state_object


def _pipelines(request: Request) -> PipelineStore:
    pipelines: PipelineStore = state_object(request, "pipelines")
    return pipelines


PipelinesDep = Annotated[PipelineStore, Depends(_pipelines)]
