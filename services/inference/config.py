"""Runtime settings of the inference service (env prefix ``INFERENCE_``)."""

from __future__ import annotations

from functools import lru_cache

from pydantic import Field
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


@lru_cache
def get_settings() -> InferenceSettings:
    return load_settings(InferenceSettings)
