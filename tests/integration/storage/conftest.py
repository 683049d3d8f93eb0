"""A moto S3 server for the session and a fresh bucket per test, reached like MinIO."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator

import pytest
from pydantic import SecretStr

from shared.config import S3Settings
from shared.storage.s3 import S3ObjectStore
from tests.servers import ServerHandle, start_moto_s3


def s3_settings_for(url: str, **overrides: object) -> S3Settings:
    """Settings for a test endpoint: a unique bucket, 5 MiB parts, short timeouts."""
    values: dict[str, object] = {
        "endpoint_url": url,
        "bucket": f"t-{uuid.uuid4().hex[:12]}",
        "access_key_id": "testing",
        "secret_access_key": SecretStr("testing"),
        "region": "us-east-1",
        "part_size_mb": 5,
        "timeout_s": 2.0,
        "retries": 1,
    }
    values.update(overrides)
    return S3Settings(**values)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def moto_s3() -> Iterator[ServerHandle]:
    with start_moto_s3() as server:
        yield server


def drop_bucket(settings: S3Settings) -> None:
    """Delete a test bucket and its objects; leaves nothing behind on an external endpoint."""
    store = S3ObjectStore(settings)
    with contextlib.suppress(Exception):
        for key in store.list():
            store.delete(key)
        store.client.remove_bucket(settings.bucket)


@pytest.fixture
def s3_settings(moto_s3: ServerHandle) -> Iterator[S3Settings]:
    settings = s3_settings_for(moto_s3.url)
    yield settings
    drop_bucket(settings)


@pytest.fixture
def store(s3_settings: S3Settings) -> S3ObjectStore:
    return S3ObjectStore(s3_settings)
