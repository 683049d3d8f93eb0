"""Settings: environment variables, defaults, and readable errors on bad values."""

from __future__ import annotations

import pytest

from shared.config import CommonSettings, S3Settings, SettingsError, StorageSettings, load_settings


def test_backend_auto_follows_s3_endpoint() -> None:
    assert CommonSettings(s3=S3Settings(endpoint_url=None)).storage_backend() == "file"
    assert (
        CommonSettings(s3=S3Settings(endpoint_url="http://minio:9000/")).storage_backend() == "s3"
    )


def test_environment_variables_are_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("S3_BUCKET", "plant-7")
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:6379/2")
    settings = CommonSettings()
    assert settings.s3.bucket == "plant-7"
    assert settings.redis.url == "redis://127.0.0.1:6379/2"


def test_bad_value_names_the_variable_and_accepted_values(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STORAGE_BACKEND", "ftp")
    with pytest.raises(SettingsError) as info:
        load_settings(StorageSettings)
    message = str(info.value)
    assert "STORAGE_BACKEND='ftp'" in message
    assert "'auto', 'file' or 's3'" in message


def test_bad_endpoint_scheme_is_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("S3_ENDPOINT_URL", "minio:9000")
    with pytest.raises(SettingsError, match="S3_ENDPOINT_URL"):
        load_settings(S3Settings)
