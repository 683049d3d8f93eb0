"""Runtime settings of the console (env prefix ``CONSOLE_``): where the four APIs answer."""

from __future__ import annotations

from functools import lru_cache

from pydantic import Field, HttpUrl
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.config import CommonSettings, load_settings, register_settings

UPSTREAMS = ("anomaly_map", "pretrain", "finetune", "inference", "pipeline")


@register_settings
class ConsoleSettings(BaseSettings):
    """Base URLs the console's proxy forwards to, as the console's host reaches them."""

    model_config = SettingsConfigDict(env_prefix="CONSOLE_", extra="ignore")
    common: CommonSettings = Field(default_factory=CommonSettings)
    anomaly_map_url: HttpUrl = Field(
        HttpUrl("http://127.0.0.1:8001"), description="CONSOLE_ANOMALY_MAP_URL"
    )
    pretrain_url: HttpUrl = Field(
        HttpUrl("http://127.0.0.1:8002"), description="CONSOLE_PRETRAIN_URL"
    )
    finetune_url: HttpUrl = Field(
        HttpUrl("http://127.0.0.1:8003"), description="CONSOLE_FINETUNE_URL"
    )
    inference_url: HttpUrl = Field(
        HttpUrl("http://127.0.0.1:8004"), description="CONSOLE_INFERENCE_URL"
    )
    pipeline_url: HttpUrl = Field(
        HttpUrl("http://127.0.0.1:8006"), description="CONSOLE_PIPELINE_URL (the pipeline API)"
    )
    proxy_timeout_s: float = Field(
        120.0, gt=0, le=3600, description="Upstream read timeout (CONSOLE_PROXY_TIMEOUT_S)."
    )
    poll_interval_ms: int = Field(
        1000,
        ge=200,
        le=60000,
        description="How often job pages refresh (CONSOLE_POLL_INTERVAL_MS).",
    )

    def upstreams(self) -> dict[str, str]:
        """Service name -> base URL without a trailing slash."""
        urls = (
            self.anomaly_map_url,
            self.pretrain_url,
            self.finetune_url,
            self.inference_url,
            self.pipeline_url,
        )
        return {name: str(url).rstrip("/") for name, url in zip(UPSTREAMS, urls, strict=True)}


@lru_cache
def get_settings() -> ConsoleSettings:
    return load_settings(ConsoleSettings)
