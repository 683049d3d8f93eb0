"""The detector model registry on top of ``ArtifactStore``: listings, stages, lineage, evaluations.

Torch-free, so the API reads it without loading the training stack. A detector version
holds the files of ``shared.schemas.detector_artifact`` (the seam inference reads); its
manifest metadata carries ``kind``, ``metrics`` and ``lineage``.
Evaluations live beside it under ``evaluations/`` (outside the manifest, added later).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from shared.errors import InvalidInputError, NotFoundError
from shared.schemas.artifacts import (
    MANIFEST_NAME,
    STAGES_DIR,
    ArtifactManifest,
    ArtifactRef,
    check_segment,
    model_prefix,
)
from shared.schemas.detector_artifact import CLASSES_FILE, ONNX_FILE
from shared.storage.artifacts import ArtifactStore
from shared.storage.base import ObjectStore

EVALUATIONS_DIR = "evaluations"


@dataclass(frozen=True)
class VersionInfo:
    """One published version as the registry shows it."""

    version: str
    created_at: datetime
    kind: str | None
    metrics: dict[str, Any]
    lineage: dict[str, Any]
    files: list[str]
    stages: list[str] = field(default_factory=list)
    evaluations: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class ModelSummary:
    """A model name with its newest version and stage pointers."""

    name: str
    latest: str | None
    versions: int
    stages: dict[str, str]
    kind: str | None


@dataclass(frozen=True)
class ModelDetail:
    """A model name with every version."""

    name: str
    latest: str | None
    stages: dict[str, str]
    versions: list[VersionInfo]


@dataclass
class _Layout:
    """What one listing of ``models/<name>/`` shows."""

    versions: list[str] = field(default_factory=list)
    stages: dict[str, str] = field(default_factory=dict)
    evaluations: dict[str, list[str]] = field(default_factory=dict)


def artifact_ref(name: str, version: str) -> ArtifactRef:
    """``ArtifactRef`` whose validation failure is a 422 naming the bad part."""
    try:
        return ArtifactRef(name=name, version=version)
    except ValueError as exc:  # pydantic's ValidationError is a ValueError
        raise InvalidInputError(
            f"invalid model reference {name!r}:{version!r}: use letters, digits and . _ - = +",
            code="invalid_model_ref",
        ) from exc


def _model_prefix(name: str) -> str:
    try:
        return model_prefix(name)
    except ValueError as exc:
        raise InvalidInputError(str(exc), code="invalid_model_ref") from exc


def lineage_of(manifest: ArtifactManifest) -> dict[str, Any]:
    """Our detectors nest lineage under ``lineage``; AGBP artifacts store it as the metadata."""
    meta = manifest.metadata
    nested = meta.get("lineage")
    return dict(nested) if isinstance(nested, dict) else dict(meta)


class ModelRegistry:
    """Read side of the registry plus promotion and evaluation records."""

    def __init__(self, store: ObjectStore) -> None:
        self.store = store
        self.artifacts = ArtifactStore(store)

    def resolve(self, spec: str) -> ArtifactRef:
        """``'name'``, ``'name:latest'`` or ``'name:version'`` -> a published version.

        Raises:
            NotFoundError: unknown model or version (codes model_not_found, artifact_not_found).
        """
        name, _, version = spec.partition(":")
        if version in ("", "latest"):
            ref = self.artifacts.latest(name)
            if ref is None:
                raise NotFoundError(f"model {name!r} does not exist", code="model_not_found")
            return ref
        ref = artifact_ref(name, version)
        self.artifacts.manifest(ref)
        return ref

    def list_models(self) -> list[ModelSummary]:
        """Every artifact name with its latest version, version count, stages and kind."""
        summaries = []
        for name in self.artifacts.list_models():
            layout = self._layout(name)
            latest = self.artifacts.latest(name)
            kind = self.artifacts.manifest(latest).metadata.get("kind") if latest else None
            summaries.append(
                ModelSummary(
                    name=name,
                    latest=latest.version if latest else None,
                    versions=len(layout.versions),
                    stages=layout.stages,
                    kind=kind,
                )
            )
        return summaries

    def detail(self, name: str) -> ModelDetail:
        """Every version of ``name`` with metrics, lineage, stages and evaluations.

        Raises:
            NotFoundError: no such model (code model_not_found).
        """
        layout = self._layout(name)
        if not layout.versions:
            raise NotFoundError(f"model {name!r} does not exist", code="model_not_found")
        latest = self.artifacts.latest(name)
        infos = [self.version_info(artifact_ref(name, v), layout) for v in layout.versions]
        return ModelDetail(name, latest.version if latest else None, layout.stages, infos)

    def version_info(self, ref: ArtifactRef, layout: _Layout | None = None) -> VersionInfo:
        """One version (NotFoundError with code artifact_not_found when absent)."""
        manifest = self.artifacts.manifest(ref)
        layout = layout or self._layout(ref.name)
        metrics = manifest.metadata.get("metrics")
        return VersionInfo(
            version=ref.version,
            created_at=manifest.created_at,
            kind=manifest.metadata.get("kind"),
            metrics=dict(metrics) if isinstance(metrics, dict) else {},
            lineage=lineage_of(manifest),
            files=sorted(manifest.files),
            stages=sorted(s for s, v in layout.stages.items() if v == ref.version),
            evaluations=layout.evaluations.get(ref.version, []),
        )

    def promote(self, name: str, version: str, stage: str) -> ArtifactRef:
        """Point stage ``stage`` of ``name`` at ``version`` (which must be a detector).

        Raises:
            NotFoundError: no such version.
            InvalidInputError: bad stage name, or the version has no ``model.onnx``.
        """
        try:
            check_segment(stage, "stage")
        except ValueError as exc:
            raise InvalidInputError(str(exc), code="invalid_stage") from exc
        ref = artifact_ref(name, version)
        if ONNX_FILE not in self.artifacts.manifest(ref).files:
            raise InvalidInputError(
                f"{ref} has no {ONNX_FILE}; only detectors can be served", code="not_a_detector"
            )
        return self.artifacts.promote(name, version, stage)

    def classes(self, ref: ArtifactRef) -> list[str]:
        """Class names of a detector version (``classes.json``)."""
        names: list[str] = json.loads(self.artifacts.get_file_bytes(ref, CLASSES_FILE))
        return names

    def evaluations(self, ref: ArtifactRef) -> list[dict[str, Any]]:
        """Saved evaluation documents of one version, by file name."""
        prefix = f"{ref.prefix}{EVALUATIONS_DIR}/"
        return [json.loads(self.store.get_bytes(key)) for key in self.store.list(prefix)]

    def evaluation_names(self, ref: ArtifactRef) -> list[str]:
        """Names of the saved evaluations of one version (``evaluations/<name>.json``)."""
        prefix = f"{ref.prefix}{EVALUATIONS_DIR}/"
        keys = self.store.list(prefix)
        return sorted(k[len(prefix) : -len(".json")] for k in keys if k.endswith(".json"))

    def evaluation_key(self, ref: ArtifactRef, name: str) -> str:
        """Where the evaluation ``name`` of a version is (or would be) saved."""
        return f"{ref.prefix}{EVALUATIONS_DIR}/{name}.json"

    def evaluation(self, ref: ArtifactRef, name: str) -> dict[str, Any] | None:
        """One saved evaluation document of a version, None when there is none."""
        key = self.evaluation_key(ref, name)
        if not self.store.exists(key):
            return None
        document: dict[str, Any] = json.loads(self.store.get_bytes(key))
        return document

    def save_evaluation(self, ref: ArtifactRef, name: str, document: dict[str, Any]) -> str:
        """Write ``evaluations/<name>.json`` beside the version; returns the key."""
        key = self.evaluation_key(ref, name)
        self.store.put_bytes(key, json.dumps(document, indent=1).encode(), "application/json")
        return key

    def chain_entry(self, ref: ArtifactRef) -> list[dict[str, Any]]:
        """``ref`` and its ancestors, newest first, each a lineage dict with ``artifact``."""
        lineage = lineage_of(self.artifacts.manifest(ref))
        ancestors = lineage.pop("chain", [])
        return [{"artifact": str(ref), **lineage}, *ancestors]

    def _layout(self, name: str) -> _Layout:
        """Versions, stage pointers and evaluation keys of ``name`` from one listing."""
        prefix = _model_prefix(name)
        layout = _Layout()
        stage_names: list[str] = []
        for key in self.store.list(prefix):
            parts = key[len(prefix) :].split("/")
            if len(parts) == 2 and parts[1] == MANIFEST_NAME:
                layout.versions.append(parts[0])
            elif len(parts) == 2 and parts[0] == STAGES_DIR:
                stage_names.append(parts[1])
            elif len(parts) == 3 and parts[1] == EVALUATIONS_DIR:
                layout.evaluations.setdefault(parts[0], []).append(key)
        for stage in stage_names:
            pointer = self.artifacts.stage(name, stage)
            if pointer is not None:
                layout.stages[stage] = pointer.version
        layout.versions.sort()
        return layout
