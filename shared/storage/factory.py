"""``create_store``: the configured ``ObjectStore`` (S3 when an endpoint is set, else a folder)."""

from __future__ import annotations

from shared.config import CommonSettings
from shared.storage.base import ObjectStore
from shared.storage.filesystem import FileObjectStore


def create_store(settings: CommonSettings) -> ObjectStore:
    """Build the object store ``settings.storage_backend()`` names; no network call.

    The ``minio`` client is imported only for the S3 backend, so the file backend works
    without the ``storage`` extra.
    """
    if settings.storage_backend() == "s3":
        from shared.storage.s3 import S3ObjectStore

        return S3ObjectStore(settings.s3)
    return FileObjectStore(settings.storage_root())
