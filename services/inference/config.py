"""Runtime settings of the inference service (env prefix ``INFERENCE_``)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.config import CommonSettings, load_settings, register_settings


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
