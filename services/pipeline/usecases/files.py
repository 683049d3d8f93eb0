"""Files in and out of the store over HTTP: uploads under ``uploads/``, reads of any result.

Uploads land under ``uploads/`` only, so an HTTP client can never overwrite a job record, a
model or a category (the CLI's ``agssp store put`` writes where it is told: it runs with the
store's own credentials). Reads serve what the jobs wrote (overlays, loss curves, maps,
reports) to anyone holding a ``train`` key.
"""

from __future__ import annotations

import mimetypes
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO
from urllib.parse import quote

from services.pipeline.stores.pipelines import PREFIX, REPORT_FILE
from shared.errors import InvalidInputError
from shared.storage.base import ObjectStore, listing_prefix, validate_key

UPLOADS = "uploads/"
MAX_LISTED = 5000
# A pipeline's report, where the pipeline store writes it.
_REPORT_KEY = re.compile(f"{re.escape(PREFIX)}[^/]+/{re.escape(REPORT_FILE)}")
REPORT_HEADERS = {"X-Content-Type-Options": "nosniff", "Content-Security-Policy": "sandbox"}


@dataclass(frozen=True)
class StoredFile:
    key: str
    size: int


def upload_key(relative: str) -> str:
    """``uploads/<relative>``, validated (no '..', no empty segments, allowed characters)."""
    return validate_key(UPLOADS + relative.lstrip("/"))


def put_upload_stream(
    store: ObjectStore, relative: str, stream: BinaryIO, size: int, content_type: str
) -> StoredFile:
    """Store ``size`` bytes read from a seekable ``stream`` (multipart above the store's part
    size, so memory stays one part whatever the file's size); returns where it went."""
    if size <= 0:
        raise InvalidInputError("an upload needs a non-empty body", code="empty_body")
    key = upload_key(relative)
    store.put_stream(key, stream, size, content_type or "application/octet-stream")
    return StoredFile(key, size)


def list_files(store: ObjectStore, prefix: str, limit: int) -> tuple[list[StoredFile], bool]:
    """Keys under ``prefix`` with sizes (at most ``limit``), and whether more exist."""
    keys = store.list(listing_prefix(prefix))
    shown = keys[: min(limit, MAX_LISTED)]
    return [StoredFile(k, store.size(k)) for k in shown], len(keys) > len(shown)


def read_file(store: ObjectStore, key: str) -> tuple[Iterator[bytes], str]:
    """A stored object's chunks and its media type (from the key's suffix)."""
    chunks = store.iter_chunks(validate_key(key))
    media = mimetypes.guess_type(key)[0] or "application/octet-stream"
    return chunks, media


def object_headers(key: str) -> dict[str, str]:
    """Response headers that keep a stored object from running as a page on our origin.

    Anything may be uploaded (an ``.html``, an ``.svg`` with script), so every object is a
    download (``Content-Disposition: attachment``) that the browser may not re-type
    (``nosniff``); images still show in ``<img>``, which ignores the disposition. The one
    exception is a pipeline's own report, shown inline but sandboxed (no script, an opaque
    origin), as ``GET /v1/pipelines/{id}/report`` serves it.
    """
    if _REPORT_KEY.fullmatch(key):
        return dict(REPORT_HEADERS)
    name = key.rsplit("/", 1)[-1]
    ascii_name = name.encode("ascii", "replace").decode().replace('"', "_").replace("?", "_")
    disposition = f"attachment; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(name)}"
    return {"X-Content-Type-Options": "nosniff", "Content-Disposition": disposition}
