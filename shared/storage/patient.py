"""``PatientStore``: an ``ObjectStore`` that rides out short storage outages inside jobs.

A job runs for hours and touches the store thousands of times; an S3 server that stalls for
a few seconds (a restart, a failover, a full disk being cleared) must not end it. Every call
that fails with a transient outage (``UnavailableError`` with code ``storage_unavailable``)
is tried again after a doubling pause (0.5 s up to 5 s) until ``patience_s`` has passed since
the first failure; then the outage is raised, and the job runner leaves the job RUNNING for
the reaper to hand to a later delivery, which resumes from its checkpoint
(``shared.jobs.runner``). Refusals (missing keys, bad input, denied access) are raised at
once. A stream that cannot be rewound is not retried (its bytes are gone).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import BinaryIO, TypeVar

from shared.errors import UnavailableError
from shared.storage.base import ObjectStore

log = logging.getLogger(__name__)
T = TypeVar("T")
TRANSIENT_CODES = frozenset({"storage_unavailable"})
FIRST_PAUSE_S, MAX_PAUSE_S = 0.5, 5.0


def is_transient(exc: UnavailableError) -> bool:
    """Whether waiting can fix it (an outage), as opposed to a setting that is wrong."""
    return exc.code in TRANSIENT_CODES


class PatientStore:
    """Wraps ``inner``; see the module docstring. ``sleep`` and ``clock`` are for tests."""

    def __init__(
        self,
        inner: ObjectStore,
        patience_s: float,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.inner, self.patience_s = inner, patience_s
        self._sleep, self._clock = sleep, clock

    def __repr__(self) -> str:
        return f"PatientStore({self.inner!r}, patience_s={self.patience_s})"

    def _patiently(
        self, what: str, call: Callable[[], T], rewind: Callable[[], bool] = lambda: True
    ) -> T:
        started, pause = self._clock(), FIRST_PAUSE_S
        while True:
            try:
                return call()
            except UnavailableError as exc:
                waited = self._clock() - started
                if not is_transient(exc) or waited + pause > self.patience_s or not rewind():
                    raise
                log.warning(
                    "%s: storage unavailable, retrying in %.1f s (%s)", what, pause, exc.code
                )
                self._sleep(pause)
                pause = min(MAX_PAUSE_S, pause * 2)

    def put_bytes(
        self, key: str, data: bytes, content_type: str = "application/octet-stream"
    ) -> None:
        self._patiently(f"put {key}", lambda: self.inner.put_bytes(key, data, content_type))

    def get_bytes(self, key: str) -> bytes:
        return self._patiently(f"get {key}", lambda: self.inner.get_bytes(key))

    def put_stream(
        self,
        key: str,
        stream: BinaryIO,
        length: int = -1,
        content_type: str = "application/octet-stream",
    ) -> int:
        start = stream.tell() if stream.seekable() else None

        def rewind() -> bool:
            if start is None:
                return False
            stream.seek(start)
            return True

        return self._patiently(
            f"put {key}", lambda: self.inner.put_stream(key, stream, length, content_type), rewind
        )

    def iter_chunks(self, key: str, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        return self.inner.iter_chunks(key, chunk_size)  # a half-read stream cannot be resumed

    def put_file(self, key: str, path: Path) -> None:
        self._patiently(f"put {key}", lambda: self.inner.put_file(key, path))

    def get_file(self, key: str, path: Path) -> None:
        self._patiently(f"get {key}", lambda: self.inner.get_file(key, path))

    def get_file_for_reading(self, key: str, path: Path) -> None:
        self._patiently(f"get {key}", lambda: self.inner.get_file_for_reading(key, path))

    def exists(self, key: str) -> bool:
        return self._patiently(f"exists {key}", lambda: self.inner.exists(key))

    def size(self, key: str) -> int:
        return self._patiently(f"size {key}", lambda: self.inner.size(key))

    def list(self, prefix: str = "") -> list[str]:
        return self._patiently(f"list {prefix}", lambda: self.inner.list(prefix))

    def delete(self, key: str) -> None:
        self._patiently(f"delete {key}", lambda: self.inner.delete(key))

    def delete_prefix(self, prefix: str) -> int:
        return self._patiently(f"delete {prefix}", lambda: self.inner.delete_prefix(prefix))

    def presigned_url(self, key: str, expires_s: int = 3600) -> str | None:
        return self.inner.presigned_url(key, expires_s)

    def sync(self, keys: Iterable[str] | None = None) -> None:
        listed = None if keys is None else list(keys)  # an iterator could be tried only once
        self._patiently("sync", lambda: self.inner.sync(listed))

    def ping(self) -> None:
        self.inner.ping()
