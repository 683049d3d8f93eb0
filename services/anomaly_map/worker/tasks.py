"""Celery tasks of the anomaly_map service: dataset maps and evaluations (queue ``maps``).

The encoder loads lazily, once per worker process, on the first task (never before fork).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from celery import Task, shared_task

from services.anomaly_map.config import get_settings
from services.anomaly_map.runtime.engine import MapEngine, build_engine
from services.anomaly_map.usecases.dataset_maps import run_dataset_maps
from services.anomaly_map.usecases.evaluations import run_evaluation
from services.anomaly_map.usecases.tocoad_fits import TOCOAD_FIT_TASK, run_tocoad_fit
from shared.jobs.context import JobContext
from shared.jobs.worker import run_in_worker, worker_jobs
from shared.schemas.jobs import TaskName


@lru_cache(maxsize=1)
def worker_engine() -> MapEngine:
    """The engine of this worker process (model weights loaded on first use)."""
    return build_engine(get_settings(), worker_jobs().store)


def _dataset_maps(ctx: JobContext) -> list[str]:
    return run_dataset_maps(ctx, worker_engine(), get_settings())


def _evaluate(ctx: JobContext) -> list[str]:
    return run_evaluation(ctx, worker_engine(), get_settings())


@shared_task(name=TaskName.ANOMALY_MAP_DATASET.value, bind=True)  # type: ignore[untyped-decorator]
def dataset_maps_task(self: Task, job_id: str) -> dict[str, Any]:
    """Celery entry point: one raw map per image under a prefix (resumable)."""
    return run_in_worker(self, job_id, _dataset_maps)


@shared_task(name=TaskName.ANOMALY_MAP_EVALUATE.value, bind=True)  # type: ignore[untyped-decorator]
def evaluate_task(self: Task, job_id: str) -> dict[str, Any]:
    """Celery entry point: image AUROC, pixel AUROC and AUPRO of a category on a dataset."""
    return run_in_worker(self, job_id, _evaluate)


def _tocoad_fit(ctx: JobContext) -> list[str]:
    return run_tocoad_fit(ctx, worker_engine())


@shared_task(name=TOCOAD_FIT_TASK, bind=True)  # type: ignore[untyped-decorator]
def tocoad_fit_task(self: Task, job_id: str) -> dict[str, Any]:
    """Celery entry point: fit ToCoAD on a category's normal images (resumable)."""
    return run_in_worker(self, job_id, _tocoad_fit)
