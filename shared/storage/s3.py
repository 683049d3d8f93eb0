"""``S3ObjectStore``: an ``ObjectStore`` on MinIO, AWS S3 or any S3 endpoint (``minio`` client).

Nothing above this module sees the client library or its exceptions.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable, Iterable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import BinaryIO, NoReturn, TypeVar, cast
from urllib.parse import urlsplit

import urllib3
from minio import Minio
from minio.deleteobjects import DeleteObject
from minio.error import InvalidResponseError, MinioException, S3Error, ServerError
from urllib3.exceptions import HTTPError as Urllib3Error

from shared.config import S3Settings
from shared.errors import InvalidInputError, SuiteError, UnavailableError
from shared.storage.base import ObjectNotFoundError, validate_key
from shared.storage.filesystem import CHUNK_SIZE, write_atomically

_T = TypeVar("_T")
MIB = 1 << 20
MAX_PRESIGN_S = 7 * 24 * 3600  # SigV4 limit (field-notes §C4)
_NOT_FOUND = frozenset({"NoSuchKey", "NoSuchBucket", "NoSuchObject", "ResourceNotFound"})
# NoSuchUpload: a multipart upload the server lost (restarted, or expired it) while a part
# was retried; sending the object again is the fix, so it is an outage, not a bug.
_TRANSIENT = frozenset(
    {"SlowDown", "ServiceUnavailable", "InternalError", "RequestTimeout", "NoSuchUpload"}
)
_DENIED = frozenset({"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"})
_BUCKET_EXISTS = frozenset({"BucketAlreadyOwnedByYou", "BucketAlreadyExists"})
_NETWORK_ERRORS = (Urllib3Error, ConnectionError, TimeoutError)


def _endpoint(settings: S3Settings) -> tuple[str, bool]:
    """``(host:port, secure)`` from ``settings.endpoint_url``."""
    if not settings.endpoint_url:
        raise InvalidInputError(
            "S3_ENDPOINT_URL is unset: the S3 store needs an endpoint", code="storage_misconfigured"
        )
    parts = urlsplit(settings.endpoint_url)
    if parts.path not in ("", "/") or parts.query or not parts.netloc:
        raise InvalidInputError(
            f"S3_ENDPOINT_URL={settings.endpoint_url!r} must be scheme://host[:port] without a "
            "path (the bucket goes in S3_BUCKET)",
            code="storage_misconfigured",
        )
    return parts.netloc, parts.scheme == "https"


def build_http_client(settings: S3Settings) -> urllib3.PoolManager:
    """A pool with short timeouts and few retries, so a dead server fails in seconds."""
    timeout = urllib3.Timeout(connect=settings.timeout_s, read=settings.timeout_s)
    n = settings.retries
    # Every retry is bounded by the timeout; backoff stays well below it.
    retries = urllib3.Retry(
        n,
        connect=n,
        read=n,
        status=n,
        backoff_factor=0.2,
        backoff_max=2.0,
        status_forcelist=(500, 502, 503, 504),
    )
    return urllib3.PoolManager(timeout=timeout, retries=retries, cert_reqs="CERT_REQUIRED")


class _CountingReader:
    """Counts the bytes the client pulls; a stream shorter than ``length`` is the caller's fault."""

    def __init__(self, stream: BinaryIO, length: int) -> None:
        self.stream = stream
        self.length = length
        self.count = 0

    def read(self, size: int = -1) -> bytes:
        data = self.stream.read(size)
        self.count += len(data)
        if not data and 0 <= self.count < self.length:
            raise InvalidInputError(
                f"stream ended {self.length - self.count} bytes short of the announced length "
                f"{self.length}",
                code="short_stream",
            )
        return data


class S3ObjectStore:
    """An ``ObjectStore`` on one bucket of an S3 endpoint (path-style addressing).

    Missing keys raise ``ObjectNotFoundError``; unreachable servers, timeouts and 5xx answers
    ``UnavailableError`` with ``retry_after_s``. With ``create_bucket`` the bucket is created
    lazily (first write or ``ping``) and again after it vanished (e.g. an in-memory server
    restarted): a write that meets ``NoSuchBucket`` recreates it and retries once.
    """

    def __init__(self, settings: S3Settings) -> None:
        """Build the client; no network call happens here."""
        host, secure = _endpoint(settings)
        self.settings = settings
        self.bucket = settings.bucket
        self.endpoint_url = str(settings.endpoint_url)
        self.part_size = settings.part_size_mb * MIB
        self.retry_after_s = max(1, round(settings.timeout_s))
        self.client = Minio(
            host,
            access_key=settings.access_key_id or None,
            secret_key=settings.secret_access_key.get_secret_value() or None,
            secure=secure,
            region=settings.region,
            http_client=build_http_client(settings),
        )
        self.client.disable_virtual_style_endpoint()  # type: ignore[no-untyped-call]
        self._bucket_ready = False

    def __repr__(self) -> str:
        return f"S3ObjectStore({self.endpoint_url!r}, bucket={self.bucket!r})"

    # -- error translation ---------------------------------------------------------------
    def _fail(self, exc: Exception, what: str) -> NoReturn:
        where = f"{what} at S3 endpoint {self.endpoint_url} (bucket {self.bucket!r})"
        if isinstance(exc, S3Error):
            if exc.code == "NoSuchBucket":
                self._bucket_ready = False
            if exc.code in _NOT_FOUND:
                raise ObjectNotFoundError(f"{what}: no such object ({exc.code})") from exc
            if exc.code in _DENIED:
                raise UnavailableError(
                    f"{where}: {exc.code}; check S3_ACCESS_KEY_ID and S3_SECRET_ACCESS_KEY",
                    code="storage_access_denied",
                    retry_after_s=60,
                ) from exc
            if exc.code not in _TRANSIENT:
                raise SuiteError(
                    f"{where}: {exc.code}: {exc.message}", code="storage_error"
                ) from exc
        elif not isinstance(exc, (*_NETWORK_ERRORS, ServerError, InvalidResponseError)):
            raise exc
        # The server may have restarted without its buckets: check again on the next write.
        self._bucket_ready = False
        raise UnavailableError(
            f"{where} failed: {type(exc).__name__}: {exc}",
            code="storage_unavailable",
            retry_after_s=self.retry_after_s,
        ) from exc

    def _bucket_missing(self) -> UnavailableError:
        return UnavailableError(
            f"bucket {self.bucket!r} does not exist at {self.endpoint_url}: create it or set "
            "S3_CREATE_BUCKET=true",
            code="bucket_missing",
            retry_after_s=60,
        )

    def _call(self, what: str, action: Callable[[], _T]) -> _T:
        try:
            return action()
        except (MinioException, *_NETWORK_ERRORS) as exc:
            self._fail(exc, what)

    def _ensure_bucket(self) -> None:
        if self._bucket_ready or not self.settings.create_bucket:
            return
        try:
            if not self.client.bucket_exists(self.bucket):
                self.client.make_bucket(self.bucket)
        except S3Error as exc:
            if exc.code not in _BUCKET_EXISTS:  # else another process won the race: fine
                self._fail(exc, "create bucket")
        except (MinioException, *_NETWORK_ERRORS) as exc:
            self._fail(exc, "create bucket")
        self._bucket_ready = True

    def _write(self, what: str, upload: Callable[[], _T], replay: Callable[[], bool]) -> _T:
        """Run ``upload``; after NoSuchBucket recreate the bucket and run it once more."""
        self._ensure_bucket()
        try:
            return self._call(what, upload)
        except ObjectNotFoundError as exc:
            if not self.settings.create_bucket:
                raise self._bucket_missing() from exc
            self._ensure_bucket()
            if not replay():
                raise UnavailableError(
                    f"{what}: bucket {self.bucket!r} was missing and is recreated; send again",
                    code="storage_unavailable",
                    retry_after_s=1,
                ) from exc
            return self._call(what, upload)

    # -- writes --------------------------------------------------------------------------
    def put_bytes(
        self, key: str, data: bytes, content_type: str = "application/octet-stream"
    ) -> None:
        """Write ``data`` at ``key`` (a single PUT below the part size)."""
        self.put_stream(key, io.BytesIO(data), len(data), content_type)

    def put_stream(
        self,
        key: str,
        stream: BinaryIO,
        length: int = -1,
        content_type: str = "application/octet-stream",
    ) -> int:
        """Upload ``stream``; unknown length (-1) streams multipart in ``part_size_mb`` parts.

        Returns:
            The number of bytes uploaded.
        """
        validate_key(key)
        start = stream.tell() if stream.seekable() else None
        reader = _CountingReader(stream, length)

        def upload() -> None:
            reader.count = 0
            self.client.put_object(
                self.bucket,
                key,
                cast(BinaryIO, reader),
                length,
                content_type=content_type,
                part_size=self.part_size,
                num_parallel_uploads=1,
            )

        def replay() -> bool:
            if start is None:
                return False
            stream.seek(start)
            return True

        self._write(f"put_stream {key}", upload, replay)
        return reader.count

    def put_file(self, key: str, path: Path) -> None:
        """Upload a local file; multipart above ``part_size_mb``."""
        validate_key(key)
        if not Path(path).is_file():
            raise FileNotFoundError(f"no such file: {path}")
        self._write(
            f"put_file {key}",
            lambda: self.client.fput_object(self.bucket, key, str(path), part_size=self.part_size),
            lambda: True,
        )

    # -- reads ---------------------------------------------------------------------------
    def get_bytes(self, key: str) -> bytes:
        """Read the whole object. Raises ``ObjectNotFoundError``."""
        return b"".join(self.iter_chunks(key))

    def iter_chunks(self, key: str, chunk_size: int = CHUNK_SIZE) -> Iterator[bytes]:
        """Stream the object; the GET is sent now, so a missing key raises at once.

        Iterate to the end (or close the iterator) to hand the connection back to the pool.
        """
        validate_key(key)
        response = self._call(f"get {key}", lambda: self.client.get_object(self.bucket, key))
        return self._drain(key, response, chunk_size)

    def _drain(
        self, key: str, response: urllib3.BaseHTTPResponse, chunk_size: int
    ) -> Iterator[bytes]:
        try:
            yield from response.stream(chunk_size)
        except (MinioException, *_NETWORK_ERRORS) as exc:
            self._fail(exc, f"read {key}")
        finally:
            response.close()
            response.release_conn()

    def get_file(self, key: str, path: Path) -> None:
        """Download to ``path`` atomically (temp file in the same folder, then rename)."""
        write_atomically(Path(path), self.iter_chunks(key))

    def get_file_for_reading(self, key: str, path: Path) -> None:
        """``get_file``: a download is the only local copy there is."""
        self.get_file(key, path)

    def exists(self, key: str) -> bool:
        """True when ``key`` holds an object."""
        try:
            self.size(key)
        except ObjectNotFoundError:
            return False
        return True

    def size(self, key: str) -> int:
        """Object size in bytes. Raises ``ObjectNotFoundError``."""
        validate_key(key)
        stat = self._call(f"stat {key}", lambda: self.client.stat_object(self.bucket, key))
        return int(stat.size or 0)

    def list(self, prefix: str = "") -> list[str]:
        """All keys starting with ``prefix`` (recursive), sorted; [] when the bucket is gone."""
        validate_key(prefix, prefix=True)

        def names() -> list[str]:
            found = self.client.list_objects(self.bucket, prefix=prefix or None, recursive=True)
            return sorted(str(obj.object_name) for obj in found)

        try:
            return self._call(f"list {prefix!r}", names)
        except ObjectNotFoundError:
            return []

    # -- deletes -------------------------------------------------------------------------
    def delete(self, key: str) -> None:
        """Remove one object; a missing key (or bucket) is fine."""
        validate_key(key)
        with contextlib.suppress(ObjectNotFoundError):
            self._call(f"delete {key}", lambda: self.client.remove_object(self.bucket, key))

    def delete_prefix(self, prefix: str) -> int:
        """Remove every object under ``prefix`` (must end with '/') in batch requests."""
        if not prefix.endswith("/"):
            raise InvalidInputError(f"prefix {prefix!r} must end with '/'", code="invalid_key")
        keys = self.list(prefix)
        if not keys:
            return 0
        errors = self._call(
            f"delete_prefix {prefix}",
            lambda: list(self.client.remove_objects(self.bucket, [DeleteObject(k) for k in keys])),
        )
        if errors:
            first = errors[0]
            raise UnavailableError(
                f"could not delete {len(errors)} of {len(keys)} objects under {prefix!r} at "
                f"{self.endpoint_url}: {first.name}: {first.code}",
                code="storage_unavailable",
                retry_after_s=self.retry_after_s,
            )
        return len(keys)

    # -- misc ----------------------------------------------------------------------------
    def presigned_url(self, key: str, expires_s: int = 3600) -> str | None:
        """A GET URL valid for ``expires_s`` seconds, clamped to 1 s .. 7 days."""
        validate_key(key)
        seconds = min(max(int(expires_s), 1), MAX_PRESIGN_S)
        return self._call(
            f"presign {key}",
            lambda: self.client.presigned_get_object(
                self.bucket, key, expires=timedelta(seconds=seconds)
            ),
        )

    def sync(self, keys: Iterable[str] | None = None) -> None:
        """Nothing to do: a PUT is durable when it returns (keys are still validated)."""
        for key in keys or ():
            validate_key(key)

    def ping(self) -> None:
        """Raise ``UnavailableError`` unless the bucket is reachable (created if allowed)."""
        if self._call("bucket_exists", lambda: self.client.bucket_exists(self.bucket)):
            return
        if not self.settings.create_bucket:
            raise self._bucket_missing()
        self._bucket_ready = False
        self._ensure_bucket()
