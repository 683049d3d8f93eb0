"""The ``ObjectStore`` protocol every adapter implements, and key validation.

Keys are '/'-separated relative paths. Allowed characters: ASCII letters, digits and
``. _ - = +`` in each segment, segments joined by single '/'. No leading '/', no empty
segment, no '.' or '..' segment, at most 512 characters. The same rule holds for every
backend, so a key valid on the local folder is valid on S3 and the other way round.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO, Protocol, runtime_checkable

from shared.errors import InvalidInputError, NotFoundError

MAX_KEY_LENGTH = 512
_SEGMENT = re.compile(r"[A-Za-z0-9._=+\-]+")
# The whole rule in one pass for the common, valid key (a store checks a key on every call).
_VALID_KEY = re.compile(r"(?:[A-Za-z0-9._=+\-]+/)*[A-Za-z0-9._=+\-]+")
_DOT_SEGMENT = re.compile(r"(?:^|/)\.\.?(?:/|$)")


class ObjectNotFoundError(NotFoundError):
    """The key does not exist in the store."""

    code = "object_not_found"


def validate_key(key: str, *, prefix: bool = False) -> str:
    """Return ``key`` unchanged if it is a valid object key, else raise ``InvalidInputError``.

    Args:
        key: the candidate key.
        prefix: accept a listing prefix: empty, or ending with '/'.
    """
    if prefix and key == "":
        return key
    body = key[:-1] if prefix and key.endswith("/") else key
    if len(key) <= MAX_KEY_LENGTH and _VALID_KEY.fullmatch(body) and not _DOT_SEGMENT.search(body):
        return key
    if not body or len(key) > MAX_KEY_LENGTH:
        raise InvalidInputError(
            f"object key {key!r} is empty or longer than {MAX_KEY_LENGTH}", code="invalid_key"
        )
    for segment in body.split("/"):
        if segment in ("", ".", "..") or not _SEGMENT.fullmatch(segment):
            raise InvalidInputError(
                f"object key {key!r} has an invalid segment {segment!r}: use letters, digits "
                "and . _ - = + separated by single '/', no '..' and no leading '/'",
                code="invalid_key",
            )
    return key


def listing_prefix(value: str) -> str:
    """``value`` as a listing prefix ending with '/', so ``maps/a/job1`` never lists
    ``maps/a/job10/``. Raises ``InvalidInputError`` for an empty prefix (it would list the
    whole store) or an invalid key."""
    if not value.strip("/"):
        raise InvalidInputError("an empty prefix would list the whole store", code="invalid_prefix")
    return validate_key(value if value.endswith("/") else f"{value}/", prefix=True)


def prefix_field(value: str) -> str:
    """``listing_prefix`` for pydantic validators, which expect ``ValueError``."""
    try:
        return listing_prefix(value)
    except InvalidInputError as exc:
        raise ValueError(exc.message) from exc


@runtime_checkable
class ObjectStore(Protocol):
    """A flat key -> bytes store (S3 semantics: whole-object writes, last writer wins)."""

    def put_bytes(
        self, key: str, data: bytes, content_type: str = "application/octet-stream"
    ) -> None:
        """Write ``data`` at ``key`` atomically (readers see the old or the new object)."""

    def get_bytes(self, key: str) -> bytes:
        """Read the whole object. Raises ``ObjectNotFoundError``."""

    def put_stream(
        self,
        key: str,
        stream: BinaryIO,
        length: int = -1,
        content_type: str = "application/octet-stream",
    ) -> int:
        """Write from a binary stream of unknown (-1) or known length, in parts; returns bytes."""

    def iter_chunks(self, key: str, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        """Stream the object in chunks. Raises ``ObjectNotFoundError`` before the first chunk."""

    def put_file(self, key: str, path: Path) -> None:
        """Upload a local file (multipart for large files)."""

    def get_file(self, key: str, path: Path) -> None:
        """Download to a local file, written atomically (temp file then rename)."""

    def get_file_for_reading(self, key: str, path: Path) -> None:
        """Put the object at ``path`` for reading only: ``get_file``, or on a local folder on
        the same filesystem a hard link (no copy). The caller never writes to ``path`` in
        place; replacing or deleting it is fine. Raises ``ObjectNotFoundError``."""

    def exists(self, key: str) -> bool:
        """True when the key holds an object."""

    def size(self, key: str) -> int:
        """Object size in bytes. Raises ``ObjectNotFoundError``."""

    def list(self, prefix: str = "") -> list[str]:
        """All keys under ``prefix`` (recursive), sorted."""

    def delete(self, key: str) -> None:
        """Remove one object; removing a missing key is not an error."""

    def delete_prefix(self, prefix: str) -> int:
        """Remove every object under ``prefix`` (must end with '/'); returns the count."""

    def presigned_url(self, key: str, expires_s: int = 3600) -> str | None:
        """A time-limited download URL, or None where the backend has none (local folder)."""

    def sync(self, keys: Iterable[str] | None = None) -> None:
        """Make writes durable (an OS crash or power loss keeps them): every earlier write
        (``keys`` None) or those objects. A no-op where each write is durable when it
        returns (S3); the local folder syncs here unless it was built ``durable``."""

    def ping(self) -> None:
        """Raise ``UnavailableError`` when the backend cannot be reached."""
