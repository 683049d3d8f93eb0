"""Submitting jobs: write the durable record first, then send the task by name."""

from __future__ import annotations

import logging
from typing import Any, Protocol

from shared.errors import UnavailableError
from shared.jobs.store import JobStore
from shared.schemas.jobs import JobRecord, JobState, utcnow

log = logging.getLogger(__name__)


class TaskSender(Protocol):
    """The part of a Celery app a producer uses (tests may pass a fake)."""

    def send_task(self, name: str, args: Any = None, **options: Any) -> Any: ...


def submit_job(
    sender: TaskSender,
    jobs: JobStore,
    *,
    kind: str,
    task_name: str,
    queue: str,
    params: dict[str, Any],
) -> JobRecord:
    """Create the PENDING record and enqueue ``task_name(job_id)`` on ``queue``.

    Raises:
        UnavailableError: the broker refused the message; the record is marked FAILED.
    """
    record = jobs.create(kind=kind, task_name=task_name, queue=queue, params=params)
    try:
        sender.send_task(task_name, args=[record.id], queue=queue)
    except Exception as exc:
        log.exception("could not enqueue job %s", record.id)
        record.state, record.error, record.error_code = JobState.FAILED, str(exc), "broker_down"
        record.finished_at = utcnow()
        jobs.save(record)
        raise UnavailableError(f"job broker unavailable: {exc}", code="broker_unavailable") from exc
    return record


def resend_job(sender: TaskSender, jobs: JobStore, record: JobRecord) -> bool:
    """Send an existing job again (used by the orphan reaper).

    The record is read again first: when a worker claimed or finished it since ``record``
    was listed (state or heartbeat changed), nothing is sent and False is returned.
    """
    current = jobs.get(record.id)
    if current.state != record.state or current.heartbeat_at != record.heartbeat_at:
        return False
    current.requeued_at = utcnow()
    current.requeues += 1
    jobs.save(current)
    sender.send_task(current.task_name, args=[current.id], queue=current.queue)
    return True
