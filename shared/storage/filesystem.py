"""``FileObjectStore``: a local folder as an object store (embedded default, unit-test store).

**Atomicity.** Every write goes to a temp file in the target's folder, then ``os.replace``: a
reader, or a process killed mid-write, sees the old object or the new one, never a part.
A killed process loses nothing it wrote (the page cache is the kernel's, not the process's).

**Durability** (an OS crash or a power loss) is a policy of the store instance:

- ``durable=True`` (``create_store``'s default: API processes): each write fsyncs the file
  and its folder (and the folders it created) before it returns, as an S3 PUT is durable
  when it returns.
- ``durable=False`` (the constructor's default; job workers, tests, benchmarks): writes are
  atomic but not synced; the caller makes them durable at the points it declares with
  ``sync()``: ``sync()`` flushes everything on the store's filesystem (one ``syncfs``: one
  journal commit, where an fsync a file cost one each), ``sync(keys)`` fsyncs those objects
  and their folders. ``JobStore`` syncs the store before a job record turns terminal and
  before a checkpoint is written, and fsyncs each record it writes, so what a record says
  is done or checkpointed is on disk (``shared.jobs.store``); ``ArtifactStore`` syncs
  before a manifest and before ``LATEST``.

**Keys -> paths.** A key is checked lexically (``validate_key``: no '..', '.', empty or
absolute segment, only ``[A-Za-z0-9._=+-]``), so it names a path under the root by itself;
only a symbolic link on the way can lead elsewhere. Each component is ``lstat``-ed on every
call (no cache: a folder swapped for a link at any time is seen on the next call); a path
with a link is resolved in full and must stay under the root.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import stat
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


def fsync_path(path: Path | str) -> None:
    """fsync a file or a folder (a folder's fsync makes its entries, e.g. a rename, durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _load_syncfs() -> Callable[[int], int] | None:
    try:
        func: Callable[[int], int] = ctypes.CDLL(None, use_errno=True).syncfs
    except (AttributeError, OSError):  # not Linux (glibc/musl): os.sync() instead
        return None
    return func


_SYNCFS = _load_syncfs()


def sync_filesystem(folder: Path) -> None:
    """Flush every dirty file and folder of the filesystem holding ``folder`` to disk.

    One ``syncfs(2)`` where the C library has it, else ``os.sync()`` (every filesystem).
    Far cheaper than one fsync per file for many small files: one journal commit, not one
    a file.
    """
    if _SYNCFS is None:
        os.sync()
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        if _SYNCFS(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"syncfs of {folder} failed: {os.strerror(err)}")
    finally:
        os.close(fd)


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
    which no key may hold, so ``list`` never shows them. A key can not be both an object and
    a prefix here (a file can not be a folder), unlike S3: such a write raises
    ``ConflictError``. Durability (``durable``, ``sync``): see the module docstring.
    """

    def __init__(self, root: Path, *, durable: bool = False) -> None:
        """Use ``root`` (created on first write) as the store's folder.

        Args:
            root: the folder; a link in its own path is resolved once, here.
            durable: fsync each write (file and folder) before it returns; False leaves
                durability to ``sync()`` at the caller's durability points.
        """
        self.root = Path(root).expanduser().resolve()
        self.durable = durable
        self._root = str(self.root)

    def __repr__(self) -> str:
        return f"FileObjectStore({self._root!r}, durable={self.durable})"

    # -- key -> path ---------------------------------------------------------------------
    def _path(self, key: str) -> Path:
        validate_key(key)  # lexical: the key alone can not leave the root
        path = f"{self._root}/{key}"
        # A link on the way may; resolve in full only where there is one.
        if self._has_link(key) and not Path(path).resolve().is_relative_to(self.root):
            raise InvalidInputError(
                f"object key {key!r} resolves outside the store root", code="invalid_key"
            )
        return Path(path)

    def _has_link(self, key: str) -> bool:
        """Whether a component of ``key`` under the root is a symbolic link, now.

        Every existing component is ``lstat``-ed (a missing one ends the walk: nothing
        below it exists). Nothing is cached: a link can replace any folder at any time.
        """
        path = self._root
        for segment in key.split("/"):
            path = f"{path}/{segment}"
            try:
                mode = os.lstat(path).st_mode
            except (FileNotFoundError, NotADirectoryError):
                return False
            if stat.S_ISLNK(mode):
                return True
        return False

    def _write(self, key: str, chunks: Iterable[bytes]) -> int:
        path = self._path(key)
        fresh = self.durable and not path.parent.is_dir()  # its folders' entries need a sync
        try:
            written = write_atomically(path, chunks, fsync=self.durable)
        except (IsADirectoryError, NotADirectoryError, FileExistsError) as exc:
            raise ConflictError(
                f"object key {key!r} collides with a prefix of another key on the file store",
                code="key_conflict",
            ) from exc
        if fresh:
            self._sync_folders(path)
        elif self.durable:
            fsync_path(path.parent)
        return written

    # -- durability ----------------------------------------------------------------------
    def sync(self, keys: Iterable[str] | None = None) -> None:
        """Make this instance's writes durable: all of them (``keys`` None), or those objects.

        ``sync()`` flushes the filesystem holding the root (one ``syncfs``): every object
        written before the call is on disk after it, with the folders it created.
        ``sync(keys)`` fsyncs each object and its folder (a folder that write created
        becomes durable at the next ``sync()``); a key that holds no object is skipped.
        A ``durable`` store has nothing to do: each write was synced when it returned.
        """
        if self.durable or not self.root.is_dir():
            return
        if keys is None:
            sync_filesystem(self.root)
            return
        folders: dict[Path, None] = {}
        for key in keys:
            path = self._path(key)
            with contextlib.suppress(FileNotFoundError, NotADirectoryError):
                fsync_path(path)
                folders[path.parent] = None
        for folder in folders:
            with contextlib.suppress(FileNotFoundError):  # pruned by a concurrent delete
                fsync_path(folder)

    def _sync_folders(self, path: Path) -> None:
        """fsync ``path``'s folders, from its own up to the root (a new folder's entry is in
        its parent)."""
        folder = path.parent
        while True:
            with contextlib.suppress(FileNotFoundError):  # pruned by a concurrent delete
                fsync_path(folder)
            if folder == self.root or not folder.is_relative_to(self.root):
                return
            folder = folder.parent

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

    def get_file_for_reading(self, key: str, path: Path) -> None:
        """A hard link to the object at ``path`` (no bytes copied), else ``get_file``.

        Safe because this store never writes an object in place: a later write renames a
        new file over the key, a delete unlinks the key's name, and the link keeps the
        bytes it was made with either way. The caller must not write into ``path`` (it
        would change the object). Another filesystem, a folder with no hard links or an
        existing ``path`` fall back to a copy. Raises ``ObjectNotFoundError``.
        """
        source, target = self._path(key), Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(source, target)
        except FileNotFoundError as exc:
            if not source.is_file():
                raise ObjectNotFoundError(f"object {key!r} not found") from exc
            self.get_file(key, target)
        except OSError:  # EXDEV, EPERM (a folder, or no links here), EEXIST, EMLINK
            self.get_file(key, target)

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
