"""Job records, states, task names and queues shared by producers (APIs) and workers."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, Field


class JobState(StrEnum):
    """Life cycle of a job; the last three are terminal."""

    PENDING = "PENDING"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELED = "CANCELED"


TERMINAL_STATES = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELED})


class Queue(StrEnum):
    """Celery queues; GPU queues run with the solo pool, one process per GPU."""

    MAPS = "maps"
    PRETRAIN = "pretrain"
    FINETUNE = "finetune"
    # Review exports only download and zip: on a queue of their own, a worker that trains no
    # detector (compose's and k8s' exports worker) takes them, never behind an hour of training.
    FINETUNE_EXPORTS = "finetune.exports"
    DEFAULT = "default"


class TaskName(StrEnum):
    """Stable task names: producers send by name and never import worker code."""

    SELFTEST = "jobs.selftest"
    ANOMALY_MAP_DATASET = "anomaly_map.dataset_maps"
    ANOMALY_MAP_EVALUATE = "anomaly_map.evaluate"
    ANOMALY_MAP_TOCOAD_FIT = "anomaly_map.tocoad_fit"
    PRETRAIN_AGBP = "pretrain.agbp"
    PRETRAIN_PSEUDO_LABELS = "pretrain.pseudo_labels"
    FINETUNE_AGDP = "finetune.agdp"
    FINETUNE_TRAIN = "finetune.train"
    FINETUNE_EVALUATE = "finetune.evaluate"
    FINETUNE_IMPORT_DATASET = "finetune.import_dataset"
    FINETUNE_QUANTIZE = "finetune.quantize"
    FINETUNE_REVIEW_EXPORT = "finetune.review_export"


def utcnow() -> datetime:
    return datetime.now(UTC)


class JobRecord(BaseModel):
    """The durable record at ``jobs/<id>/job.json``: the source of truth for a job's state."""

    id: str
    kind: str
    task_name: str
    queue: str
    params: dict[str, Any] = Field(default_factory=dict)
    state: JobState = JobState.PENDING
    progress: float = Field(0.0, ge=0.0, le=100.0)
    message: str = ""
    metrics: dict[str, Any] = Field(default_factory=dict)
    created_at: datetime = Field(default_factory=utcnow)
    started_at: datetime | None = None
    finished_at: datetime | None = None
    updated_at: datetime = Field(default_factory=utcnow)
    heartbeat_at: datetime | None = None
    requeued_at: datetime | None = None
    requeues: int = Field(0, ge=0, description="How many times the reaper re-published the job")
    error: str | None = None
    error_code: str | None = None
    artifacts: list[str] = Field(default_factory=list, description="'name:version' refs or keys")
    outputs: dict[str, Any] = Field(default_factory=dict, description="Result summary")
    worker: str | None = None
    attempts: int = 0
    resumed: int = Field(0, description="How many times the job resumed after a lost worker")
    cancel_requested: bool = False

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL_STATES
