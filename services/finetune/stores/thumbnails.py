"""Gallery thumbnails cached in the object store: ``thumbs/<side>/<source key>.jpg``.

A thumbnail is made once per image and side, on the first request that needs it, and read
back from the store afterwards. The key names its source, so one listing of ``thumbs/`` shows
what was made; a source key too long to nest becomes its SHA-256. The cache trusts the
source not to change under the same key (dataset versions never do); deleting ``thumbs/``
rebuilds every thumbnail on demand.
"""

from __future__ import annotations

import hashlib
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
    """Get-or-make of thumbnails in an ``ObjectStore``."""

    def __init__(self, store: ObjectStore) -> None:
        self.store = store

    def get_or_make(self, source_key: str, side: int, make: Callable[[bytes], bytes]) -> bytes:
        """The cached thumbnail, or ``make(source bytes)`` stored first.

        Raises:
            NotFoundError: no object at ``source_key`` (code image_not_found).
        """
        key = thumbnail_key(source_key, side)
        try:
            return self.store.get_bytes(key)
        except ObjectNotFoundError:
            pass
        try:
            source = self.store.get_bytes(source_key)
        except ObjectNotFoundError as exc:
            raise NotFoundError(
                f"no image is stored at {source_key}", code="image_not_found"
            ) from exc
        thumbnail = make(source)
        self.store.put_bytes(key, thumbnail, content_type="image/jpeg")
        return thumbnail
