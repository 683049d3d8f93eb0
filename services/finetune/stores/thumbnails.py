"""Gallery thumbnails cached in the object store: ``thumbs/<side>/<source key>.jpg``.

A thumbnail is made once per image and side, on the first request that needs it, and read
back from the store afterwards. The key names its source, so one listing of ``thumbs/`` shows
what was made; a source key too long to nest becomes its SHA-256. The cache trusts the
source not to change under the same key (dataset versions never do); deleting ``thumbs/``
(and restarting the API, which keeps the most recent in memory) rebuilds them on demand.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable

from shared.errors import NotFoundError
from shared.storage.base import MAX_KEY_LENGTH, ObjectNotFoundError, ObjectStore

THUMBS_PREFIX = "thumbs/"
_SUFFIX = ".jpg"


def thumbnail_key(source_key: str, side: int) -> str:
    """Where the ``side``-pixel thumbnail of ``source_key`` is cached."""
    key = f"{THUMBS_PREFIX}{side}/{source_key}{_SUFFIX}"
    if len(key) <= MAX_KEY_LENGTH:
        return key
    digest = hashlib.sha256(source_key.encode()).hexdigest()
    return f"{THUMBS_PREFIX}{side}/sha256/{digest}{_SUFFIX}"


class ThumbnailStore:
    """Get-or-make of thumbnails in an ``ObjectStore``, the most recent also kept in memory
    (up to ``memory_bytes``), so a page seen again needs no store read at all."""

    def __init__(self, store: ObjectStore, memory_bytes: int = 0) -> None:
        self.store = store
        self.memory_bytes = memory_bytes
        self._memory: OrderedDict[str, bytes] = OrderedDict()
        self._held = 0
        self._lock = threading.Lock()

    def get_or_make(self, source_key: str, side: int, make: Callable[[bytes], bytes]) -> bytes:
        """The cached thumbnail, or ``make(source bytes)`` stored first.

        Raises:
            NotFoundError: no object at ``source_key`` (code image_not_found).
        """
        key = thumbnail_key(source_key, side)
        found = self._recall(key)
        if found is not None:
            return found
        try:
            found = self.store.get_bytes(key)
        except ObjectNotFoundError:
            found = self._make(key, source_key, make)
        self._remember(key, found)
        return found

    def _make(self, key: str, source_key: str, make: Callable[[bytes], bytes]) -> bytes:
        try:
            source = self.store.get_bytes(source_key)
        except ObjectNotFoundError as exc:
            raise NotFoundError(
                f"no image is stored at {source_key}", code="image_not_found"
            ) from exc
        thumbnail = make(source)
        self.store.put_bytes(key, thumbnail, content_type="image/jpeg")
        return thumbnail

    def _recall(self, key: str) -> bytes | None:
        with self._lock:
            found = self._memory.get(key)
            if found is not None:
                self._memory.move_to_end(key)
            return found

    def _remember(self, key: str, body: bytes) -> None:
        if len(body) > self.memory_bytes:
            return
        with self._lock:
            if key not in self._memory:
                self._memory[key] = body
                self._held += len(body)
            while self._held > self.memory_bytes:
                _, dropped = self._memory.popitem(last=False)
                self._held -= len(dropped)
