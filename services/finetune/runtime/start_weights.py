"""Start weights of a detector run: AGBP backbones, detector artifacts, local checkpoints.

Tensors from the registry load with ``weights_only`` (no pickled code); a local ultralytics
``.pt`` (a pickle) is accepted only from AGSSP_MODEL_DIR, or from anywhere for the CLI.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from services.finetune.config import FinetuneSettings
from services.finetune.ml.checkpoint import DetectorCheckpoint
from services.finetune.ml.detector import (
    BackboneInit,
    CheckpointPathInit,
    DetectorInit,
    InitSpec,
)
from services.finetune.params import InitParams
from services.finetune.stores.models import ModelRegistry
from shared.errors import InvalidInputError
from shared.schemas.artifacts import ArtifactRef
from shared.schemas.backbones import BACKBONE_FILE
from shared.schemas.detector_artifact import WEIGHTS_FILE
from shared.storage.base import ObjectStore


def resolve_init(
    store: ObjectStore, init: InitParams, settings: FinetuneSettings, local_ok: bool = False
) -> InitSpec:
    """The ml ``InitSpec`` an ``InitParams`` names; artifact tensors load with weights_only.

    Args:
        local_ok: accept checkpoint paths outside AGSSP_MODEL_DIR (the CLI, run by the user).

    Raises:
        InvalidInputError: the artifact lacks the weights file, or the path is not allowed.
    """
    fraction = settings.min_transfer_fraction
    if init.kind == "scratch":
        return None
    if init.artifact is not None:
        registry = ModelRegistry(store)
        ref = registry.resolve(init.artifact)
        if init.kind == "agbp":
            return BackboneInit(backbone_tensors(registry, ref), min_fraction=fraction)
        return DetectorInit(_detector_checkpoint(registry, ref), min_fraction=fraction)
    return CheckpointPathInit(local_checkpoint_path(str(init.path), settings, local_ok), fraction)


def backbone_tensors(registry: ModelRegistry, ref: ArtifactRef) -> dict[str, torch.Tensor]:
    data = artifact_file(registry, ref, BACKBONE_FILE)
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several unpickling error types
        raise InvalidInputError(
            f"{ref}/{BACKBONE_FILE} is not a state_dict", code="bad_weights"
        ) from exc
    if not isinstance(state, dict):
        raise InvalidInputError(f"{ref}/{BACKBONE_FILE} is not a state_dict", code="bad_weights")
    return {str(k): v for k, v in state.items() if isinstance(v, torch.Tensor)}


def _detector_checkpoint(registry: ModelRegistry, ref: ArtifactRef) -> DetectorCheckpoint:
    data = artifact_file(registry, ref, WEIGHTS_FILE)
    return DetectorCheckpoint.from_bytes(data, source=f"{ref}/{WEIGHTS_FILE}")


def artifact_file(registry: ModelRegistry, ref: ArtifactRef, filename: str) -> bytes:
    if filename not in registry.artifacts.manifest(ref).files:
        raise InvalidInputError(f"artifact {ref} has no {filename}", code="init_weights_missing")
    return registry.artifacts.get_file_bytes(ref, filename)


def local_checkpoint_path(given: str, settings: FinetuneSettings, local_ok: bool) -> Path:
    root = settings.common.paths.resolved_model_dir()
    raw = Path(given).expanduser()
    path = (raw if raw.is_absolute() else root / raw).resolve()
    if not local_ok and not path.is_relative_to(root):
        # A job request must not make the worker read arbitrary files.
        raise InvalidInputError(
            f"checkpoint {given!r} is outside AGSSP_MODEL_DIR ({root})", code="path_not_allowed"
        )
    if not path.is_file():
        raise InvalidInputError(f"checkpoint {path} does not exist", code="init_weights_missing")
    return path


def transfer_doc(
    loaded: int,
    total: int,
    fraction: float,
    target_total: int,
    skipped: Sequence[Sequence[str]],
    limit: int | None = None,
) -> dict[str, Any]:
    """A counted weight transfer as job outputs and lineage record it, for every family:
    tensors loaded of the source's ``total``, the ``target_total`` the model has (``fresh``
    ones start random), and the skipped source tensors with why (the first ``limit``)."""
    return {
        "loaded": loaded,
        "total": total,
        "fraction": fraction,
        "target_total": target_total,
        "fresh": target_total - loaded,
        "skipped": [list(item) for item in skipped[:limit]],
    }
