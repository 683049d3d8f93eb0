"""Celery tasks of the finetune queues: thin wrappers around the job kinds' run functions.

Review exports are sent to ``finetune.exports``, the rest to ``finetune`` (the producers pick
the queue); one module serves both, so a worker on either imports the same tasks.

torch and ultralytics load with the family's backend (``usecases.backend.load_backend``,
the runs are given it), in the worker process; the YOLOv8 backend configures ultralytics
offline before its first import.
"""

from __future__ import annotations

from typing import Any

from celery import Task, shared_task

from services.finetune.config import get_settings
from services.finetune.ml.backend import load_backend
from services.finetune.usecases import (
    agdp_jobs,
    datasets,
    evaluations,
    finetune_jobs,
    quantize_jobs,
    review_export_jobs,
)
from shared.jobs.context import JobContext
from shared.jobs.worker import run_in_worker
from shared.schemas.jobs import TaskName


def _import(ctx: JobContext) -> list[str]:
    return datasets.run_import_job(ctx, get_settings())


def _agdp(ctx: JobContext) -> list[str]:
    return agdp_jobs.run_agdp_job(ctx, get_settings(), load_backend)


def _finetune(ctx: JobContext) -> list[str]:
    return finetune_jobs.run_finetune_job(ctx, get_settings(), load_backend)


def _evaluate(ctx: JobContext) -> list[str]:
    return evaluations.run_evaluation_job(ctx, get_settings(), load_backend)


def _quantize(ctx: JobContext) -> list[str]:
    return quantize_jobs.run_quantize_job(ctx, get_settings(), load_backend)


def _review_export(ctx: JobContext) -> list[str]:
    return review_export_jobs.run_review_export_job(ctx, get_settings())


@shared_task(name=TaskName.FINETUNE_IMPORT_DATASET.value, bind=True)
def import_dataset_task(self: Task, job_id: str) -> dict[str, Any]:
    """Import a VOC/COCO/YOLO folder from the store as a dataset version."""
    return run_in_worker(self, job_id, _import)


@shared_task(name=TaskName.FINETUNE_AGDP.value, bind=True)
def agdp_task(self: Task, job_id: str) -> dict[str, Any]:
    """AGDP detector pretraining; resumes from the job's last.pt after a lost worker."""
    return run_in_worker(self, job_id, _agdp)


@shared_task(name=TaskName.FINETUNE_TRAIN.value, bind=True)
def finetune_task(self: Task, job_id: str) -> dict[str, Any]:
    """Detector finetuning (any family of the table); resumes from the job's last.pt after a lost worker."""
    return run_in_worker(self, job_id, _finetune)


@shared_task(name=TaskName.FINETUNE_EVALUATE.value, bind=True)
def evaluate_task(self: Task, job_id: str) -> dict[str, Any]:
    """COCO mAP of a registered model on a stored dataset split."""
    return run_in_worker(self, job_id, _evaluate)


@shared_task(name=TaskName.FINETUNE_QUANTIZE.value, bind=True)
def quantize_task(self: Task, job_id: str) -> dict[str, Any]:
    """INT8 quantisation of a detector, published with FP32 and INT8 mAP side by side."""
    return run_in_worker(self, job_id, _quantize)


@shared_task(name=TaskName.FINETUNE_REVIEW_EXPORT.value, bind=True)
def review_export_task(self: Task, job_id: str) -> dict[str, Any]:
    """Predictions or pseudo boxes as a COCO/YOLO zip for review, stored under the job."""
    return run_in_worker(self, job_id, _review_export)
