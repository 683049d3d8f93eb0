"""Published AGBP backbones: resolving an artifact spec and reading its weights.

An AGBP artifact (``ArtifactStore``) holds ``BACKBONE_FILE`` plus its config, metrics and
loss curves; jobs start from one by naming it ``'name'``, ``'name:latest'`` or
``'name:version'``.
"""

from __future__ import annotations

from shared.errors import InvalidInputError, NotFoundError
from shared.schemas.artifacts import ArtifactRef
from shared.schemas.backbones import BACKBONE_FILE
from shared.storage.artifacts import ArtifactStore
from shared.storage.base import ObjectStore


def parse_artifact(spec: str) -> tuple[str, str | None]:
    """``'name'``/``'name:latest'`` -> (name, None); ``'name:version'`` -> (name, version)."""
    name, _, version = spec.partition(":")
    return name, None if version in ("", "latest") else version


def resolve_artifact(store: ObjectStore, spec: str) -> ArtifactRef:
    """The published version ``spec`` names.

    Raises:
        NotFoundError: no such artifact or version (code 'artifact_not_found').
    """
    artifacts = ArtifactStore(store)
    name, version = parse_artifact(spec)
    if version is None:
        ref = artifacts.latest(name)
        if ref is None:
            raise NotFoundError(
                f"artifact {name!r} has no published version", code="artifact_not_found"
            )
        return ref
    ref = ArtifactRef(name=name, version=version)
    artifacts.manifest(ref)  # NotFoundError (404, 'artifact_not_found') when absent
    return ref


def resolve_backbone(store: ObjectStore, spec: str) -> ArtifactRef:
    """``resolve_artifact``, refusing an artifact without backbone weights.

    Raises:
        NotFoundError: see ``resolve_artifact``.
        InvalidInputError: the artifact has no ``BACKBONE_FILE`` (code 'start_weights_invalid').
    """
    ref = resolve_artifact(store, spec)
    if BACKBONE_FILE not in ArtifactStore(store).manifest(ref).files:
        raise InvalidInputError(
            f"start weights: artifact {ref} has no {BACKBONE_FILE}", code="start_weights_invalid"
        )
    return ref


def backbone_weights(store: ObjectStore, ref: ArtifactRef) -> bytes:
    """The state_dict bytes of a published backbone."""
    return ArtifactStore(store).get_file_bytes(ref, BACKBONE_FILE)
