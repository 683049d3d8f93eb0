"""Result sinks: detections pushed to MQTT topics and webhooks without slowing ``/detect``.

``/detect`` only appends to a bounded in-memory queue per sink (constant time, on the event
loop); one delivery task per sink sends the queue in order, retrying a failed message with
exponential backoff (capped at INFERENCE_SINK_RETRY_MAX_S) until it is delivered. A full
queue drops its oldest message, so an absent sink costs bounded memory and never blocks
detection. The annotated PNG, when a sink wants it, is drawn on a thread by the delivery
task, not in the request.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from services.inference.config import InferenceSettings, SinkSpec
from services.inference.ml.annotate import render_annotated
from services.inference.ml.detections import Detections, Image
from services.inference.stores.models import ModelKey
from services.inference.usecases.sink_transports import (
    PermanentSinkError,
    Transport,
    open_transport,
)

logger = logging.getLogger(__name__)

_FIRST_RETRY_S = 0.05


@dataclass(frozen=True)
class ResultEvent:
    """One answered request, as handed to the sinks."""

    model: ModelKey
    key: str | None
    detections: Detections
    names: dict[int, str]
    image: Image | None  # kept only when a matching sink wants the annotated frame
    answered_at: datetime


@dataclass
class SinkStats:
    """Counters of one sink (exported as metrics and by ``GET /v1/sinks``)."""

    delivered: int = 0
    retries: int = 0
    dropped: int = 0
    failed: int = 0
    queue_depth: int = 0
    last_error: str | None = None


@dataclass
class _Sink:
    spec: SinkSpec
    transport: Transport
    queue: collections.deque[ResultEvent] = field(default_factory=collections.deque)
    stats: SinkStats = field(default_factory=SinkStats)
    wakeup: asyncio.Event = field(default_factory=asyncio.Event)

    def wants(self, event_model: str, key: str | None) -> bool:
        models, keys = self.spec.models, self.spec.keys
        return (not models or event_model in models) and (not keys or key in keys)

    def offer(self, event: ResultEvent) -> None:
        if len(self.queue) >= self.spec.max_queue:
            self.queue.popleft()
            self.stats.dropped += 1
        self.queue.append(event)
        self.wakeup.set()


class SinkDispatcher:
    """Fans answered requests out to every matching sink. Use from one event loop.

    Args:
        specs: The configured sinks.
        retry_max_s: Longest backoff between attempts.
        flush_s: On ``close``, how long queued messages still get to go out.
        transport_factory: Opens a transport per spec (tests inject one).
    """

    def __init__(
        self,
        specs: Sequence[SinkSpec],
        *,
        retry_max_s: float = 2.0,
        flush_s: float = 2.0,
        transport_factory: Callable[[SinkSpec], Transport] | None = None,
    ) -> None:
        factory = transport_factory or (lambda s: open_transport(s, reconnect_max_s=retry_max_s))
        self._sinks = [_Sink(spec, factory(spec)) for spec in specs]
        self._retry_max_s = retry_max_s
        self._flush_s = flush_s
        self._tasks = [asyncio.create_task(self._deliver_forever(s)) for s in self._sinks]

    def wants_image(self, model: str, key: str | None) -> bool:
        """Whether an event for ``model`` and ``key`` should carry the frame (for a PNG)."""
        return any(s.spec.include_png and s.wants(model, key) for s in self._sinks)

    def offer(self, event: ResultEvent) -> None:
        """Queue ``event`` on every matching sink; never blocks, never raises."""
        for sink in self._sinks:
            if sink.wants(event.model.name, event.key):
                sink.offer(event)

    def stats(self) -> dict[str, SinkStats]:
        """Name -> counters, queue depth as of now."""
        for sink in self._sinks:
            sink.stats.queue_depth = len(sink.queue)
        return {s.spec.name: s.stats for s in self._sinks}

    async def close(self) -> None:
        """Give queued messages ``flush_s`` to go out, then stop every sink."""
        deadline = time.monotonic() + self._flush_s
        while any(s.queue for s in self._sinks) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for sink in self._sinks:
            with contextlib.suppress(Exception):
                await sink.transport.close()

    async def _deliver_forever(self, sink: _Sink) -> None:
        delay = _FIRST_RETRY_S
        while True:
            if not sink.queue:
                sink.wakeup.clear()
                await sink.wakeup.wait()
                continue
            event = sink.queue.popleft()
            if await self._attempt(sink, event):
                delay = _FIRST_RETRY_S
                continue
            if len(sink.queue) < sink.spec.max_queue:  # keep order: it goes first next time
                sink.queue.appendleft(event)
            else:
                sink.stats.dropped += 1
            sink.stats.retries += 1
            await asyncio.sleep(delay)
            delay = min(delay * 2, self._retry_max_s)

    async def _attempt(self, sink: _Sink, event: ResultEvent) -> bool:
        """True when the event is done with (delivered, or dropped as undeliverable)."""
        try:
            body = await _encode(event, png=sink.spec.include_png)
            await sink.transport.deliver(_topic(sink.spec.topic, event), body)
        except PermanentSinkError as exc:
            sink.stats.failed += 1
            sink.stats.last_error = str(exc)
            logger.warning("sink %s dropped a result: %s", sink.spec.name, exc)
            return True
        except Exception as exc:  # down, slow, refused: try again after the backoff
            sink.stats.last_error = f"{type(exc).__name__}: {exc}"
            return False
        sink.stats.delivered += 1
        sink.stats.last_error = None
        return True


def build_dispatcher(settings: InferenceSettings) -> SinkDispatcher | None:
    """The dispatcher for INFERENCE_SINKS, or None when no sink is configured."""
    if not settings.sinks:
        return None
    return SinkDispatcher(
        settings.sinks, retry_max_s=settings.sink_retry_max_s, flush_s=settings.sink_flush_s
    )


def _topic(template: str, event: ResultEvent) -> str:
    return template.format(
        model=event.model.name, version=event.model.version, key=event.key or "default"
    )


def payload(event: ResultEvent) -> dict[str, Any]:
    """The JSON document every sink receives (boxes in pixels, xyxy)."""
    found = event.detections
    h, w = found.image_hw
    return {
        "model": {"name": event.model.name, "version": event.model.version},
        "key": event.key,
        "answered_at": event.answered_at.isoformat(),
        "image": {"width": w, "height": h},
        "detections": [
            {
                "box_xyxy": [round(v, 2) for v in box],
                "class_id": int(class_id),
                "class_name": event.names.get(int(class_id), str(int(class_id))),
                "score": round(float(score), 5),
            }
            for box, score, class_id in zip(
                found.boxes.tolist(), found.scores.tolist(), found.class_ids.tolist(), strict=True
            )
        ],
    }


async def _encode(event: ResultEvent, *, png: bool) -> bytes:
    document = payload(event)
    if png and event.image is not None:
        drawn = await asyncio.to_thread(
            render_annotated, event.image, event.detections, event.names
        )
        document["annotated_png_base64"] = base64.b64encode(drawn).decode()
    return json.dumps(document, separators=(",", ":")).encode()


def event_now(
    model: ModelKey,
    key: str | None,
    detections: Detections,
    names: dict[int, str],
    image: Image | None,
) -> ResultEvent:
    """A ``ResultEvent`` stamped with the current UTC time."""
    return ResultEvent(model, key, detections, names, image, datetime.now(UTC))
