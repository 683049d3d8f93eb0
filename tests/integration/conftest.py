"""Session-wide real servers for integration tests: redis-server and moto's S3 server."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.servers import ServerHandle, start_moto_s3, start_redis


@pytest.fixture(scope="session")
def redis_server() -> Iterator[ServerHandle]:
    with start_redis() as server:
        yield server


@pytest.fixture(scope="session")
def s3_server() -> Iterator[ServerHandle]:
    with start_moto_s3() as server:
        yield server
