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
    checkpoint_every_s: float = Field(
        2.0,
        ge=0.0,
        description="A dataset map job saves a checkpoint segment (a store sync first) at most "
        "this often; a lost worker redoes at most that much work; 0 = after every batch "
        "(ANOMALY_MAP_CHECKPOINT_EVERY_S).",
    )
    tile_size: int = Field(
        0,
        ge=0,
        description="Default tile size for large images, 0 = no tiling (ANOMALY_MAP_TILE_SIZE).",
    )
    tile_overlap: float = Field(
        0.125,
        ge=0.0,
        lt=0.9,
        description="Overlap of neighbouring tiles as a fraction of the tile side "
        "(ANOMALY_MAP_TILE_OVERLAP).",
    )
    max_tiles: int = Field(
        1024, ge=1, description="Most tiles one request may produce (ANOMALY_MAP_MAX_TILES)."
    )
    extra_model_config_dir: Path | None = Field(
        None,
        description="Folder (or file) of extra open_clip model configs registered at start-up, "
        "e.g. tests/fixtures (ANOMALY_MAP_EXTRA_MODEL_CONFIG_DIR).",
    )
    random_weights_seed: int = Field(
        0,
        description="Seed of a randomly initialised encoder, so API and workers agree "
        "(ANOMALY_MAP_RANDOM_WEIGHTS_SEED).",
    )
    max_image_mb: float = Field(
        32.0, gt=0, description="Largest encoded image accepted (ANOMALY_MAP_MAX_IMAGE_MB)."
    )
    max_references: int = Field(
        16, ge=1, le=256, description="Reference images per category (ANOMALY_MAP_MAX_REFERENCES)."
    )
    text_cache_size: int = Field(
        64, ge=1, description="Text features kept in memory (LRU) (ANOMALY_MAP_TEXT_CACHE_SIZE)."
    )
    bank_cache_size: int = Field(
        8, ge=1, description="Memory banks kept in memory (LRU) (ANOMALY_MAP_BANK_CACHE_SIZE)."
    )
    max_pending: int = Field(
        32,
        ge=1,
        description="Requests that may wait for the model; more get 429 (ANOMALY_MAP_MAX_PENDING).",
    )
    data_root: Path | None = Field(
        None,
        description="Local folder against which relative `samples` paths of imported "
        "description files are resolved (ANOMALY_MAP_DATA_ROOT).",
    )
    overlay_alpha: float = Field(
        0.5, ge=0.0, le=1.0, description="Heat-map weight in overlays (ANOMALY_MAP_OVERLAY_ALPHA)."
    )
    evaluation_max_images: int = Field(
        2000,
        ge=2,
        description="Most images one evaluation job scores; maps are held at S x S in memory "
        "(ANOMALY_MAP_EVALUATION_MAX_IMAGES).",
    )


@lru_cache
def get_settings() -> AnomalyMapSettings:
    return load_settings(AnomalyMapSettings)
