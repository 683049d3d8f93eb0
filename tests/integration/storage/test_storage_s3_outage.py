"""S3 outages: a stopped or hung server fails fast with ``UnavailableError``; after a restart
(moto loses its buckets) the store itself recreates the bucket on the next write.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest

from shared.errors import UnavailableError
from shared.storage.base import ObjectNotFoundError
from shared.storage.s3 import S3ObjectStore
from tests.integration.storage.conftest import s3_settings_for
from tests.servers import ServerHandle, start_moto_s3

pytestmark = pytest.mark.timeout(120)
FAIL_FAST_S = 15.0


@pytest.fixture
def own_moto() -> Iterator[ServerHandle]:
    """A private server this test may stop (never the shared or an external one)."""
    with start_moto_s3(allow_external=False) as server:
        yield server


@pytest.fixture
def outage_store(own_moto: ServerHandle) -> S3ObjectStore:
    store = S3ObjectStore(s3_settings_for(own_moto.url, timeout_s=2.0, retries=1))
    store.put_bytes("before", b"1")
    return store


def test_stopped_server_fails_fast_with_a_retry_hint(
    own_moto: ServerHandle, outage_store: S3ObjectStore
) -> None:
    # given
    own_moto.stop()
    started = time.monotonic()
    # when
    with pytest.raises(UnavailableError) as caught:
        outage_store.get_bytes("before")
    # then
    assert time.monotonic() - started < FAIL_FAST_S
    assert caught.value.retry_after_s >= 1
    assert own_moto.url in caught.value.message


def test_stopped_server_fails_ping(own_moto: ServerHandle, outage_store: S3ObjectStore) -> None:
    own_moto.stop()
    with pytest.raises(UnavailableError):
        outage_store.ping()


def test_stopped_server_fails_writes(own_moto: ServerHandle, outage_store: S3ObjectStore) -> None:
    own_moto.stop()
    with pytest.raises(UnavailableError):
        outage_store.put_bytes("during", b"2")


def test_restarted_server_accepts_writes_again(
    own_moto: ServerHandle, outage_store: S3ObjectStore
) -> None:
    # given: an outage the store noticed, then a restart that lost the bucket
    own_moto.stop()
    with pytest.raises(UnavailableError):
        outage_store.exists("before")
    own_moto.restart()
    # when
    outage_store.put_bytes("after", b"3")
    # then
    assert outage_store.get_bytes("after") == b"3"


def test_objects_written_before_a_moto_restart_are_gone(
    own_moto: ServerHandle, outage_store: S3ObjectStore
) -> None:
    own_moto.restart()
    with pytest.raises(ObjectNotFoundError):
        outage_store.get_bytes("before")


def test_hung_server_times_out_within_the_bound() -> None:
    # given: a socket that accepts connections and never answers
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        store = S3ObjectStore(s3_settings_for(url, timeout_s=1.0, retries=1))
        started = time.monotonic()
        # when
        with pytest.raises(UnavailableError):
            store.get_bytes("k")
        # then
        assert time.monotonic() - started < FAIL_FAST_S
