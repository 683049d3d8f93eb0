"""Runtime settings of the finetune service (env prefix ``FINETUNE_``)."""

from __future__ import annotations

from functools import lru_cache

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.config import CommonSettings, load_settings, register_settings


@register_settings
class FinetuneSettings(BaseSettings):
    """Where detector training runs."""

    model_config = SettingsConfigDict(env_prefix="FINETUNE_", extra="ignore")
    common: CommonSettings = Field(default_factory=CommonSettings)
    device: str = Field("auto", description="auto, cpu, cuda or cuda:N (FINETUNE_DEVICE).")
    work_dir: str = Field("", description="Local scratch for ultralytics runs (FINETUNE_WORK_DIR).")
    workers: int = Field(0, ge=0, le=64, description="Data loader workers (FINETUNE_WORKERS).")


@lru_cache
def get_settings() -> FinetuneSettings:
    return load_settings(FinetuneSettings)
