"""ToCoAD fit jobs (``anomaly_map_tocoad_fit``): submission and the resumable run on a
category's normal images; the fitted model is stored beside the category
(``stores.tocoad_models``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from pydantic import ValidationError

from services.anomaly_map.ml.tocoad.defects import (
    DefectExemplar,
    NativeSample,
    exemplars_from_boxes,
    natives_from_boxes,
)
from services.anomaly_map.ml.tocoad.fit import fit_tocoad
from services.anomaly_map.ml.tocoad.presets import preset_config
from services.anomaly_map.params import LabelledDefects, TocoadFitParams
from services.anomaly_map.params.tocoad import PresetName, TocoadConfig
from services.anomaly_map.runtime.engine import MapEngine
from services.anomaly_map.stores.categories import CategoryRecord, CategoryStore
from services.anomaly_map.stores.labelled_defects import (
    read_defect_images,
    resolve_dataset,
    select_defects,
    split_files,
)
from services.anomaly_map.stores.tocoad_models import (
    model_version,
    save_model,
    state_from_bytes,
    state_to_bytes,
)
from shared.errors import InvalidInputError
from shared.imaging.intake import ImageLimits, decode_object
from shared.jobs.context import JobContext
from shared.jobs.producer import TaskSender, submit_job
from shared.jobs.store import JobStore
from shared.ml.hooks import TrainHooks
from shared.schemas.dataset_maps import is_image_key
from shared.schemas.jobs import JobRecord, Queue, TaskName, utcnow
from shared.storage.base import listing_prefix, validate_key

TOCOAD_FIT_TASK = TaskName.ANOMALY_MAP_TOCOAD_FIT.value
CHECKPOINT = "tocoad"


def tocoad_config(overrides: dict[str, Any], preset: PresetName = "cpu") -> TocoadConfig:
    """Validated ToCoAD configuration: the preset with ``overrides`` merged in (422 if bad)."""
    try:
        return preset_config(preset, overrides)
    except ValidationError as exc:
        raise InvalidInputError(f"invalid ToCoAD config: {exc}", code="invalid_config") from exc


def submit_tocoad_fit(
    sender: TaskSender, jobs: JobStore, categories: CategoryStore, params: TocoadFitParams
) -> JobRecord:
    """Validate and enqueue a ToCoAD fit of a category version (config checked now)."""
    record = categories.get(params.category, params.category_version)
    tocoad_config(params.config)
    if params.defects is not None:  # unknown dataset or split: 404 / 422 now, not in the job
        split_files(
            categories.store, resolve_dataset(categories.store, params.defects.dataset),
            params.defects.split,
        )  # fmt: skip
    payload = params.model_copy(
        update={
            "category_version": record.version,
            "normal_prefix": listing_prefix(params.normal_prefix) if params.normal_prefix else None,
        }
    )
    return submit_job(
        sender,
        jobs,
        kind="anomaly_map_tocoad_fit",
        task_name=TOCOAD_FIT_TASK,
        queue=Queue.MAPS,
        params=payload.model_dump(mode="json"),
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
    named = [(f"reference {i}", data) for i, data in enumerate(raw)]
    named += [(k, ctx.store.get_bytes(k)) for k in keys]
    images = [decode_object(data, limits, key).array for key, data in named[: params.max_images]]
    if len(images) < 2:
        raise InvalidInputError(
            "ToCoAD needs at least 2 normal images (references or normal_prefix)",
            code="too_few_images",
        )
    return images


def _defect_exemplars(
    ctx: JobContext, spec: LabelledDefects | None, cfg: TocoadConfig, limits: ImageLimits
) -> tuple[list[DefectExemplar], list[NativeSample], dict[str, Any] | None]:
    """Exemplars cut from the boxes of ``spec``'s side of the labelled images and, when
    ``cfg.generator.p_native`` > 0, those images as native samples (target: their boxes), at
    the model's scale; and what the record says about the images (``DefectSelection.outputs``).
    """
    if spec is None:
        return [], [], None
    ctx.progress(0.0, f"reading labelled defects of {spec.dataset} ({spec.split})", force=True)
    selection = select_defects(ctx.store, spec)
    exemplars: list[DefectExemplar] = []
    natives: list[NativeSample] = []
    for item in read_defect_images(ctx.store, selection):
        image = decode_object(item.data, limits, f"{spec.dataset}/{item.file_name}").array
        exemplars += exemplars_from_boxes(image, item.boxes, cfg.image_size, cfg.aspect)
        if cfg.generator.p_native > 0:
            natives += natives_from_boxes(image, item.boxes, cfg.image_size, cfg.aspect)
    warnings = [selection.warning()]
    if not exemplars:
        warnings.append(f"{spec.dataset} ({spec.split}) holds no usable defect box: synthetic only")
    for warning in filter(None, warnings):
        ctx.set_outputs(warnings=[*ctx.record.outputs.get("warnings", []), warning])
        ctx.progress(0.0, f"warning: {warning}", force=True)
    return exemplars, natives, selection.outputs()


def run(
    ctx: JobContext, categories: CategoryStore, *, limits: ImageLimits, device: torch.device
) -> list[str]:
    """Fit ToCoAD on the category's normal images and store the model beside the category."""
    params = TocoadFitParams.model_validate(ctx.params)
    record = categories.get(params.category, params.category_version)
    cfg = tocoad_config(params.config, params.preset)
    ctx.progress(0.0, "loading normal images", force=True)
    images = _normal_images(ctx, categories, record, params, limits)
    defects, natives, defect_images = _defect_exemplars(ctx, params.defects, cfg, limits)
    saved = ctx.load_checkpoint(CHECKPOINT)
    hooks = TrainHooks(
        on_progress=lambda pct, msg, metrics: ctx.progress(0.99 * pct, msg, metrics=dict(metrics)),
        should_stop=ctx.should_stop,
        on_checkpoint=lambda state: ctx.save_checkpoint(state_to_bytes(state), CHECKPOINT),
        resume_state=state_from_bytes(saved) if saved else None,
    )
    model = fit_tocoad(images, cfg, hooks=hooks, device=device, defects=defects, natives=natives)
    data = state_to_bytes(model.to_state())
    info = {
        "model_version": model_version(data),
        "fit_job": ctx.job_id,
        "preset": params.preset,
        "images": len(images),
        "defects": params.defects.model_dump(mode="json") if params.defects else None,
        "defect_exemplars": len(defects),
        "native_samples": len(natives),
        "defect_images": defect_images,
        "config": cfg.model_dump(mode="json"),
        "created_at": utcnow().isoformat(),
    }
    key, info_key = save_model(categories, record, data, info)
    ctx.set_outputs(
        model=key,
        model_info=info_key,
        model_version=info["model_version"],
        images=len(images),
        defect_exemplars=len(defects),
        native_samples=len(natives),
        defect_images=defect_images,  # which side of the labelled split, and each side's count
        category_version=record.version,
    )
    return [key, info_key]


def run_tocoad_fit(ctx: JobContext, engine: MapEngine) -> list[str]:
    """Worker entry point of ToCoAD fit jobs."""
    return run(ctx, engine.categories, limits=engine.limits, device=engine.device)
