"""Runtime settings of the pipeline service (env prefix ``PIPELINE_``)."""

from __future__ import annotations

from functools import lru_cache

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.config import CommonSettings, load_settings, register_settings


@register_settings
class PipelineSettings(BaseSettings):
    """Where the four services answer and how often the driver looks at running pipelines."""

    model_config = SettingsConfigDict(env_prefix="PIPELINE_", extra="ignore")
    common: CommonSettings = Field(default_factory=CommonSettings)
    anomaly_map_url: str = Field(
        "http://127.0.0.1:8001", description="Anomaly-map API base URL (PIPELINE_ANOMALY_MAP_URL)."
    )
    pretrain_url: str = Field(
        "http://127.0.0.1:8002", description="Pretrain API base URL (PIPELINE_PRETRAIN_URL)."
    )
    finetune_url: str = Field(
        "http://127.0.0.1:8003", description="Finetune API base URL (PIPELINE_FINETUNE_URL)."
    )
    inference_url: str = Field(
        "http://127.0.0.1:8004", description="Inference API base URL (PIPELINE_INFERENCE_URL)."
    )
    api_key: SecretStr = Field(
        SecretStr(""),
        description="Key with train and admin scopes the pipeline sends to the services when "
        "they check keys (PIPELINE_API_KEY); empty where auth is off.",
    )
    poll_interval_s: float = Field(
        2.0, gt=0, le=300, description="Seconds between driver ticks (PIPELINE_POLL_INTERVAL_S)."
    )
    lease_ttl_s: float = Field(
        60.0,
        gt=0,
        le=3600,
        description="A pipeline whose driver is silent this long is taken over by another "
        "(PIPELINE_LEASE_TTL_S).",
    )
    http_timeout_s: float = Field(
        60.0,
        gt=0,
        le=600,
        description="Timeout of one call to a service (PIPELINE_HTTP_TIMEOUT_S).",
    )
    max_concurrent_uploads: int = Field(
        4,
        ge=1,
        le=256,
        description="Uploads stored at once; more get 503 with Retry-After "
        "(PIPELINE_MAX_CONCURRENT_UPLOADS).",
    )
    upload_memory_mb: float = Field(
        8.0,
        gt=0,
        le=1024,
        description="Bytes of one upload held in memory before it spills to a temporary file "
        "(PIPELINE_UPLOAD_MEMORY_MB).",
    )
    driver: bool = Field(
        True, description="Run the driver loop in this API process (PIPELINE_DRIVER)."
    )

    def urls(self) -> dict[str, str]:
        """Service name -> base URL without a trailing slash."""
        return {
            "anomaly_map": self.anomaly_map_url.rstrip("/"),
            "pretrain": self.pretrain_url.rstrip("/"),
            "finetune": self.finetune_url.rstrip("/"),
            "inference": self.inference_url.rstrip("/"),
        }


@lru_cache
def get_settings() -> PipelineSettings:
    """Settings built once per process; a bad value stops start-up naming the variable."""
    return load_settings(PipelineSettings)
