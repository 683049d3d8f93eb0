"""Runtime settings of the pretrain service (env prefix ``PRETRAIN_``)."""

from __future__ import annotations

from functools import lru_cache

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.config import CommonSettings, load_settings, register_settings


@register_settings
class PretrainSettings(BaseSettings):
    """Where AGBP runs and how much of the machine it may use."""

    model_config = SettingsConfigDict(env_prefix="PRETRAIN_", extra="ignore")
    common: CommonSettings = Field(default_factory=CommonSettings)
    device: str = Field("auto", description="auto, cpu, cuda or cuda:N (PRETRAIN_DEVICE).")
    cache_dir: str = Field(
        "", description="Local cache of images/maps read from the store (PRETRAIN_CACHE_DIR)."
    )
    num_workers: int = Field(
        2, ge=0, le=64, description="DataLoader workers (PRETRAIN_NUM_WORKERS)."
    )


@lru_cache
def get_settings() -> PretrainSettings:
    return load_settings(PretrainSettings)
