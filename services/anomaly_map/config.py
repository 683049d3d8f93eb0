"""Runtime settings of the anomaly-map service (env prefix ``ANOMALY_MAP_``)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.config import CommonSettings, load_settings, register_settings


@register_settings
class AnomalyMapSettings(BaseSettings):
    """Which CLIP encoder KeAD uses, where its weights are, and request limits."""

    model_config = SettingsConfigDict(env_prefix="ANOMALY_MAP_", extra="ignore")
    common: CommonSettings = Field(default_factory=CommonSettings)
    clip_model: str = Field(
        "ViT-B-16-plus-240", description="open_clip model name (ANOMALY_MAP_CLIP_MODEL)."
    )
    checkpoint: Path | None = Field(
        None,
        description="Explicit weights file; default AGSSP_MODEL_DIR/open_clip/<model>/ (ANOMALY_MAP_CHECKPOINT).",
    )
    allow_random_weights: bool = Field(
        False,
        description="Serve a randomly initialised encoder (demos/tests only) (ANOMALY_MAP_ALLOW_RANDOM_WEIGHTS).",
    )
    device: str = Field("auto", description="auto, cpu, cuda or cuda:N (ANOMALY_MAP_DEVICE).")
    precision: Literal["fp32", "fp16"] = Field(
        "fp32", description="fp16 only on CUDA (ANOMALY_MAP_PRECISION)."
    )
    max_batch_size: int = Field(8, ge=1, le=256, description="ANOMALY_MAP_MAX_BATCH_SIZE")
    tile_size: int = Field(
        0,
        ge=0,
        description="Default tile size for large images, 0 = no tiling (ANOMALY_MAP_TILE_SIZE).",
    )


@lru_cache
def get_settings() -> AnomalyMapSettings:
    return load_settings(AnomalyMapSettings)
