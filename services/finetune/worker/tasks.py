"""Celery tasks of the finetune queue: thin wrappers around the service's job functions.

torch and ultralytics load with the service module, in the worker process; ultralytics is
configured offline by the service before its first import.
"""

from __future__ import annotations

from typing import Any

from celery import Task, shared_task

from services.finetune import quantization, service
from services.finetune.config import get_settings
from shared.jobs.context import JobContext
from shared.jobs.worker import run_in_worker
from shared.schemas.jobs import TaskName


def _import(ctx: JobContext) -> list[str]:
    return service.run_import_job(ctx, get_settings())


def _agdp(ctx: JobContext) -> list[str]:
    return service.run_agdp_job(ctx, get_settings())


def _finetune(ctx: JobContext) -> list[str]:
    return service.run_finetune_job(ctx, get_settings())


def _evaluate(ctx: JobContext) -> list[str]:
    return service.run_evaluation_job(ctx, get_settings())


def _quantize(ctx: JobContext) -> list[str]:
    return quantization.run_quantize_job(ctx, get_settings())


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
    """YOLOv8 finetuning; resumes from the job's last.pt after a lost worker."""
    return run_in_worker(self, job_id, _finetune)


@shared_task(name=TaskName.FINETUNE_EVALUATE.value, bind=True)
def evaluate_task(self: Task, job_id: str) -> dict[str, Any]:
    """COCO mAP of a registered model on a stored dataset split."""
    return run_in_worker(self, job_id, _evaluate)


@shared_task(name=TaskName.FINETUNE_QUANTIZE.value, bind=True)
def quantize_task(self: Task, job_id: str) -> dict[str, Any]:
    """INT8 quantisation of a detector, published with FP32 and INT8 mAP side by side."""
    return run_in_worker(self, job_id, _quantize)
