"""``Annotated`` dependencies of the pipeline API: its typed state."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from services.pipeline.config import PipelineSettings
from services.pipeline.stores.pipelines import PipelineStore
from services.pipeline.usecases.driver import PipelineDriver
from shared.errors import UnavailableError
from shared.http.state import available, service_state


class UploadGate:
    """At most ``limit`` uploads stored at once in this process; one more is told to retry.

    Refusing (503 + ``Retry-After``) rather than queueing keeps memory, temporary disk and
    the store's connections bounded however many clients send at once.
    """

    def __init__(self, limit: int, memory_bytes: int, retry_after_s: int = 2) -> None:
        self.limit, self.memory_bytes, self.retry_after_s = limit, memory_bytes, retry_after_s
        self.active = 0

    def check(self) -> None:
        """Raises ``UnavailableError`` (503 ``uploads_busy``) when every slot is taken."""
        if self.active >= self.limit:
            raise UnavailableError(
                f"{self.active} uploads are in progress (PIPELINE_MAX_CONCURRENT_UPLOADS="
                f"{self.limit}); send again shortly",
                code="uploads_busy",
                retry_after_s=self.retry_after_s,
            )

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        self.check()  # one event loop: the check and the count are atomic
        self.active += 1
        try:
            yield
        finally:
            self.active -= 1


@dataclass
class PipelineState:
    """Settings from ``create_app``; the pipeline records and the driver from the lifespan."""

    settings: PipelineSettings
    pipelines: PipelineStore | None = None
    driver: PipelineDriver | None = None
    uploads: UploadGate | None = None


def _pipelines(request: Request) -> PipelineStore:
    state = service_state(request.app, PipelineState)
    return available(request, state.pipelines, "pipelines")


def _uploads(request: Request) -> UploadGate:
    state = service_state(request.app, PipelineState)
    return available(request, state.uploads, "uploads")


PipelinesDep = Annotated[PipelineStore, Depends(_pipelines)]
UploadGateDep = Annotated[UploadGate, Depends(_uploads)]
