"""Fitted ToCoAD models, stored beside their category version.

``categories/<name>/<version>/tocoad/model.pt`` is ``torch.save`` of ``TocoadModel.to_state()``
(read back with ``weights_only``); ``tocoad/model.json`` beside it holds the model version (a
digest of the stored bytes), the fit job, the preset and the full config, so every map,
dataset map job and evaluation names the exact ToCoAD model that made it.
"""

from __future__ import annotations

import hashlib
import io
import json
from typing import Any

import torch

from services.anomaly_map.ml.tocoad.model import TocoadModel
from services.anomaly_map.stores.categories import CategoryRecord, CategoryStore
from shared.errors import ConflictError, InvalidInputError

MODEL_FILE = "tocoad/model.pt"
INFO_FILE = "tocoad/model.json"


def state_to_bytes(state: dict[str, Any]) -> bytes:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def state_from_bytes(data: bytes) -> dict[str, Any]:
    # weights_only: tensors and plain containers only, never arbitrary pickled objects.
    state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise InvalidInputError("stored ToCoAD state is not a dict", code="bad_model")
    return state


def model_version(data: bytes) -> str:
    """Names a stored model by a digest of its bytes (a refit gets a new name)."""
    return f"tocoad-{hashlib.sha256(data).hexdigest()[:16]}"


def model_info(categories: CategoryStore, record: CategoryRecord) -> dict[str, Any]:
    """``tocoad/model.json`` of a category version (version, fit job, preset, config).

    Raises:
        ConflictError: ``tocoad_not_fitted`` when no fit job has finished for this version.
    """
    data = categories.get_blob(record, INFO_FILE)
    if data is None:
        raise _not_fitted(record)
    info: dict[str, Any] = json.loads(data)
    return info


def load_model(
    categories: CategoryStore, record: CategoryRecord, device: torch.device
) -> TocoadModel:
    """The fitted model of a category version.

    Raises:
        ConflictError: ``tocoad_not_fitted`` when no fit job has finished for this version.
    """
    data = categories.get_blob(record, MODEL_FILE)
    if data is None:
        raise _not_fitted(record)
    return TocoadModel.from_state(state_from_bytes(data), device)


def save_model(
    categories: CategoryStore, record: CategoryRecord, data: bytes, info: dict[str, Any]
) -> tuple[str, str]:
    """Store model bytes, then its info (the info names the model, so it is written last)."""
    key = categories.put_blob(record, MODEL_FILE, data)
    info_key = categories.put_blob(record, INFO_FILE, json.dumps(info, indent=1).encode())
    return key, info_key


def _not_fitted(record: CategoryRecord) -> ConflictError:
    return ConflictError(
        f"category {record.name!r} version {record.version} has no fitted ToCoAD model; "
        "run a fit job first (POST /v1/tocoad-fits or agssp maps fit-tocoad)",
        code="tocoad_not_fitted",
    )
