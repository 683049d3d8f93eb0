"""Runtime settings of the finetune service (env prefix ``FINETUNE_``)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.config import CommonSettings, load_settings, register_settings


@register_settings
class FinetuneSettings(BaseSettings):
    """Where detector training runs and how much of the machine it may use."""

    model_config = SettingsConfigDict(env_prefix="FINETUNE_", extra="ignore")
    common: CommonSettings = Field(default_factory=CommonSettings)
    device: str = Field("auto", description="auto, cpu, cuda or cuda:N (FINETUNE_DEVICE).")
    work_dir: str = Field("", description="Local scratch for ultralytics runs (FINETUNE_WORK_DIR).")
    workers: int = Field(0, ge=0, le=64, description="Data loader workers (FINETUNE_WORKERS).")
    min_transfer_fraction: float = Field(
        0.9,
        gt=0,
        le=1,
        description="Least share of start tensors a weight transfer must copy, else the job "
        "fails (FINETUNE_MIN_TRANSFER_FRACTION).",
    )
    eval_batch: int = Field(
        8, ge=1, le=256, description="Images per forward pass in evaluations (FINETUNE_EVAL_BATCH)."
    )
    max_image_mb: float = Field(
        32.0,
        gt=0,
        description="Largest image file a job reads from the store (FINETUNE_MAX_IMAGE_MB).",
    )
    download_threads: int = Field(
        8,
        ge=1,
        le=64,
        description="Concurrent store transfers per job (FINETUNE_DOWNLOAD_THREADS).",
    )
    keep_work_dir: bool = Field(
        False,
        description="Keep a finished job's local scratch folder for debugging "
        "(FINETUNE_KEEP_WORK_DIR).",
    )

    def resolved_work_dir(self) -> Path:
        """FINETUNE_WORK_DIR, else ``$AGSSP_HOME/finetune``."""
        if self.work_dir:
            return Path(self.work_dir).expanduser().resolve()
        return self.common.paths.resolved_home() / "finetune"

    def ultralytics_dir(self) -> Path:
        """ultralytics' settings, fonts and default folders (YOLO_CONFIG_DIR)."""
        return self.resolved_work_dir() / "ultralytics"


@lru_cache
def get_settings() -> FinetuneSettings:
    return load_settings(FinetuneSettings)
