"""ToCoAD for a category: a resumable fit job on its normal images, the model stored at
``categories/<name>/<version>/tocoad/model.pt`` (``torch.save`` of ``TocoadModel.to_state()``,
read back with ``weights_only``) with ``tocoad/model.json`` beside it: the model version (a
digest of the stored bytes), the fit job, the preset and the full config, so every map, dataset
map job and evaluation names the exact ToCoAD model that made it.
"""

from __future__ import annotations

import hashlib
import io
import json
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from services.anomaly_map.categories import CategoryRecord, CategoryStore
from services.anomaly_map.maps_io import is_image_key
from services.anomaly_map.ml.tocoad.config import TocoadConfig
from services.anomaly_map.ml.tocoad.fit import fit_tocoad
from services.anomaly_map.ml.tocoad.model import TocoadModel
from services.anomaly_map.ml.tocoad.presets import PresetName, preset_config
from shared.errors import ConflictError, InvalidInputError
from shared.imaging.intake import ImageLimits, decode_image
from shared.jobs.context import JobContext
from shared.ml.hooks import TrainHooks
from shared.schemas.jobs import TaskName, utcnow
from shared.storage.base import validate_key

TOCOAD_FIT_TASK = TaskName.ANOMALY_MAP_TOCOAD_FIT.value
MODEL_FILE = "tocoad/model.pt"
INFO_FILE = "tocoad/model.json"
CHECKPOINT = "tocoad"


class TocoadFitParams(BaseModel):
    """Payload of ToCoAD fit jobs."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    category: str
    category_version: str | None = None
    normal_prefix: str | None = Field(
        None, description="extra defect-free images under this object-store prefix"
    )
    max_images: int = Field(
        512, ge=2, le=100_000, description="most training images; more are dropped (warned)"
    )
    preset: PresetName = Field("cpu", description="cpu (2 cores, < 1 h), gpu (paper), tiny (CI)")
    config: dict[str, Any] = Field(
        default_factory=dict, description="TocoadConfig overrides on top of the preset"
    )


def tocoad_config(overrides: dict[str, Any], preset: PresetName = "cpu") -> TocoadConfig:
    """Validated ToCoAD configuration: the preset with ``overrides`` merged in (422 if bad)."""
    try:
        return preset_config(preset, overrides)
    except ValidationError as exc:
        raise InvalidInputError(f"invalid ToCoAD config: {exc}", code="invalid_config") from exc


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


def _not_fitted(record: CategoryRecord) -> ConflictError:
    return ConflictError(
        f"category {record.name!r} version {record.version} has no fitted ToCoAD model; "
        "run a fit job first (POST /v1/tocoad-fits or agssp maps fit-tocoad)",
        code="tocoad_not_fitted",
    )


def _normal_images(
    ctx: JobContext,
    categories: CategoryStore,
    record: CategoryRecord,
    params: TocoadFitParams,
    limits: ImageLimits,
) -> list[Any]:
    raw = categories.reference_bytes(record)
    keys: list[str] = []
    if params.normal_prefix:
        prefix = validate_key(params.normal_prefix, prefix=True)
        keys = sorted(k for k in ctx.store.list(prefix) if is_image_key(k))
    available = len(raw) + len(keys)
    if available > params.max_images:
        # Evenly spaced, so a sorted listing does not lose whole sub-folders at its end.
        picks = np.linspace(0, len(keys) - 1, max(0, params.max_images - len(raw))).round()
        keys = [keys[i] for i in sorted({int(i) for i in picks})] if len(picks) else []
        warning = (
            f"max_images={params.max_images} keeps {len(raw) + len(keys)} of {available} normal "
            "images (evenly spaced); raise max_images to train on all of them"
        )
        ctx.set_outputs(warnings=[warning])
        ctx.progress(0.0, f"warning: {warning}", force=True)
    raw += [ctx.store.get_bytes(k) for k in keys]
    images = [decode_image(data, limits).array for data in raw[: params.max_images]]
    if len(images) < 2:
        raise InvalidInputError(
            "ToCoAD needs at least 2 normal images (references or normal_prefix)",
            code="too_few_images",
        )
    return images


def run(
    ctx: JobContext, categories: CategoryStore, *, limits: ImageLimits, device: torch.device
) -> list[str]:
    """Fit ToCoAD on the category's normal images and store the model beside the category."""
    params = TocoadFitParams.model_validate(ctx.params)
    record = categories.get(params.category, params.category_version)
    cfg = tocoad_config(params.config, params.preset)
    ctx.progress(0.0, "loading normal images", force=True)
    images = _normal_images(ctx, categories, record, params, limits)
    saved = ctx.load_checkpoint(CHECKPOINT)
    hooks = TrainHooks(
        on_progress=lambda pct, msg, metrics: ctx.progress(0.99 * pct, msg, metrics=dict(metrics)),
        should_stop=ctx.should_stop,
        on_checkpoint=lambda state: ctx.save_checkpoint(state_to_bytes(state), CHECKPOINT),
        resume_state=state_from_bytes(saved) if saved else None,
    )
    model = fit_tocoad(images, cfg, hooks=hooks, device=device)
    data = state_to_bytes(model.to_state())
    key = categories.put_blob(record, MODEL_FILE, data)
    info = {
        "model_version": f"tocoad-{hashlib.sha256(data).hexdigest()[:16]}",
        "fit_job": ctx.job_id,
        "preset": params.preset,
        "images": len(images),
        "config": cfg.model_dump(mode="json"),
        "created_at": utcnow().isoformat(),
    }
    info_key = categories.put_blob(record, INFO_FILE, json.dumps(info, indent=1).encode())
    ctx.set_outputs(
        model=key,
        model_info=info_key,
        model_version=info["model_version"],
        images=len(images),
        category_version=record.version,
    )
    return [key, info_key]
