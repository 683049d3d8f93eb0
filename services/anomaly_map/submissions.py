"""Job submission use cases: validate, pin the category version, enqueue on ``maps``."""

from __future__ import annotations

from services.anomaly_map import tocoad_fit
from services.anomaly_map.categories import CategoryStore
from services.anomaly_map.dataset_maps import DatasetMapParams
from services.anomaly_map.engine import resolve_mode
from services.anomaly_map.evaluation import EvaluationParams
from services.anomaly_map.tocoad_fit import TocoadFitParams
from shared.jobs.producer import TaskSender, submit_job
from shared.jobs.store import JobStore
from shared.schemas.jobs import JobRecord, Queue, TaskName
from shared.storage.base import listing_prefix


def submit_dataset_maps(
    sender: TaskSender, jobs: JobStore, categories: CategoryStore, params: DatasetMapParams
) -> JobRecord:
    """Validate and enqueue a dataset map job; the category version is pinned now."""
    record = categories.get(params.category, params.category_version)
    payload = params.model_copy(
        update={
            "category_version": record.version,
            "mode": resolve_mode(params.mode, record),
            "prefix": listing_prefix(params.prefix),
            "output_prefix": listing_prefix(params.output_prefix) if params.output_prefix else None,
        }
    )
    return submit_job(
        sender,
        jobs,
        kind="anomaly_map_dataset",
        task_name=TaskName.ANOMALY_MAP_DATASET,
        queue=Queue.MAPS,
        params=payload.model_dump(mode="json"),
    )


def submit_evaluation(
    sender: TaskSender, jobs: JobStore, categories: CategoryStore, params: EvaluationParams
) -> JobRecord:
    """Validate and enqueue an evaluation job; the category version is pinned now."""
    record = categories.get(params.category, params.category_version)
    payload = params.model_copy(
        update={
            "category_version": record.version,
            "mode": resolve_mode(params.mode, record),
            "images_prefix": listing_prefix(params.images_prefix),
            "masks_prefix": listing_prefix(params.masks_prefix) if params.masks_prefix else None,
        }
    )
    return submit_job(
        sender,
        jobs,
        kind="anomaly_map_evaluation",
        task_name=TaskName.ANOMALY_MAP_EVALUATE,
        queue=Queue.MAPS,
        params=payload.model_dump(mode="json"),
    )


def submit_tocoad_fit(
    sender: TaskSender, jobs: JobStore, categories: CategoryStore, params: TocoadFitParams
) -> JobRecord:
    """Validate and enqueue a ToCoAD fit of a category version (config checked now)."""
    record = categories.get(params.category, params.category_version)
    tocoad_fit.tocoad_config(params.config)
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
        task_name=tocoad_fit.TOCOAD_FIT_TASK,
        queue=Queue.MAPS,
        params=payload.model_dump(mode="json"),
    )
