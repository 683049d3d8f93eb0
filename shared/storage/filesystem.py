"""``FileObjectStore``: a local folder as an object store (embedded default, unit-test store).

Writes go to a temp file in the target's folder, then ``os.replace`` (atomic).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import BinaryIO, TypeVar

from shared.errors import ConflictError, InvalidInputError, UnavailableError
from shared.storage.base import ObjectNotFoundError, validate_key

_T = TypeVar("_T")
CHUNK_SIZE = 1 << 20
_TMP_PREFIX = ".~tmp-"
_MKDIR_ATTEMPTS = 3


def write_atomically(path: Path, chunks: Iterable[bytes], *, fsync: bool = True) -> int:
    """Write ``chunks`` to ``path`` through a temp file in the same folder and ``os.replace``.

    Args:
        path: the destination; its parent folders are created.
        chunks: the content, consumed once.
        fsync: flush to disk before the rename, so a crash never leaves a torn file.

    Returns:
        The number of bytes written.
    """
    fd, tmp = _make_temp(path)
    written = 0
    try:
        with os.fdopen(fd, "wb") as out:
            for chunk in chunks:
                out.write(chunk)
                written += len(chunk)
            if fsync:
                out.flush()
                os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return written


def read_chunks(
    stream: BinaryIO, length: int = -1, chunk_size: int = CHUNK_SIZE
) -> Iterator[bytes]:
    """Yield ``stream`` in chunks: to its end (``length`` -1) or exactly ``length`` bytes.

    Raises:
        InvalidInputError: the stream ended before ``length`` bytes.
    """
    remaining = length
    while remaining != 0:
        want = chunk_size if remaining < 0 else min(chunk_size, remaining)
        chunk = stream.read(want)
        if not chunk:
            break
        remaining -= len(chunk) if remaining > 0 else 0
        yield chunk
    if remaining > 0:
        raise InvalidInputError(
            f"stream ended {remaining} bytes short of the announced length {length}",
            code="short_stream",
        )


def _make_temp(path: Path) -> tuple[int, str]:
    # A concurrent delete may prune the freshly created (still empty) folder; try again.
    attempt = 1
    while True:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            return tempfile.mkstemp(dir=path.parent, prefix=_TMP_PREFIX, suffix=".tmp")
        except FileNotFoundError:
            if attempt >= _MKDIR_ATTEMPTS:
                raise
            attempt += 1


class FileObjectStore:
    """An ``ObjectStore`` on a local folder; keys are paths relative to ``root``.

    Readers see the old or the new object, never a partial one. Temp names contain '~',
    which no key may hold, so ``list`` never shows them. A key can not be both an object and a prefix here (a file can not be a folder), unlike
    S3: such a write raises ``ConflictError``.
    """

    def __init__(self, root: Path) -> None:
        """Use ``root`` (created on first write) as the store's folder."""
        self.root = Path(root).expanduser().resolve()

    def __repr__(self) -> str:
        return f"FileObjectStore({str(self.root)!r})"

    # -- key -> path ---------------------------------------------------------------------
    def _path(self, key: str) -> Path:
        validate_key(key)
        path = self.root / key
        # Resolve symlinks too: a link inside the root must not lead out of it.
        if not path.resolve().is_relative_to(self.root):
            raise InvalidInputError(
                f"object key {key!r} resolves outside the store root", code="invalid_key"
            )
        return path

    def _write(self, key: str, chunks: Iterable[bytes]) -> int:
        path = self._path(key)
        try:
            return write_atomically(path, chunks)
        except (IsADirectoryError, NotADirectoryError, FileExistsError) as exc:
            raise ConflictError(
                f"object key {key!r} collides with a prefix of another key on the file store",
                code="key_conflict",
            ) from exc

    # -- writes --------------------------------------------------------------------------
    def put_bytes(
        self, key: str, data: bytes, content_type: str = "application/octet-stream"
    ) -> None:
        """Write ``data`` at ``key`` atomically (``content_type`` is not kept here)."""
        self._write(key, [data])

    def put_stream(
        self,
        key: str,
        stream: BinaryIO,
        length: int = -1,
        content_type: str = "application/octet-stream",
    ) -> int:
        """Copy ``stream`` in chunks to ``key``; returns the byte count."""
        return self._write(key, read_chunks(stream, length))

    def put_file(self, key: str, path: Path) -> None:
        """Copy the local file ``path`` to ``key`` in chunks."""
        with open(path, "rb") as src:
            self._write(key, read_chunks(src))

    # -- reads ---------------------------------------------------------------------------
    def get_bytes(self, key: str) -> bytes:
        """Read the whole object. Raises ``ObjectNotFoundError``."""
        return self._guard(key, self._path(key).read_bytes)

    def iter_chunks(self, key: str, chunk_size: int = CHUNK_SIZE) -> Iterator[bytes]:
        """Stream the object; raises ``ObjectNotFoundError`` at once when it is missing."""
        path = self._path(key)
        handle = self._guard(key, lambda: open(path, "rb"))  # noqa: SIM115 - closed below
        return self._drain(handle, chunk_size)

    @staticmethod
    def _drain(handle: BinaryIO, chunk_size: int) -> Iterator[bytes]:
        with handle:
            yield from read_chunks(handle, -1, chunk_size)

    def get_file(self, key: str, path: Path) -> None:
        """Copy the object to ``path`` atomically. Raises ``ObjectNotFoundError``."""
        write_atomically(Path(path), self.iter_chunks(key))

    def exists(self, key: str) -> bool:
        """True when ``key`` holds an object."""
        return self._path(key).is_file()

    def size(self, key: str) -> int:
        """Object size in bytes. Raises ``ObjectNotFoundError``."""
        path = self._path(key)
        if not path.is_file():
            raise ObjectNotFoundError(f"object {key!r} not found")
        return self._guard(key, path.stat).st_size

    def _guard(self, key: str, action: Callable[[], _T]) -> _T:
        try:
            return action()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as exc:
            raise ObjectNotFoundError(f"object {key!r} not found") from exc

    def list(self, prefix: str = "") -> list[str]:
        """All keys starting with ``prefix`` (a string prefix, as on S3), sorted."""
        validate_key(prefix, prefix=True)
        parent, _, partial = prefix.rpartition("/")
        folder = self.root / parent
        if not folder.resolve().is_relative_to(self.root) or not folder.is_dir():
            return []
        keys: list[str] = []
        base = f"{parent}/" if parent else ""
        # Only the entries the partial last segment matches are walked: listing
        # "jobs/20261206" reads one day's folders, not every job's.
        for entry in os.scandir(folder):
            if not entry.name.startswith(partial) or entry.name.startswith(_TMP_PREFIX):
                continue
            if entry.is_file():
                keys.append(base + entry.name)
                continue
            for dirpath, _dirs, files in os.walk(entry.path):
                rel = Path(dirpath).relative_to(self.root).as_posix()
                keys.extend(f"{rel}/{f}" for f in files if not f.startswith(_TMP_PREFIX))
        return sorted(k for k in keys if k.startswith(prefix))

    # -- deletes -------------------------------------------------------------------------
    def delete(self, key: str) -> None:
        """Remove one object and the folders it leaves empty; a missing key is fine."""
        path = self._path(key)
        with contextlib.suppress(FileNotFoundError, IsADirectoryError, NotADirectoryError):
            path.unlink()
        self._prune(path.parent)

    def _prune(self, folder: Path) -> None:
        # Empty folders would block a later object with the folder's name (S3 has none).
        while folder != self.root and folder.is_relative_to(self.root):
            try:
                folder.rmdir()
            except OSError:
                return
            folder = folder.parent

    def delete_prefix(self, prefix: str) -> int:
        """Remove every object under ``prefix`` (must end with '/'); returns the count."""
        if not prefix.endswith("/"):
            raise InvalidInputError(f"prefix {prefix!r} must end with '/'", code="invalid_key")
        keys = self.list(prefix)
        for key in keys:
            self.delete(key)
        return len(keys)

    # -- misc ----------------------------------------------------------------------------
    def presigned_url(self, key: str, expires_s: int = 3600) -> str | None:
        """None: a local folder has no URLs (the key is still validated)."""
        validate_key(key)
        return None

    def ping(self) -> None:
        """Raise ``UnavailableError`` unless the root exists and is writable."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=self.root, prefix=_TMP_PREFIX):
                pass
        except OSError as exc:
            raise UnavailableError(
                f"store folder {self.root} is not writable: {exc}", code="storage_unavailable"
            ) from exc
