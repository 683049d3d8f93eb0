"""Runtime settings shared by every service, read from the environment (pydantic-settings).

Every field has an environment variable (class prefix + field name, upper case) and a
documented default. Nothing here is read at import time: entry points call ``get_settings()``
or build the classes explicitly (tests). ``load_settings`` turns a validation failure into a
``SettingsError`` whose message names the variable and the accepted values.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

_SETTINGS_CLASSES: dict[str, type[BaseSettings]] = {}

# ultralytics reads these once, at its first import; a process that imported it with its
# defaults (online checks, pip auto-install) cannot be made offline later (field-notes §B2).
ULTRALYTICS_OFFLINE_ENV = {"YOLO_OFFLINE": "1", "YOLO_AUTOINSTALL": "False"}

S = TypeVar("S", bound=BaseSettings)


def _register(cls: type[S]) -> type[S]:
    _SETTINGS_CLASSES[cls.__name__] = cls
    return cls


@_register
class PathSettings(BaseSettings):
    """Where the embedded single-machine default keeps its state."""

    model_config = SettingsConfigDict(env_prefix="AGSSP_", extra="ignore")
    home: Path = Field(Path("var/agssp"), description="Root folder of local state (AGSSP_HOME).")
    model_dir: Path | None = Field(
        None, description="Local model weights folder (AGSSP_MODEL_DIR); default HOME/models."
    )

    def resolved_home(self) -> Path:
        return self.home.expanduser().resolve()

    def resolved_model_dir(self) -> Path:
        return (self.model_dir or self.resolved_home() / "models").expanduser().resolve()


@_register
class S3Settings(BaseSettings):
    """An S3 server: MinIO, AWS S3 or any S3-compatible endpoint (path-style addressing)."""

    model_config = SettingsConfigDict(env_prefix="S3_", extra="ignore")
    endpoint_url: str | None = Field(
        None, description="e.g. http://minio:9000; unset = local-folder storage (S3_ENDPOINT_URL)."
    )
    bucket: str = Field("agssp", description="Bucket for every object of the suite (S3_BUCKET).")
    access_key_id: str = Field("", description="S3_ACCESS_KEY_ID")
    secret_access_key: SecretStr = Field(SecretStr(""), description="S3_SECRET_ACCESS_KEY")
    region: str = Field("us-east-1", description="S3_REGION")
    create_bucket: bool = Field(
        True, description="Create the bucket when missing (S3_CREATE_BUCKET)."
    )
    part_size_mb: int = Field(
        16, ge=5, le=5120, description="Multipart part size (S3_PART_SIZE_MB)."
    )
    timeout_s: float = Field(10.0, gt=0, description="Connect/read timeout (S3_TIMEOUT_S).")
    retries: int = Field(2, ge=0, le=10, description="Retries on connection errors (S3_RETRIES).")

    @field_validator("endpoint_url")
    @classmethod
    def _endpoint_has_scheme(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value.rstrip("/")


@_register
class StorageSettings(BaseSettings):
    """Which object store backs the suite."""

    model_config = SettingsConfigDict(env_prefix="STORAGE_", extra="ignore")
    backend: Literal["auto", "file", "s3"] = Field(
        "auto", description="auto = s3 when S3_ENDPOINT_URL is set, else file (STORAGE_BACKEND)."
    )
    root: Path | None = Field(None, description="Folder of the file backend (STORAGE_ROOT).")


@_register
class RedisSettings(BaseSettings):
    """The Celery broker. Unset = embedded filesystem broker under AGSSP_HOME."""

    model_config = SettingsConfigDict(env_prefix="REDIS_", extra="ignore")
    url: str | None = Field(None, description="e.g. redis://redis:6379/0 (REDIS_URL).")

    @field_validator("url")
    @classmethod
    def _redis_scheme(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        if not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must start with redis://, rediss:// or unix://")
        return value


@_register
class JobSettings(BaseSettings):
    """Celery and job-record behaviour (field-notes §C1)."""

    model_config = SettingsConfigDict(env_prefix="JOBS_", extra="ignore")
    visibility_timeout_s: int = Field(
        3600,
        ge=10,
        description="Redis redelivery delay of unacked jobs (JOBS_VISIBILITY_TIMEOUT_S).",
    )
    soft_time_limit_s: int = Field(
        86_400, ge=1, description="Soft limit: job checkpoints and stops (JOBS_SOFT_TIME_LIMIT_S)."
    )
    time_limit_s: int = Field(90_000, ge=1, description="Hard limit (JOBS_TIME_LIMIT_S).")
    lease_ttl_s: float = Field(
        60.0,
        gt=0,
        description="A RUNNING job whose heartbeat is older is orphaned (JOBS_LEASE_TTL_S).",
    )
    heartbeat_s: float = Field(10.0, gt=0, description="Heartbeat period (JOBS_HEARTBEAT_S).")
    reaper_interval_s: float = Field(
        30.0, gt=0, description="How often workers re-queue orphaned jobs (JOBS_REAPER_INTERVAL_S)."
    )
    soft_shutdown_timeout_s: float = Field(
        30.0,
        ge=0,
        description="Warm-shutdown grace for checkpointing (JOBS_SOFT_SHUTDOWN_TIMEOUT_S).",
    )
    max_attempts: int = Field(5, ge=1, description="Deliveries before FAILED (JOBS_MAX_ATTEMPTS).")
    # 60 s, not the 900 s it was: a waiting job's claim delay grows with the queue ahead of
    # it, so no threshold tells lost from waiting, and a needless re-publish costs one
    # dropped duplicate (benchmarks/queue_wait.py); a lost message now waits about a minute.
    pending_requeue_s: float = Field(
        60.0,
        gt=0,
        description=(
            "A PENDING job unclaimed this long is re-published; the wait doubles per re-publish "
            "(JOBS_PENDING_REQUEUE_S)."
        ),
    )
    storage_patience_s: float = Field(
        60.0,
        ge=0,
        le=3600,
        description="How long a job's store call retries a storage outage before the job is "
        "left RUNNING for another delivery (JOBS_STORAGE_PATIENCE_S; 0: no retry).",
    )
    record_retry_s: float = Field(
        5.0,
        gt=0,
        le=3600,
        description="First retry delay of a task that cannot read its record (JOBS_RECORD_RETRY_S).",
    )


@_register
class AuthSettings(BaseSettings):
    """API keys. Empty = auth off (embedded default on loopback)."""

    model_config = SettingsConfigDict(env_prefix="AUTH_", extra="ignore")
    api_keys: list[str] = Field(
        default_factory=list,
        description=(
            "JSON list of 'name:sha256hex:scope+scope' entries (AUTH_API_KEYS); "
            "make one with `agssp keys create`."
        ),
    )

    @field_validator("api_keys")
    @classmethod
    def _entries_well_formed(cls, value: list[str]) -> list[str]:
        for entry in value:
            parts = entry.split(":")
            if len(parts) != 3 or len(parts[1]) != 64:
                raise ValueError(f"entry {entry[:20]!r}… must be 'name:sha256hex:scope+scope'")
        return value


@_register
class HttpSettings(BaseSettings):
    """Limits applied to every HTTP request."""

    model_config = SettingsConfigDict(env_prefix="HTTP_", extra="ignore")
    max_body_mb: float = Field(64.0, gt=0, description="Request body cap (HTTP_MAX_BODY_MB).")
    max_image_pixels: int = Field(
        60_000_000, gt=0, description="Decoded image pixel cap (HTTP_MAX_IMAGE_PIXELS)."
    )
    service_max_image_pixels: dict[str, int] = Field(
        default_factory=lambda: {"inference": 16_000_000, "anomaly_map": 40_000_000},
        description=(
            "Tighter pixel caps per service API, JSON {service: pixels} "
            "(HTTP_SERVICE_MAX_IMAGE_PIXELS); a 640 px detector needs far less than 60 Mpx."
        ),
    )
    decode_budget_pixels: int = Field(
        120_000_000,
        gt=0,
        description=(
            "Pixels one API process decodes at once; beyond it requests get 503 + Retry-After "
            "(HTTP_DECODE_BUDGET_PIXELS)."
        ),
    )
    cors_origins: list[str] = Field(default_factory=list, description="HTTP_CORS_ORIGINS")
    header_timeout_s: float = Field(
        30.0,
        gt=0,
        le=600,
        description="A request's headers must be complete this long after its first byte "
        "(HTTP_HEADER_TIMEOUT_S); slower clients are disconnected.",
    )
    body_idle_s: float = Field(
        60.0,
        gt=0,
        le=3600,
        description="Longest pause inside a request body (HTTP_BODY_IDLE_S).",
    )

    def image_pixel_cap(self, service: str) -> int:
        """The pixel cap of one service's API: its own entry, never above the global cap."""
        own = self.service_max_image_pixels.get(service, self.max_image_pixels)
        return max(1, min(own, self.max_image_pixels))

    max_json_kb: int = Field(
        1024, ge=1, le=65536, description="JSON request body cap (HTTP_MAX_JSON_KB)."
    )
    max_json_depth: int = Field(
        32, ge=2, le=512, description="Deepest JSON nesting accepted (HTTP_MAX_JSON_DEPTH)."
    )
    max_json_keys: int = Field(
        10_000,
        ge=1,
        le=1_000_000,
        description="Most object keys per JSON body (HTTP_MAX_JSON_KEYS).",
    )


@_register
class LogSettings(BaseSettings):
    """Logging."""

    model_config = SettingsConfigDict(env_prefix="LOG_", extra="ignore")
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="LOG_LEVEL")
    json_format: bool = Field(False, description="One JSON object per line (LOG_JSON_FORMAT).")


@_register
class TrainingSettings(BaseSettings):
    """CPU resources of training jobs (AGBP, AGDP, finetune, ToCoAD fits)."""

    model_config = SettingsConfigDict(env_prefix="TRAINING_", extra="ignore")
    threads: int = Field(
        0,
        ge=0,
        le=1024,
        description="Torch CPU threads per worker process, 0 = every core it is given "
        "(TRAINING_THREADS); ultralytics' own default would leave one core idle.",
    )


@_register
class CommonSettings(BaseSettings):
    """Everything the infrastructure of any service needs; each service nests this."""

    model_config = SettingsConfigDict(extra="ignore")
    paths: PathSettings = Field(default_factory=PathSettings)
    storage: StorageSettings = Field(default_factory=StorageSettings)
    s3: S3Settings = Field(default_factory=S3Settings)
    redis: RedisSettings = Field(default_factory=RedisSettings)
    jobs: JobSettings = Field(default_factory=JobSettings)
    auth: AuthSettings = Field(default_factory=AuthSettings)
    http: HttpSettings = Field(default_factory=HttpSettings)
    log: LogSettings = Field(default_factory=LogSettings)
    training: TrainingSettings = Field(default_factory=TrainingSettings)

    def storage_backend(self) -> Literal["file", "s3"]:
        if self.storage.backend == "auto":
            return "s3" if self.s3.endpoint_url else "file"
        return self.storage.backend

    def storage_root(self) -> Path:
        return (self.storage.root or self.paths.resolved_home() / "store").expanduser().resolve()

    def broker_dir(self) -> Path:
        return self.paths.resolved_home() / "broker"


class SettingsError(SystemExit):
    """A setting has a bad value; the message names the variable and what is accepted."""


def register_settings(cls: type[S]) -> type[S]:
    """Make a service's settings class known to ``describe_validation_error``."""
    return _register(cls)


def describe_validation_error(exc: ValidationError) -> str:
    """Render a pydantic error as 'VARIABLE=value: problem' lines."""
    cls = _SETTINGS_CLASSES.get(exc.title)
    prefix = str(cls.model_config.get("env_prefix", "")) if cls else ""
    lines = []
    for err in exc.errors():
        name = prefix + "_".join(str(part) for part in err["loc"]).upper()
        accepted = err.get("ctx", {}).get("expected")
        detail = f"; accepted values: {accepted}" if accepted else ""
        lines.append(f"invalid setting {name}={err.get('input')!r}: {err['msg']}{detail}")
    return "\n".join(lines)


def load_settings(cls: type[S], **overrides: Any) -> S:
    """Build a settings class, turning validation errors into a readable ``SettingsError``."""
    try:
        return cls(**overrides)
    except ValidationError as exc:
        raise SettingsError(describe_validation_error(exc)) from exc


@lru_cache
def get_common_settings() -> CommonSettings:
    """The process-wide infrastructure settings (cached)."""
    return load_settings(CommonSettings)


def configure_offline_environment(paths: PathSettings | None = None) -> dict[str, str]:
    """Put ultralytics' offline variables into this process's environment; children inherit it.

    Entry points (every ``agssp`` command, ``make_celery``) call this before anything can
    import ultralytics, whatever environment they were started with: ``YOLO_OFFLINE=1`` and
    ``YOLO_AUTOINSTALL=False`` are forced (the suite never lets ultralytics reach the network
    or pip), and ``YOLO_CONFIG_DIR`` defaults to ``AGSSP_HOME/ultralytics`` (a value already
    set is kept). Idempotent.

    Args:
        paths: Where ``AGSSP_HOME`` is; read from the environment when None.

    Returns:
        The offline variables that held another value before, with that value.
    """
    overridden = {
        name: os.environ[name]
        for name, value in ULTRALYTICS_OFFLINE_ENV.items()
        if os.environ.get(name, value) != value
    }
    os.environ.update(ULTRALYTICS_OFFLINE_ENV)
    home = (paths or PathSettings()).resolved_home()
    os.environ.setdefault("YOLO_CONFIG_DIR", str(home / "ultralytics"))
    return overridden
