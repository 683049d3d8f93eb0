"""``ArtifactStore``: versioned artifacts (model weights, configs) on top of any ``ObjectStore``.

Layout: ``models/<name>/<version>/...``, ``manifest.json``, ``LATEST``, ``stages/<stage>``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from pydantic_core import PydanticSerializationError

from shared.errors import ConflictError, InvalidInputError, NotFoundError
from shared.schemas.artifacts import (
    LATEST_NAME,
    MANIFEST_NAME,
    MODELS_PREFIX,
    STAGES_DIR,
    ArtifactFile,
    ArtifactManifest,
    ArtifactRef,
    check_segment,
    new_version,
)
from shared.storage.base import ObjectNotFoundError, ObjectStore, validate_key
from shared.storage.filesystem import CHUNK_SIZE, write_atomically


def _ref(name: str, version: str) -> ArtifactRef:
    try:
        return ArtifactRef(name=name, version=version)
    except ValidationError as exc:
        raise InvalidInputError(str(exc.errors()[0]["msg"]), code="invalid_artifact") from exc


def _segment(value: str, what: str) -> str:
    try:
        return check_segment(value, what)
    except ValueError as exc:
        raise InvalidInputError(str(exc), code="invalid_artifact") from exc


def _model_prefix(name: str) -> str:
    return f"{MODELS_PREFIX}{_segment(name, 'name')}/"


def _describe(content: bytes | Path) -> ArtifactFile:
    digest = hashlib.sha256()
    if isinstance(content, bytes):
        digest.update(content)
        return ArtifactFile(size=len(content), sha256=digest.hexdigest())
    size = 0
    with open(content, "rb") as src:
        while chunk := src.read(CHUNK_SIZE):
            digest.update(chunk)
            size += len(chunk)
    return ArtifactFile(size=size, sha256=digest.hexdigest())


def _dump(manifest: ArtifactManifest) -> bytes:
    try:
        return manifest.model_dump_json(indent=1).encode()
    except PydanticSerializationError as exc:
        raise InvalidInputError(
            f"metadata of artifact {manifest.ref} is not JSON-serialisable: {exc}",
            code="invalid_artifact",
        ) from exc


def _verified(chunks: Iterable[bytes], entry: ArtifactFile, label: str) -> Iterator[bytes]:
    """Pass ``chunks`` through; raise ``ConflictError`` at the end when size or hash differ."""
    digest = hashlib.sha256()
    size = 0
    for chunk in chunks:
        digest.update(chunk)
        size += len(chunk)
        yield chunk
    if size != entry.size or digest.hexdigest() != entry.sha256:
        raise ConflictError(
            f"{label} is corrupt: {size} bytes, sha256 {digest.hexdigest()[:12]}…, manifest "
            f"says {entry.size} bytes, {entry.sha256[:12]}…",
            code="artifact_corrupt",
        )


class ArtifactStore:
    """Publishes, finds and downloads versioned artifacts in an ``ObjectStore``.

    A version's files are written first, then ``models/<name>/<version>/manifest.json``,
    then the ``models/<name>/LATEST`` pointer (BentoML's register -> latest order), so a
    reader that follows LATEST or finds a manifest always sees a complete version.
    """

    def __init__(self, store: ObjectStore) -> None:
        """Wrap ``store``; every key this class writes starts with ``models/``."""
        self.store = store

    # -- publishing ----------------------------------------------------------------------
    def publish(
        self,
        name: str,
        files: Mapping[str, bytes | Path],
        *,
        version: str | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> ArtifactRef:
        """Write every file, then ``manifest.json``, then move ``LATEST``.

        Idempotent for a given ``version``: when its manifest already lists the same file
        hashes, nothing is rewritten and the existing ref is returned (LATEST is only moved
        forward, completing a publish that crashed before it). Metadata is not compared.

        Args:
            name: artifact name, e.g. 'agbp-yolov8s'.
            files: file name (may contain '/') -> content, as bytes or a local file.
            version: e.g. from ``new_version(seed=job_id, at=job.created_at)``; new when None.
            metadata: JSON-serialisable facts stored in the manifest (config, metrics).

        Raises:
            InvalidInputError: bad name, version or file name, or no files.
            ConflictError: ``version`` exists with different content.
        """
        ref = _ref(name, version or new_version())
        if not files:
            raise InvalidInputError(f"artifact {ref} has no files", code="invalid_artifact")
        manifest = ArtifactManifest(
            name=ref.name,
            version=ref.version,
            created_at=datetime.now(UTC),
            files={self._check_filename(fn): _describe(data) for fn, data in files.items()},
            metadata=metadata or {},
        )
        body = _dump(manifest)  # fails on unserialisable metadata before anything is written
        existing = self._read_manifest(ref)
        if existing is not None:
            if existing.hashes() != manifest.hashes():
                raise ConflictError(
                    f"artifact {ref} already exists with different files; publish a new version",
                    code="artifact_exists",
                )
            self._move_latest(existing)
            return ref
        self._write_version(ref, files, body)
        self._move_latest(manifest)
        return ref

    def _write_version(
        self, ref: ArtifactRef, files: Mapping[str, bytes | Path], body: bytes
    ) -> None:
        for filename, data in files.items():
            if isinstance(data, bytes):
                self.store.put_bytes(ref.key(filename), data)
            else:
                self.store.put_file(ref.key(filename), data)
        self.store.sync()  # the files are on disk before a manifest names them
        self.store.put_bytes(ref.manifest_key, body, content_type="application/json")

    @staticmethod
    def _check_filename(filename: str) -> str:
        validate_key(filename)
        if filename == MANIFEST_NAME:
            raise InvalidInputError(
                f"{MANIFEST_NAME!r} is reserved for the manifest", code="invalid_artifact"
            )
        return filename

    def _move_latest(self, manifest: ArtifactManifest) -> None:
        """Point LATEST at ``manifest``'s version unless it names a newer version already."""
        current = self.latest(manifest.name)
        if current is not None:
            if current.version == manifest.version:
                return
            shown = self._read_manifest(current)
            if shown is not None and shown.created_at > manifest.created_at:
                return
        key = f"{_model_prefix(manifest.name)}{LATEST_NAME}"
        self.store.sync()  # the version is on disk before LATEST names it
        self.store.put_bytes(key, manifest.version.encode(), content_type="text/plain")
        self.store.sync([key])

    # -- lookups -------------------------------------------------------------------------
    def _read_pointer(self, key: str, name: str) -> ArtifactRef | None:
        try:
            version = self.store.get_bytes(key).decode().strip()
        except ObjectNotFoundError:
            return None
        return _ref(name, version)

    def latest(self, name: str) -> ArtifactRef | None:
        """The version ``LATEST`` points at, or None when nothing was published."""
        return self._read_pointer(f"{_model_prefix(name)}{LATEST_NAME}", name)

    def versions(self, name: str) -> list[str]:
        """Complete (manifest written) versions of ``name``, sorted as strings.

        Versions from ``new_version`` sort oldest first.
        """
        prefix = _model_prefix(name)
        found = []
        for key in self.store.list(prefix):
            version, _, rest = key[len(prefix) :].partition("/")
            if rest == MANIFEST_NAME:
                found.append(version)
        return sorted(found)

    def list_models(self) -> list[str]:
        """Names with at least one complete version, sorted."""
        names = set()
        for key in self.store.list(MODELS_PREFIX):
            parts = key[len(MODELS_PREFIX) :].split("/")
            if len(parts) == 3 and parts[2] == MANIFEST_NAME:
                names.add(parts[0])
        return sorted(names)

    def _read_manifest(self, ref: ArtifactRef) -> ArtifactManifest | None:
        try:
            raw = self.store.get_bytes(ref.manifest_key)
        except ObjectNotFoundError:
            return None
        return ArtifactManifest.model_validate_json(raw)

    def manifest(self, ref: ArtifactRef) -> ArtifactManifest:
        """The manifest of ``ref``. Raises ``NotFoundError`` (code 'artifact_not_found')."""
        manifest = self._read_manifest(ref)
        if manifest is None:
            raise NotFoundError(f"artifact {ref} not found", code="artifact_not_found")
        return manifest

    # -- downloads -----------------------------------------------------------------------
    def fetch(self, ref: ArtifactRef, dest_dir: Path) -> Path:
        """Download every file of ``ref`` into ``dest_dir``, verifying sizes and SHA-256.

        Files already present with the right hash are kept; each download lands atomically
        and only after it verified. ``manifest.json`` is written last, so its presence marks
        a complete local copy.

        Returns:
            ``dest_dir``.

        Raises:
            NotFoundError: no such version.
            ConflictError: a stored file does not match its manifest (code 'artifact_corrupt').
        """
        manifest = self.manifest(ref)
        dest = Path(dest_dir)
        for filename, entry in manifest.files.items():
            target = dest / validate_key(filename)  # a tampered manifest must not escape dest
            if target.is_file() and _describe(target) == entry:
                continue
            chunks = self.store.iter_chunks(ref.key(filename))
            write_atomically(target, _verified(chunks, entry, f"{ref}/{filename}"))
        write_atomically(dest / MANIFEST_NAME, [_dump(manifest)])
        return dest

    def get_file_bytes(self, ref: ArtifactRef, filename: str) -> bytes:
        """One file of ``ref``, verified against the manifest. Raises ``NotFoundError``."""
        entry = self.manifest(ref).files.get(filename)
        if entry is None:
            raise NotFoundError(
                f"artifact {ref} has no file {filename!r}", code="artifact_file_not_found"
            )
        data = self.store.get_bytes(ref.key(filename))
        return b"".join(_verified([data], entry, f"{ref}/{filename}"))

    # -- stages --------------------------------------------------------------------------
    def promote(self, name: str, version: str, stage: str) -> ArtifactRef:
        """Point ``models/<name>/stages/<stage>`` at an existing version; returns its ref.

        Raises:
            NotFoundError: the version has no manifest.
        """
        ref = self.manifest(_ref(name, version)).ref
        self.store.put_bytes(
            self._stage_key(name, stage), version.encode(), content_type="text/plain"
        )
        return ref

    def stage(self, name: str, stage: str) -> ArtifactRef | None:
        """The version promoted to ``stage``, or None."""
        return self._read_pointer(self._stage_key(name, stage), name)

    @staticmethod
    def _stage_key(name: str, stage: str) -> str:
        return f"{_model_prefix(name)}{STAGES_DIR}/{_segment(stage, 'stage')}"
