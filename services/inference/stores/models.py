"""Which detector to serve: registry pointers (stage, LATEST, version) and verified local copies.

The reader of the detector-artifact seam (``shared.schemas.detector_artifact``, written by
finetune): only its ``SERVED_FILES`` (``model.onnx`` and ``classes.json``) are ever read from
storage. ONNX carries no code, so nothing fetched from the registry is unpickled. A trusted
local ``.pt`` is a separate path.

An INT8 version whose scheme is not exact on this CPU (full-range U8S8 without VNNI, see
``shared.ml.cpu_features``) is never served as is: its FP32 source (``lineage.quantized_from``)
is served in its place, marked as a ``Fallback``, or it is refused (503).
"""

from __future__ import annotations

import hashlib
import logging
import shutil
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Literal

from shared.errors import InvalidInputError, NotFoundError, UnavailableError
from shared.ml.cpu_features import CpuFeatures, host_cpu, int8_problem
from shared.schemas.artifacts import ArtifactManifest, ArtifactRef
from shared.schemas.detector_artifact import CLASSES_FILE, ONNX_FILE, int8_scheme, parse_classes
from shared.storage.artifacts import ArtifactStore
from shared.storage.filesystem import write_atomically

logger = logging.getLogger(__name__)

LATEST = "LATEST"  # a pseudo stage: the newest published version
_HASH_CHUNK = 1 << 20

Runtime = Literal["onnx", "torch"]
Source = Literal["registry", "local"]


@dataclass(frozen=True, order=True)
class ModelKey:
    """One servable model version."""

    name: str
    version: str

    def __str__(self) -> str:
        return f"{self.name}:{self.version}"


@dataclass(frozen=True)
class ModelTarget:
    """What a caller asked for: a pinned version, or a stage followed over time.

    Attributes:
        name: Registry model name.
        version: A pinned version; then ``stage`` is None.
        stage: A stage name or ``LATEST``; followed by the poller.
        fallback: When the stage is unset, serve LATEST instead of answering 404.
    """

    name: str
    version: str | None = None
    stage: str | None = None
    fallback: bool = False

    @property
    def pinned(self) -> bool:
        return self.version is not None

    def label(self) -> str:
        return f"{self.name}@{self.version}" if self.pinned else f"{self.name}@stage:{self.stage}"


@dataclass(frozen=True)
class Fallback:
    """The FP32 version served in place of an INT8 version this CPU cannot run exactly.

    Attributes:
        version: The FP32 version whose ``model.onnx`` is served.
        reason: Why the INT8 version is not (names the missing CPU feature).
    """

    version: str
    reason: str


@dataclass(frozen=True)
class ModelFiles:
    """A local model file ready to open, and where it came from.

    Attributes:
        key: Name and version reported in responses.
        path: Local ``.onnx`` (or trusted ``.pt``) file.
        names: Class names from ``classes.json``; None = from the model's own metadata.
        runtime: ``onnx`` (ONNX Runtime) or ``torch`` (ultralytics, trusted files only).
        source: ``registry`` or ``local``.
        fallback: Set when ``path`` is the FP32 source of the INT8 version ``key`` names.
    """

    key: ModelKey
    path: Path
    names: dict[int, str] | None
    runtime: Runtime
    source: Source
    fallback: Fallback | None = None


class ModelRegistry:
    """Resolves targets to versions and keeps verified copies under ``cache_dir``.

    Blocking (storage I/O): call from a worker thread.
    """

    def __init__(
        self, artifacts: ArtifactStore, cache_dir: Path, cpu: CpuFeatures | None = None
    ) -> None:
        self._artifacts = artifacts
        self._cache_dir = cache_dir
        self._cpu = cpu or host_cpu()

    def resolve(self, target: ModelTarget) -> ModelKey:
        """The version ``target`` points at now.

        Raises:
            NotFoundError: unknown model, version or stage (codes ``model_not_found``,
                ``model_version_not_found``, ``model_stage_not_found``).
            InvalidInputError: a name, version or stage with characters the registry refuses.
        """
        if target.version is not None:
            ref = _ref(target.name, target.version)
            if self._artifacts.latest(target.name) is None:
                raise _unknown_model(target.name)
            try:
                self._artifacts.manifest(ref)
            except NotFoundError as exc:
                raise NotFoundError(
                    f"model {target.name!r} has no version {target.version!r}",
                    code="model_version_not_found",
                ) from exc
            return ModelKey(ref.name, ref.version)
        return self._follow(target)

    def _follow(self, target: ModelTarget) -> ModelKey:
        stage = target.stage or LATEST
        latest = self._artifacts.latest(target.name)
        if stage.upper() == LATEST:
            ref = latest
        else:
            ref = self._artifacts.stage(target.name, stage)
            if ref is None and latest is not None and not target.fallback:
                raise NotFoundError(
                    f"model {target.name!r} has no version promoted to stage {stage!r}",
                    code="model_stage_not_found",
                )
            ref = ref or latest
        if ref is None:
            raise _unknown_model(target.name)
        return ModelKey(ref.name, ref.version)

    def fetch(self, key: ModelKey) -> ModelFiles:
        """A verified local copy of ``key``'s ONNX file and its class names.

        An INT8 version whose scheme is unsafe on this CPU comes back as its FP32 source
        (``ModelFiles.fallback`` says so), still under ``key``.

        Raises:
            NotFoundError: the version has no ``model.onnx`` (code ``model_not_servable``).
            ConflictError: a stored file does not match its manifest.
            UnavailableError: an INT8 version unsafe on this CPU with no FP32 source to serve
                instead (code ``int8_unsupported_cpu``; the message names the CPU feature).
        """
        ref = _ref(key.name, key.version)
        manifest = self._artifacts.manifest(ref)
        problem = int8_problem(int8_scheme(manifest.metadata), self._cpu)
        if problem is not None:
            return self._fp32_instead(key, manifest, problem)
        path = self._cache_dir / key.name / key.version / ONNX_FILE
        return self._copy(key, ref, manifest, path)

    def _copy(
        self,
        key: ModelKey,
        ref: ArtifactRef,
        manifest: ArtifactManifest,
        path: Path,
        fallback: Fallback | None = None,
    ) -> ModelFiles:
        entry = manifest.files.get(ONNX_FILE)
        if entry is None:
            raise NotFoundError(
                f"{ref} has no {ONNX_FILE}; only ONNX detector exports can be served",
                code="model_not_servable",
            )
        if not (path.is_file() and _sha256(path) == entry.sha256):
            # get_file_bytes checks size and SHA-256 against the manifest before we keep it.
            write_atomically(path, [self._artifacts.get_file_bytes(ref, ONNX_FILE)])
            logger.info("fetched %s into %s", ref, path)
        names = None
        if CLASSES_FILE in manifest.files:
            names = parse_classes(self._artifacts.get_file_bytes(ref, CLASSES_FILE))
        return ModelFiles(key, path, names, runtime="onnx", source="registry", fallback=fallback)

    def _fp32_instead(self, key: ModelKey, manifest: ArtifactManifest, problem: str) -> ModelFiles:
        source = self._fp32_source(manifest)
        if source is None:
            raise UnavailableError(
                f"{key} is not served on this CPU: {problem} (no FP32 version of it to serve "
                "instead)",
                code="int8_unsupported_cpu",
            )
        ref, fp32 = source
        logger.warning("%s: serving its FP32 source %s instead: %s", key, ref, problem)
        # Kept under the INT8 version's folder: dropping that version drops this copy too.
        path = self._cache_dir / key.name / key.version / f"fp32-{ref.version}.onnx"
        return self._copy(key, ref, fp32, path, Fallback(ref.version, problem))

    def _fp32_source(
        self, manifest: ArtifactManifest
    ) -> tuple[ArtifactRef, ArtifactManifest] | None:
        """The version an INT8 version was quantised from, if it is stored, servable and FP32."""
        lineage = manifest.metadata.get("lineage")
        spec = lineage.get("quantized_from") if isinstance(lineage, dict) else None
        name, sep, version = str(spec or "").partition(":")
        if not sep:
            return None
        try:
            ref = ArtifactRef(name=name, version=version)
            source = self._artifacts.manifest(ref)
        except (ValueError, NotFoundError):  # a bad reference, or a deleted version
            return None
        if ONNX_FILE not in source.files or int8_scheme(source.metadata) is not None:
            return None
        return ref, source

    def drop(self, key: ModelKey) -> None:
        """Delete the local copy of ``key`` (an evicted model; fetched again when needed)."""
        shutil.rmtree(self._cache_dir / key.name / key.version, ignore_errors=True)


class PromotionWatch:
    """The detector most recently promoted to a stage, for a server with no model configured.

    The registry keeps stage pointers without promotion times, so "most recently" is
    observed: on the first look it is the model whose promoted version is the newest
    (manifest ``created_at``); after that, a model whose pointer moved since the previous
    look wins. ``agssp up`` then serves whatever was promoted last without a setting.
    Blocking (storage I/O): call from a worker thread.
    """

    def __init__(self, artifacts: ArtifactStore, stage: str) -> None:
        self._artifacts = artifacts
        self._stage = stage
        self._seen: dict[str, str] | None = None
        self._choice: str | None = None

    @property
    def stage(self) -> str:
        return self._stage

    def choose(self) -> str | None:
        """The model name to serve now, or None while no detector is promoted."""
        pointers = self._pointers()
        moved = [
            n for n, v in pointers.items() if self._seen is not None and self._seen.get(n) != v
        ]
        if moved:
            self._choice = self._newest(pointers, moved)
        elif self._choice not in pointers:
            self._choice = self._newest(pointers, list(pointers))
        self._seen = pointers
        return self._choice

    def _pointers(self) -> dict[str, str]:
        pointers = {}
        for name in self._artifacts.list_models():
            ref = self._artifacts.stage(name, self._stage)
            try:
                servable = ref is not None and ONNX_FILE in self._artifacts.manifest(ref).files
            except NotFoundError:  # a stage left pointing at a deleted version
                servable = False
            if servable and ref is not None:
                pointers[name] = ref.version
        return pointers

    def _newest(self, pointers: dict[str, str], names: list[str]) -> str | None:
        if not names:
            return None

        def created(name: str) -> tuple[datetime, str]:
            return self._artifacts.manifest(_ref(name, pointers[name])).created_at, name

        return max(names, key=created)


def local_model(path: Path, name: str, *, allow_pickle: bool) -> ModelFiles:
    """Describe a model file on local disk (``INFERENCE_LOCAL_MODEL_PATH``).

    The version is ``local-`` plus the first 12 hex digits of the file's SHA-256, so responses
    say which bytes answered.

    Raises:
        InvalidInputError: missing file, unknown suffix, or a ``.pt`` without ``allow_pickle``.
    """
    if not path.is_file():
        raise InvalidInputError(f"local model {path} does not exist", code="model_file_missing")
    suffix = path.suffix.lower()
    if suffix not in (".onnx", ".pt"):
        raise InvalidInputError(f"local model {path} must be .onnx or .pt", code="model_format")
    if suffix == ".pt" and not allow_pickle:
        raise InvalidInputError(
            f"{path} is a pickle (.pt); set INFERENCE_ALLOW_PICKLE=true only for trusted files",
            code="pickle_not_allowed",
        )
    names = None
    sidecar = path.with_name(CLASSES_FILE)
    if sidecar.is_file():
        names = parse_classes(sidecar.read_bytes())
    return ModelFiles(
        key=ModelKey(name, f"local-{_sha256(path)[:12]}"),
        path=path,
        names=names,
        runtime="torch" if suffix == ".pt" else "onnx",
        source="local",
    )


def _ref(name: str, version: str) -> ArtifactRef:
    try:
        return ArtifactRef(name=name, version=version)
    except ValueError as exc:  # pydantic's ValidationError is a ValueError
        raise InvalidInputError(
            f"invalid model name or version {name!r}/{version!r}: use letters, digits, . _ - = +",
            code="invalid_model_ref",
        ) from exc


def _unknown_model(name: str) -> NotFoundError:
    return NotFoundError(f"model {name!r} has no published version", code="model_not_found")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as src:
        while chunk := src.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
