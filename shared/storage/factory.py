"""``create_store``: the configured ``ObjectStore`` (S3 when an endpoint is set, else a folder)."""

from __future__ import annotations

from shared.config import CommonSettings
from shared.storage.base import ObjectStore
from shared.storage.filesystem import FileObjectStore


def create_store(settings: CommonSettings, *, durable: bool = True) -> ObjectStore:
    """Build the object store ``settings.storage_backend()`` names; no network call.

    The ``minio`` client is imported only for the S3 backend, so the file backend works
    without the ``storage`` extra.

    Args:
        settings: the suite's settings.
        durable: for the file backend, fsync each write before it returns (as an S3 PUT);
            False (job workers) leaves it to ``sync()`` at the job's durability points
            (``shared.jobs.store``). S3 is durable on every PUT either way.
    """
    if settings.storage_backend() == "s3":
        from shared.storage.s3 import S3ObjectStore

        return S3ObjectStore(settings.s3)
    return FileObjectStore(settings.storage_root(), durable=durable)
