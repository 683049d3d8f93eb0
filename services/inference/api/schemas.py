"""Request and response schemas of the inference API (the public contract)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from services.inference.config import InferenceSettings
from services.inference.runtime.model_runtime import ModelRuntime
from services.inference.runtime.slots import ResidentModel
from services.inference.usecases.detect import DetectOptions, DetectResult
from services.inference.usecases.sinks import SinkStats

MAX_DET_LIMIT = 1000


class DetectQuery(BaseModel):
    """Options of ``POST /v1/detect``, as query parameters or multipart form fields."""

    model_config = ConfigDict(extra="forbid")
    model: str | None = Field(None, description="Registry model name; default the served one.")
    version: str | None = Field(None, description="Pin a version of the model.")
    stage: str | None = Field(
        None, description="Serve the version promoted to this stage (or LATEST)."
    )
    conf: float | None = Field(None, ge=0, le=1, description="Confidence threshold.")
    iou: float | None = Field(None, ge=0, le=1, description="NMS IoU threshold.")
    max_det: int | None = Field(None, ge=1, le=MAX_DET_LIMIT, description="Most detections.")
    classes: list[str] | None = Field(
        None, description="Keep only these classes: names or ids, comma-separated or repeated."
    )
    agnostic: bool = Field(False, description="One NMS over all classes.")
    annotated: bool = Field(False, description="Answer with an annotated PNG instead of JSON.")
    tile: bool = Field(
        False,
        description="Cut a large frame into overlapping tiles at the model's input size, "
        "detect each and merge the boxes across tile borders (small objects in large frames).",
    )
    tile_overlap: float = Field(
        0.2, ge=0, le=0.5, description="Fraction of a tile shared with each neighbour."
    )
    key: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9_.:/-]{1,128}$",
        description="Routing key of this request (camera, station): result sinks that list "
        "keys receive only requests with one of them.",
    )

    @field_validator("classes", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        items = [value] if isinstance(value, str) else value
        if isinstance(items, list):
            return [p.strip() for item in items for p in str(item).split(",") if p.strip()]
        return value

    @model_validator(mode="after")
    def _version_or_stage(self) -> DetectQuery:
        if self.version is not None and self.stage is not None:
            raise ValueError("give a version or a stage, not both")
        return self

    def options(self, settings: InferenceSettings, *, annotate: bool) -> DetectOptions:
        return DetectOptions(
            conf=settings.default_conf if self.conf is None else self.conf,
            iou=settings.default_iou if self.iou is None else self.iou,
            max_det=self.max_det or settings.default_max_det,
            model=self.model,
            version=self.version,
            stage=self.stage,
            classes=tuple(self.classes) if self.classes else None,
            agnostic=self.agnostic,
            annotate=annotate,
            tile=self.tile,
            tile_overlap=self.tile_overlap,
            key=self.key,
        )


class DetectionOut(BaseModel):
    box_xyxy: list[float] = Field(description="x1, y1, x2, y2 in image pixels.")
    box_norm: list[float] = Field(description="x1, y1, x2, y2 divided by width/height (0-1).")
    class_id: int
    class_name: str
    score: float


class ImageSize(BaseModel):
    width: int
    height: int


class ModelRefOut(BaseModel):
    name: str
    version: str


class TimingsOut(BaseModel):
    decode_ms: float
    queue_wait_ms: float
    inference_ms: float = Field(description="The whole batch call this request rode in.")
    total_ms: float


class DetectResponse(BaseModel):
    detections: list[DetectionOut]
    image: ImageSize
    model: ModelRefOut
    batch_size: int = Field(description="Images in the batch call that answered.")
    tiles: int = Field(1, description="Tiles the frame was cut into (1 without tiling).")
    timings: TimingsOut

    @classmethod
    def of(cls, result: DetectResult) -> DetectResponse:
        t = result.timings
        return cls(
            detections=[
                DetectionOut(
                    box_xyxy=list(d.box_xyxy),
                    box_norm=list(d.box_norm),
                    class_id=d.class_id,
                    class_name=d.class_name,
                    score=d.score,
                )
                for d in result.detections
            ],
            image=ImageSize(width=result.width, height=result.height),
            model=ModelRefOut(name=result.model.name, version=result.model.version),
            batch_size=result.batch_size,
            tiles=result.tiles,
            timings=TimingsOut(
                decode_ms=t.decode_ms,
                queue_wait_ms=t.queue_wait_ms,
                inference_ms=t.inference_ms,
                total_ms=t.total_ms,
            ),
        )


class FallbackOut(BaseModel):
    version: str = Field(description="The FP32 version whose model.onnx answers instead.")
    reason: str = Field(description="Why the INT8 version is not served on this CPU.")


class ResidentModelOut(BaseModel):
    slot: str = Field(description="'default', or the target this slot serves.")
    name: str
    version: str
    runtime: str
    source: str
    follows: str | None = Field(description="The stage followed, None for a pinned version.")
    loaded_at: datetime
    idle_s: float
    classes: list[str]
    last_error: str | None
    queue_depth: int
    in_flight: int
    batches_run: int
    items_run: int
    items_rejected: int
    batch_sizes: dict[int, int] = Field(description="Batch size -> number of batch calls.")
    queue_delay_ms: float = Field(0.0, description="Wait for batch-mates in use.")
    batch_gain: float | None = Field(
        None, description="Per-image speed-up of a batch measured at load (adaptive delay)."
    )
    fallback: FallbackOut | None = Field(
        None,
        description="Set when 'version' is an INT8 version this CPU cannot run exactly "
        "(no VNNI): its FP32 source runs in its place.",
    )

    @classmethod
    def of(cls, model: ResidentModel) -> ResidentModelOut:
        s = model.stats
        fallback = model.fallback
        return cls(
            slot=model.slot,
            name=model.key.name,
            version=model.key.version,
            runtime=model.runtime,
            source=model.source,
            follows=model.follows,
            loaded_at=model.loaded_at,
            idle_s=model.idle_s,
            classes=model.class_names,
            last_error=model.last_error,
            queue_depth=s.queue_depth,
            in_flight=s.in_flight,
            batches_run=s.batches_run,
            items_run=s.items_run,
            items_rejected=s.items_rejected,
            batch_sizes=s.batch_sizes,
            queue_delay_ms=model.queue_delay_ms,
            batch_gain=None if model.batch_gain is None else round(model.batch_gain, 3),
            fallback=None
            if fallback is None
            else FallbackOut(version=fallback.version, reason=fallback.reason),
        )


class FollowedOut(BaseModel):
    name: str | None = Field(description="INFERENCE_MODEL_NAME (or the local model's name).")
    stage: str | None
    fallback_latest: bool
    local_model_path: str | None
    version: str | None = Field(description="The version served now, None when none is loaded.")
    error: str | None = Field(description="Why no default model is served.")


class BatchingOut(BaseModel):
    max_batch_size: int
    max_queue_delay_ms: float
    max_queue: int


class ModelsResponse(BaseModel):
    followed: FollowedOut
    resident: list[ResidentModelOut]
    max_resident: int
    batching: BatchingOut

    @classmethod
    def of(cls, runtime: ModelRuntime, settings: InferenceSettings) -> ModelsResponse:
        key = runtime.default_key
        target = runtime.default_target
        return cls(
            followed=FollowedOut(
                name=key.name if key else settings.model_name or None,
                stage=target.stage if target else None,
                fallback_latest=bool(target and target.fallback),
                local_model_path=settings.local_model_path or None,
                version=key.version if key else None,
                error=runtime.default_error,
            ),
            resident=[ResidentModelOut.of(m) for m in runtime.resident()],
            max_resident=settings.max_resident_models,
            batching=BatchingOut(
                max_batch_size=settings.max_batch_size,
                max_queue_delay_ms=settings.max_queue_delay_ms,
                max_queue=settings.max_queue,
            ),
        )


class SinkOut(BaseModel):
    name: str
    delivered: int = Field(description="Messages the sink acknowledged.")
    retries: int = Field(description="Failed attempts that were retried.")
    dropped: int = Field(description="Messages dropped because the queue was full.")
    failed: int = Field(description="Messages the sink refused for good (4xx).")
    queue_depth: int
    last_error: str | None


class SinksResponse(BaseModel):
    sinks: list[SinkOut]

    @classmethod
    def of(cls, stats: dict[str, SinkStats]) -> SinksResponse:
        return cls(
            sinks=[
                SinkOut(
                    name=name,
                    delivered=s.delivered,
                    retries=s.retries,
                    dropped=s.dropped,
                    failed=s.failed,
                    queue_depth=s.queue_depth,
                    last_error=s.last_error,
                )
                for name, s in stats.items()
            ]
        )
