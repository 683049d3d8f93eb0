"""S3ObjectStore on a real S3 HTTP server (moto), through the minio client as with MinIO."""

from __future__ import annotations

import io
import threading
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from shared.config import S3Settings
from shared.errors import UnavailableError
from shared.storage.base import ObjectNotFoundError, ObjectStore
from shared.storage.s3 import S3ObjectStore
from tests.integration.storage.conftest import s3_settings_for
from tests.servers import ServerHandle
from tests.storage_contract import (
    MIB,
    ArtifactStoreContract,
    ObjectStoreContract,
    OneWayStream,
    payload,
)

pytestmark = pytest.mark.timeout(120)


class TestS3ObjectStoreContract(ObjectStoreContract):
    presigns = True


class TestS3ArtifactStoreContract(ArtifactStoreContract):
    pass


def _etag(store: S3ObjectStore, key: str) -> str:
    return str(store.client.stat_object(store.bucket, key).etag)


def test_s3_store_satisfies_the_protocol(store: S3ObjectStore) -> None:
    assert isinstance(store, ObjectStore)


def test_unknown_length_stream_is_uploaded_in_parts(store: S3ObjectStore) -> None:
    # when
    store.put_stream("mp/stream.bin", OneWayStream(payload(11 * MIB)))  # type: ignore[arg-type]
    # then: a multipart ETag ends with -<part count>; 11 MiB / 5 MiB parts = 3
    assert _etag(store, "mp/stream.bin").endswith("-3")


def test_large_file_is_uploaded_in_parts(store: S3ObjectStore, tmp_path: Path) -> None:
    # given
    source = tmp_path / "big.bin"
    source.write_bytes(payload(6 * MIB))
    # when
    store.put_file("mp/file.bin", source)
    # then
    assert _etag(store, "mp/file.bin").endswith("-2")


def test_presigned_url_is_path_style_on_the_endpoint(
    store: S3ObjectStore, moto_s3: ServerHandle
) -> None:
    url = store.presigned_url("dir/obj")
    assert url is not None
    assert url.startswith(f"{moto_s3.url}/{store.bucket}/dir/obj?")


@pytest.mark.parametrize(("asked", "granted"), [(0, "1"), (10**9, "604800"), (90, "90")])
def test_presigned_expiry_is_clamped(store: S3ObjectStore, asked: int, granted: str) -> None:
    url = store.presigned_url("k", expires_s=asked)
    assert url is not None
    assert parse_qs(urlsplit(url).query)["X-Amz-Expires"] == [granted]


def test_bucket_is_created_on_first_write(s3_settings: S3Settings) -> None:
    # given
    store = S3ObjectStore(s3_settings)
    assert not store.client.bucket_exists(s3_settings.bucket)
    # when
    store.put_bytes("first", b"1")
    # then
    assert store.client.bucket_exists(s3_settings.bucket)


def test_concurrent_bucket_creation_is_harmless(s3_settings: S3Settings) -> None:
    # given: several processes' stores starting at once on a missing bucket
    stores = [S3ObjectStore(s3_settings) for _ in range(4)]
    errors: list[BaseException] = []

    def write(index: int) -> None:
        try:
            stores[index].put_bytes(f"k{index}", b"1")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(i,)) for i in range(len(stores))]
    # when
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # then
    assert errors == []
    assert stores[0].list() == ["k0", "k1", "k2", "k3"]


def test_missing_bucket_reads_as_missing_objects(moto_s3: ServerHandle) -> None:
    store = S3ObjectStore(s3_settings_for(moto_s3.url, create_bucket=False))
    with pytest.raises(ObjectNotFoundError):
        store.get_bytes("k")
    assert store.list() == []
    assert not store.exists("k")


def test_missing_bucket_without_create_fails_ping(moto_s3: ServerHandle) -> None:
    store = S3ObjectStore(s3_settings_for(moto_s3.url, create_bucket=False))
    with pytest.raises(UnavailableError) as caught:
        store.ping()
    assert caught.value.code == "bucket_missing"


def test_missing_bucket_without_create_fails_writes(moto_s3: ServerHandle) -> None:
    store = S3ObjectStore(s3_settings_for(moto_s3.url, create_bucket=False))
    with pytest.raises(UnavailableError) as caught:
        store.put_bytes("k", b"1")
    assert caught.value.code == "bucket_missing"


def test_bucket_deleted_behind_the_store_is_recreated_on_write(store: S3ObjectStore) -> None:
    # given
    store.put_bytes("k", b"1")
    store.delete("k")
    store.client.remove_bucket(store.bucket)
    # when
    store.put_stream("k2", io.BytesIO(b"22"))
    # then
    assert store.get_bytes("k2") == b"22"


def test_unreplayable_stream_into_a_vanished_bucket_asks_for_a_retry(
    store: S3ObjectStore,
) -> None:
    # given
    store.put_bytes("k", b"1")
    store.delete("k")
    store.client.remove_bucket(store.bucket)
    # when
    with pytest.raises(UnavailableError) as caught:
        store.put_stream("k2", OneWayStream(b"22"))  # type: ignore[arg-type]
    # then: the bucket is back, the caller retries
    assert caught.value.retry_after_s >= 1
    assert store.client.bucket_exists(store.bucket)
