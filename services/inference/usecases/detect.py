"""Use case: detect objects in one uploaded image (whole or tiled), answer and offer to sinks.

Framework-free: the API hands in bytes and options, and gets plain dataclasses back.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from services.inference.config import InferenceSettings
from services.inference.ml.annotate import render_annotated
from services.inference.ml.detections import Detections, DetectParams, Image
from services.inference.ml.tiling import crop, merge_tiles, tile_grid
from services.inference.runtime.model_runtime import ModelRuntime
from services.inference.runtime.slots import BatchRun, Outcome
from services.inference.stores.models import ModelKey, ModelTarget
from services.inference.usecases.sinks import SinkDispatcher, event_now
from shared.errors import InvalidInputError, SuiteError
from shared.imaging.intake import decode_image, image_limits


class RequestObserver(Protocol):
    """Told about every answered or failed detection request (metrics)."""

    def observe_request(self, key: ModelKey, total_s: float, queue_wait_s: float) -> None: ...

    def observe_failure(self, model: str, code: str) -> None: ...


@dataclass(frozen=True)
class DetectOptions:
    """What a caller may choose per request; thresholds are ultralytics' ``predict`` ones."""

    conf: float
    iou: float
    max_det: int
    model: str | None = None
    version: str | None = None
    stage: str | None = None
    classes: tuple[str, ...] | None = None
    agnostic: bool = False
    annotate: bool = False
    tile: bool = False
    tile_overlap: float = 0.2
    key: str | None = None


@dataclass(frozen=True)
class Detection:
    """One box in image pixels and normalised to 0-1 (x1, y1, x2, y2)."""

    box_xyxy: tuple[float, float, float, float]
    box_norm: tuple[float, float, float, float]
    class_id: int
    class_name: str
    score: float


@dataclass(frozen=True)
class Timings:
    """Milliseconds. ``inference`` is the whole batch call this request rode in."""

    decode_ms: float
    queue_wait_ms: float
    inference_ms: float
    total_ms: float


@dataclass(frozen=True)
class DetectResult:
    """The answer to one request; ``png`` is set when an annotated image was asked for."""

    detections: list[Detection]
    width: int
    height: int
    model: ModelKey
    batch_size: int
    timings: Timings
    png: bytes | None
    tiles: int = 1


def target_for(options: DetectOptions, settings: InferenceSettings) -> ModelTarget | None:
    """The model a request asks for; None means the default model."""
    if options.model is None and options.version is None and options.stage is None:
        return None
    name = options.model or settings.model_name
    if not name:
        raise InvalidInputError(
            "name the model: this server has no INFERENCE_MODEL_NAME", code="model_name_required"
        )
    if options.version is not None:
        return ModelTarget(name, version=options.version)
    if options.stage is not None:
        return ModelTarget(name, stage=options.stage)
    return ModelTarget(name, stage=settings.model_stage, fallback=settings.fallback_latest)


def class_filter(tokens: Sequence[str] | None, names: Mapping[int, str]) -> tuple[int, ...] | None:
    """Class ids for a filter given as names or ids (``["scratch", "3"]``); None keeps all.

    Raises:
        InvalidInputError: a name or id the model does not have (code ``unknown_class``).
    """
    if not tokens:
        return None
    by_name = {name: i for i, name in names.items()}
    ids = []
    for token in tokens:
        if token in by_name:
            ids.append(by_name[token])
        elif token.isdigit() and int(token) in names:
            ids.append(int(token))
        else:
            raise InvalidInputError(
                f"unknown class {token!r}; this model has {len(names)} classes: "
                f"{', '.join(list(names.values())[:20])}",
                code="unknown_class",
            )
    return tuple(sorted(set(ids)))


async def detect(
    runtime: ModelRuntime,
    data: bytes,
    options: DetectOptions,
    *,
    settings: InferenceSettings,
    observer: RequestObserver | None = None,
    sinks: SinkDispatcher | None = None,
) -> DetectResult:
    """Decode ``data`` (through the image intake), queue it on its model, convert the answer.

    Raises:
        InvalidInputError: bad image (413/415/422 codes from the intake), bad options.
        NotFoundError: unknown model, version or stage.
        UnavailableError: no model loaded (503); OverloadedError when the queue is full (429).

    When ``sinks`` is given, the answer is also queued for every matching result sink.
    """
    started = time.perf_counter()
    try:
        target = target_for(options, settings)
        with runtime.arriving():  # batches wait for batch-mates only while some are coming
            decoded = await asyncio.to_thread(decode_image, data, image_limits(settings))
        decoded_at = time.perf_counter()
        if options.tile:
            outcome, tiles = await _detect_tiled(runtime, target, decoded.array, options, settings)
        else:
            outcome, tiles = await runtime.submit(target, decoded.array, _params_fn(options)), 1
        png = None
        if options.annotate:
            png = await asyncio.to_thread(
                render_annotated, decoded.array, outcome.detections, outcome.names
            )
    except SuiteError as exc:
        if observer is not None:
            observer.observe_failure(_model_label(options, settings), exc.code)
        raise
    if sinks is not None:
        _offer(sinks, outcome, options.key, decoded.array)
    total_s = time.perf_counter() - started
    queue_wait_s = max(0.0, outcome.run.started - decoded_at)
    if observer is not None:
        observer.observe_request(outcome.run.key, total_s, queue_wait_s)
    timings = Timings(
        decode_ms=_ms(decoded_at - started),
        queue_wait_ms=_ms(queue_wait_s),
        inference_ms=_ms(outcome.run.seconds),
        total_ms=_ms(total_s),
    )
    return DetectResult(
        detections=_detections(outcome),
        width=decoded.width,
        height=decoded.height,
        model=outcome.run.key,
        batch_size=outcome.run.size,
        timings=timings,
        png=png,
        tiles=tiles,
    )


async def _detect_tiled(
    runtime: ModelRuntime,
    target: ModelTarget | None,
    image: Image,
    options: DetectOptions,
    settings: InferenceSettings,
) -> tuple[Outcome, int]:
    """Detect tile by tile at the model's input size and merge the boxes (``ml.tiling``).

    Tiles go to the batcher a full batch at a time, so one large frame fills batches without
    taking more than ``max_batch_size`` places in the model's queue.
    """
    tiles = tile_grid(image.shape[:2], await runtime.input_size(target), options.tile_overlap)
    params, size = _params_fn(options), settings.max_batch_size
    outcomes: list[Outcome] = []
    for start in range(0, len(tiles), size):
        chunk = tiles[start : start + size]
        outcomes += await asyncio.gather(
            *(runtime.submit(target, crop(image, tile), params) for tile in chunk)
        )
    merged = merge_tiles(
        [o.detections for o in outcomes],
        tiles,
        (image.shape[0], image.shape[1]),
        max_det=options.max_det,
        agnostic=options.agnostic,
    )
    runs = list({id(o.run): o.run for o in outcomes}.values())
    run = BatchRun(
        key=outcomes[-1].run.key,
        started=runs[0].started,
        seconds=sum(r.seconds for r in runs),
        size=max(r.size for r in runs),
    )
    return Outcome(merged, outcomes[-1].names, run), len(tiles)


def _offer(sinks: SinkDispatcher, outcome: Outcome, key: str | None, image: Image) -> None:
    model = outcome.run.key
    keep = image if sinks.wants_image(model.name, key) else None
    sinks.offer(event_now(model, key, outcome.detections, dict(outcome.names), keep))


def _model_label(options: DetectOptions, settings: InferenceSettings) -> str:
    # Callers choose model names freely; only the served name becomes a metrics label, so
    # unknown names cannot grow the label set without bound.
    if options.model is None or options.model == settings.model_name:
        return settings.model_name or "default"
    return "other"


def _params_fn(options: DetectOptions) -> Callable[[Mapping[int, str]], DetectParams]:
    def build(names: Mapping[int, str]) -> DetectParams:
        return DetectParams(
            conf=options.conf,
            iou=options.iou,
            max_det=options.max_det,
            agnostic=options.agnostic,
            classes=class_filter(options.classes, names),
        )

    return build


def _detections(outcome: Outcome) -> list[Detection]:
    found: Detections = outcome.detections
    boxes, norm = found.boxes.tolist(), found.normalized_boxes().tolist()
    return [
        Detection(
            box_xyxy=(box[0], box[1], box[2], box[3]),
            box_norm=(n[0], n[1], n[2], n[3]),
            class_id=class_id,
            class_name=outcome.names.get(class_id, str(class_id)),
            score=score,
        )
        for box, n, class_id, score in zip(
            boxes, norm, found.class_ids.tolist(), found.scores.tolist(), strict=True
        )
    ]


def _ms(seconds: float) -> float:
    return round(seconds * 1000.0, 3)
