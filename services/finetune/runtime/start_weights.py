"""Start weights of a detector run, for every family: AGBP backbone tensors, an artifact's
files, local checkpoint paths, and the counted-transfer summary jobs record.

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
from services.finetune.stores.models import ModelRegistry
from shared.errors import InvalidInputError
from shared.schemas.artifacts import ArtifactRef
from shared.schemas.backbones import BACKBONE_FILE


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
