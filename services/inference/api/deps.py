"""``Annotated`` dependencies of the inference API: its typed state and the detect request."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from services.inference.api.metrics import InferenceMetrics
from services.inference.api.schemas import DetectQuery
from services.inference.config import InferenceSettings
from services.inference.runtime.model_runtime import ModelRuntime
from services.inference.usecases.sinks import SinkDispatcher
from shared.http.state import available, service_state
from shared.http.uploads import image_upload, negotiate


@dataclass
class InferenceState:
    """Settings and metrics from ``create_app``; the runtime and sinks from the lifespan."""

    settings: InferenceSettings
    metrics: InferenceMetrics | None = None
    runtime: ModelRuntime | None = None
    sinks: SinkDispatcher | None = None


def state_of(request: Request) -> InferenceState:
    return service_state(request.app, InferenceState)


# ``async def`` on purpose: FastAPI runs a plain ``def`` dependency in its thread pool, and
# these four attribute reads were four thread hops on every /detect (issue 25's profile).
async def _settings(request: Request) -> InferenceSettings:
    return state_of(request).settings


async def _runtime(request: Request) -> ModelRuntime:
    return available(request, state_of(request).runtime, "runtime")


async def _sinks(request: Request) -> SinkDispatcher | None:
    return state_of(request).sinks


async def _metrics(request: Request) -> InferenceMetrics:
    return available(request, state_of(request).metrics, "metrics")


def _max_image_bytes(request: Request) -> int:
    return int(state_of(request).settings.max_image_mb * 2**20)


SettingsDep = Annotated[InferenceSettings, Depends(_settings)]
RuntimeDep = Annotated[ModelRuntime, Depends(_runtime)]
MetricsDep = Annotated[InferenceMetrics, Depends(_metrics)]
SinksDep = Annotated[SinkDispatcher | None, Depends(_sinks)]
_read_upload = image_upload(DetectQuery, _max_image_bytes, multi=("classes",), max_fields=32)


@dataclass(frozen=True)
class DetectInput:
    """The image bytes of one detect request, its options, and whether a PNG is wanted."""

    data: bytes
    query: DetectQuery
    png: bool


_PNG_WANTED = {
    "application/json": False,
    "application/*": False,
    "*/*": False,
    "image/png": True,
    "image/*": True,
}


async def _detect_input(request: Request) -> DetectInput:
    """PNG when ``annotated=true`` or when the Accept header prefers an image to JSON."""
    upload = await _read_upload(request)
    png = upload.params.annotated or negotiate(request, _PNG_WANTED, False)
    return DetectInput(data=upload.data, query=upload.params, png=png)


DetectInputDep = Annotated[DetectInput, Depends(_detect_input)]
