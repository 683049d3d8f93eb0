"""One resident model behind its own ``DynamicBatcher``: the slot, its runner, its description.

The runner tags every answer with the model version that computed it, so a request queued
across a hot swap reports the version that actually ran it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from services.inference.ml.batcher import Arrivals, BatcherStats, DynamicBatcher
from services.inference.ml.batching_policy import queue_delay_ms
from services.inference.ml.detections import DetectionRequest, Detections, Detector
from services.inference.stores.models import Fallback, ModelFiles, ModelKey, ModelTarget

Runner = Callable[[Sequence[DetectionRequest]], list["Outcome"]]


class BatchObserver(Protocol):
    """Told about every batch call (from the batcher's worker thread)."""

    def observe_batch(self, key: ModelKey, size: int, seconds: float) -> None: ...


@dataclass(frozen=True)
class BatchingConfig:
    """How each slot's batcher gathers requests (INFERENCE_MAX_BATCH_SIZE and friends)."""

    max_batch_size: int = 8
    max_queue_delay_ms: float = 5.0
    max_queue: int = 64
    adaptive_delay: bool = False  # wait only where batching measured faster (batching_policy)


@dataclass(frozen=True)
class LoadedModel:
    """An open detector and the files it came from."""

    files: ModelFiles
    detector: Detector
    loaded_at: datetime
    batch_gain: float | None = None  # measured at load when the delay is adaptive

    @property
    def key(self) -> ModelKey:
        return self.files.key


@dataclass(frozen=True)
class BatchRun:
    """The batch call that answered a request: model, start (perf_counter), duration, size."""

    key: ModelKey
    started: float
    seconds: float
    size: int


@dataclass(frozen=True)
class Outcome:
    """One request's detections, the class names of the model that ran, and its batch."""

    detections: Detections
    names: Mapping[int, str]
    run: BatchRun


@dataclass(frozen=True)
class ResidentModel:
    """A resident model as ``GET /v1/models`` shows it."""

    slot: str
    key: ModelKey
    runtime: str
    source: str
    follows: str | None
    loaded_at: datetime
    idle_s: float
    class_names: list[str]
    last_error: str | None
    stats: BatcherStats
    queue_delay_ms: float = 0.0
    batch_gain: float | None = None
    fallback: Fallback | None = None  # the FP32 source served in place of an INT8 version


class Slot:
    """One target (a followed stage, a pinned version, or the local model) and its batcher.

    Args:
        label: How listings name the slot.
        target: What the slot serves; None for the local model (never re-resolved).
        model: The model served first.
        batching: Batcher settings.
        observer: Told about every batch call.
        arrivals: The runtime's count of requests on their way (``Arrivals``).
    """

    def __init__(
        self,
        label: str,
        target: ModelTarget | None,
        model: LoadedModel,
        batching: BatchingConfig,
        observer: BatchObserver | None = None,
        arrivals: Arrivals | None = None,
    ) -> None:
        self.label = label
        self.target = target
        self.model = model
        self.last_used = time.monotonic()
        self.last_error: str | None = None
        self.closed = False
        self._observer = observer
        self._batching = batching
        self.batcher: DynamicBatcher[DetectionRequest, Outcome] = DynamicBatcher(
            make_runner(model, observer),
            max_batch_size=batching.max_batch_size,
            max_queue_delay_ms=queue_delay_ms(batching.max_queue_delay_ms, model.batch_gain),
            max_queue_size=batching.max_queue,
            name=f"batcher-{model.key.name}"[:40],
            arrivals=arrivals,
        )

    @property
    def follows(self) -> str | None:
        """The stage this slot follows, or None (pinned version, local model)."""
        return None if self.target is None or self.target.pinned else self.target.stage

    def swap(self, model: LoadedModel) -> LoadedModel:
        """Serve ``model`` from the next batch on; returns the model it replaces."""
        previous, self.model = self.model, model
        self.batcher.swap(make_runner(model, self._observer))
        self.batcher.max_queue_delay_ms = queue_delay_ms(
            self._batching.max_queue_delay_ms, model.batch_gain
        )
        return previous


def make_runner(model: LoadedModel, observer: BatchObserver | None) -> Runner:
    """The batch function for ``model``: one ``detect`` call, each answer tagged with its run."""
    detector, key = model.detector, model.key

    def run(requests: Sequence[DetectionRequest]) -> list[Outcome]:
        started = time.perf_counter()
        found = detector.detect([r.image for r in requests], [r.params for r in requests])
        batch = BatchRun(key, started, time.perf_counter() - started, len(requests))
        if observer is not None:
            observer.observe_batch(key, batch.size, batch.seconds)
        names = detector.names
        return [Outcome(detections, names, batch) for detections in found]

    return run


def describe(slot: Slot, *, default: bool) -> ResidentModel:
    """A listing entry for ``slot``."""
    names = slot.model.detector.names
    return ResidentModel(
        slot="default" if default else slot.label,
        key=slot.model.key,
        runtime=slot.model.files.runtime,
        source=slot.model.files.source,
        follows=slot.follows,
        loaded_at=slot.model.loaded_at,
        idle_s=round(time.monotonic() - slot.last_used, 3),
        class_names=[names[i] for i in sorted(names)],
        last_error=slot.last_error,
        stats=slot.batcher.stats(),
        queue_delay_ms=slot.batcher.max_queue_delay_ms,
        batch_gain=slot.model.batch_gain,
        fallback=slot.model.files.fallback,
    )
