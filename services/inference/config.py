"""Runtime settings of the inference service (env prefix ``INFERENCE_``)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.config import CommonSettings, load_settings, register_settings

_BOOL_WORDS = {
    "true": "always", "1": "always", "yes": "always", "on": "always",
    "false": "off", "0": "off", "no": "off",
}  # fmt: skip


class SinkSpec(BaseModel):
    """One destination that detection results are pushed to (an entry of INFERENCE_SINKS).

    A result goes to a sink when its model is in ``models`` (empty: every model) and the
    request's routing ``key`` is in ``keys`` (empty: every request).
    """

    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$", description="Metrics and logs name.")
    kind: Literal["mqtt", "webhook"]
    url: str = Field(description="mqtt://[user:password@]host[:port] or http(s)://... endpoint.")
    topic: str = Field(
        "agssp/{model}/detections",
        description="MQTT topic; {model}, {version} and {key} are filled in per result.",
    )
    qos: Literal[0, 1, 2] = 1
    headers: dict[str, str] = Field(default_factory=dict, description="Extra webhook headers.")
    models: list[str] = Field(default_factory=list)
    keys: list[str] = Field(default_factory=list)
    include_png: bool = Field(False, description="Add the annotated frame (base64 PNG).")
    max_queue: int = Field(256, ge=1, le=100_000, description="Results held; oldest dropped.")
    timeout_s: float = Field(5.0, gt=0, le=120)

    @model_validator(mode="after")
    def _scheme_fits_kind(self) -> SinkSpec:
        schemes = ("mqtt://",) if self.kind == "mqtt" else ("http://", "https://")
        if not self.url.startswith(schemes):
            raise ValueError(f"a {self.kind} sink's url must start with {' or '.join(schemes)}")
        return self


@register_settings
class InferenceSettings(BaseSettings):
    """Which model to serve and how requests are batched."""

    model_config = SettingsConfigDict(env_prefix="INFERENCE_", extra="ignore")
    common: CommonSettings = Field(default_factory=CommonSettings)
    model_name: str = Field(
        "", description="Registry model served by default (INFERENCE_MODEL_NAME)."
    )
    model_stage: str = Field("production", description="Stage followed (INFERENCE_MODEL_STAGE).")
    device: str = Field("auto", description="auto, cpu or cuda (INFERENCE_DEVICE).")
    max_batch_size: int = Field(8, ge=1, le=256, description="INFERENCE_MAX_BATCH_SIZE")
    max_queue_delay_ms: float = Field(
        5.0, ge=0, le=1000, description="INFERENCE_MAX_QUEUE_DELAY_MS"
    )
    max_queue: int = Field(
        64, ge=1, description="Queued requests before 429 (INFERENCE_MAX_QUEUE)."
    )
    max_resident_models: int = Field(
        2, ge=1, description="LRU cap (INFERENCE_MAX_RESIDENT_MODELS)."
    )
    poll_interval_s: float = Field(
        15.0,
        gt=0,
        description="How often the registry stage is re-read (INFERENCE_POLL_INTERVAL_S).",
    )
    backend: Literal["onnxruntime", "openvino"] = Field(
        "onnxruntime",
        description="Runtime of ONNX models: onnxruntime, or openvino on Intel/AMD CPUs "
        "(INFERENCE_BACKEND).",
    )
    precision: Literal["fp32", "fp16"] = Field(
        "fp32",
        description="fp16 runs on CUDA only: TensorRT FP16 where installed, else the CUDA "
        "provider on an FP16 graph (INFERENCE_PRECISION).",
    )
    openvino_hint: Literal["throughput", "latency"] = Field(
        "throughput", description="OpenVINO performance hint (INFERENCE_OPENVINO_HINT)."
    )
    ort_spinning: Literal["off", "during_runs", "always"] = Field(
        "during_runs",
        description="When ONNX Runtime's idle threads busy-wait (INFERENCE_ORT_SPINNING): "
        "during_runs (between a run's parallel regions, stopped as it returns: faster than "
        "off for single requests, mixed under load; benchmarks/results/detect_spinning.json); "
        "off; always (ORT's default, also between batches, taking the cores decoding and HTTP "
        "need). true/false are read as always/off.",
    )

    @field_validator("ort_spinning", mode="before")
    @classmethod
    def _spinning_from_bool(cls, value: object) -> object:
        """The setting was a boolean before it had three values: keep those meaning it."""
        if isinstance(value, bool):
            return "always" if value else "off"
        if isinstance(value, str):
            return _BOOL_WORDS.get(value.strip().lower(), value)
        return value

    adaptive_delay: bool = Field(
        True,
        description="Wait up to INFERENCE_MAX_QUEUE_DELAY_MS for batch-mates only when a "
        "batch measured at model load runs >= 10 % faster per image than single images "
        "(INFERENCE_ADAPTIVE_DELAY); queued requests are batched either way.",
    )
    intra_op_threads: int = Field(
        0, ge=0, description="ORT threads, 0 = auto (INFERENCE_INTRA_OP_THREADS)."
    )
    allow_pickle: bool = Field(
        False,
        description="Allow torch .pt checkpoints from trusted local paths (INFERENCE_ALLOW_PICKLE).",
    )
    local_model_path: str = Field(
        "",
        description="Serve this local ONNX file instead of the registry (INFERENCE_LOCAL_MODEL_PATH).",
    )
    fallback_latest: bool = Field(
        True,
        description="Serve LATEST while the followed stage is unset (INFERENCE_FALLBACK_LATEST).",
    )
    imgsz: int = Field(
        0,
        ge=0,
        le=4096,
        description="Network input side; 0 = the export's own size (INFERENCE_IMGSZ).",
    )
    max_image_mb: float = Field(
        32.0, gt=0, description="Largest encoded request image (INFERENCE_MAX_IMAGE_MB)."
    )
    default_conf: float = Field(
        0.25, ge=0, le=1, description="Confidence threshold by default (INFERENCE_DEFAULT_CONF)."
    )
    default_iou: float = Field(
        0.7, ge=0, le=1, description="NMS IoU threshold by default (INFERENCE_DEFAULT_IOU)."
    )
    default_max_det: int = Field(
        300,
        ge=1,
        le=1000,
        description="Detections per image by default (INFERENCE_DEFAULT_MAX_DET).",
    )
    cache_dir: Path | None = Field(
        None,
        description="Local copies of registry models (INFERENCE_CACHE_DIR); "
        "default AGSSP_HOME/cache/inference (AGSSP_MODEL_DIR may be read-only).",
    )
    sinks: list[SinkSpec] = Field(
        default_factory=list,
        description="JSON list of result sinks (INFERENCE_SINKS), e.g. "
        '[{"name": "line", "kind": "mqtt", "url": "mqtt://broker:1883"}].',
    )
    sink_retry_max_s: float = Field(
        2.0,
        gt=0,
        le=300,
        description="Longest wait between delivery attempts to a sink that is down "
        "(INFERENCE_SINK_RETRY_MAX_S).",
    )
    sink_flush_s: float = Field(
        2.0, ge=0, le=60, description="Shutdown grace for queued results (INFERENCE_SINK_FLUSH_S)."
    )
    retry_failed_load_s: float = Field(
        5.0,
        ge=0,
        description="A model that failed to load is retried after this long "
        "(INFERENCE_RETRY_FAILED_LOAD_S).",
    )

    @model_validator(mode="after")
    def _pickle_needs_consent(self) -> InferenceSettings:
        if self.local_model_path.lower().endswith(".pt") and not self.allow_pickle:
            raise ValueError(
                "INFERENCE_LOCAL_MODEL_PATH is a .pt pickle: set INFERENCE_ALLOW_PICKLE=true "
                "(trusted files only) or serve an ONNX export"
            )
        return self

    def resolved_cache_dir(self) -> Path:
        default = self.common.paths.resolved_home() / "cache" / "inference"
        return (self.cache_dir or default).expanduser().resolve()


@lru_cache
def get_settings() -> InferenceSettings:
    return load_settings(InferenceSettings)
