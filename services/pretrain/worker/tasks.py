"""Celery tasks of the pretrain queue: thin wrappers that run the service's job functions."""

from __future__ import annotations

from typing import Any

from celery import Task, shared_task

from services.pretrain.config import get_settings
from services.pretrain.ml.labeler import BoxLabeler
from services.pretrain.ml.runner import AgbpTrainer
from services.pretrain.usecases.agbp_jobs import run_agbp_job
from services.pretrain.usecases.pseudo_label_jobs import run_pseudo_label_job
from shared.jobs.context import JobContext
from shared.jobs.worker import run_in_worker
from shared.schemas.jobs import TaskName


@shared_task(name=TaskName.PRETRAIN_AGBP.value, bind=True)
def agbp_task(self: Task, job_id: str) -> dict[str, Any]:
    """AGBP backbone pretraining; resumes from the job's checkpoint after a lost worker."""
    settings = get_settings()
    trainer = AgbpTrainer(device=settings.device, ddp=settings.ddp)

    def handler(ctx: JobContext) -> list[str]:
        return run_agbp_job(ctx, settings, trainer)

    return run_in_worker(self, job_id, handler)


@shared_task(name=TaskName.PRETRAIN_PSEUDO_LABELS.value, bind=True)
def pseudo_labels_task(self: Task, job_id: str) -> dict[str, Any]:
    """Pseudo-defect boxes of one category from its anomaly maps."""
    settings = get_settings()

    def handler(ctx: JobContext) -> list[str]:
        return run_pseudo_label_job(ctx, settings, BoxLabeler())

    return run_in_worker(self, job_id, handler)
