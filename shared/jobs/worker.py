"""Worker-side glue: per-process resources, the task wrapper and the orphan reaper hook.

Heavy resources (models) are loaded lazily by the services' own cached loaders inside the
worker process, never in a parent before fork (field-notes §C2).
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable
from functools import lru_cache
from typing import Any

from celery import Task
from celery.exceptions import SoftTimeLimitExceeded
from celery.signals import worker_init, worker_process_init, worker_ready, worker_shutting_down

from shared.config import CommonSettings, get_common_settings
from shared.errors import SuiteError
from shared.jobs.context import JobContext
from shared.jobs.reaper import Reaper
from shared.jobs.runner import Handler, RecordUnavailableError, RunnerOptions, run_job
from shared.jobs.store import JobStore
from shared.ml.threads import configure_training_threads
from shared.schemas.jobs import JobRecord, Queue
from shared.storage.factory import create_store
from shared.storage.patient import PatientStore

log = logging.getLogger(__name__)
_reapers: list[Reaper] = []


@lru_cache
def worker_jobs() -> JobStore:
    """The job store of this worker process (built once per process); its store calls ride
    out short storage outages (``shared.storage.patient``). A local-folder store does not
    fsync each write: ``JobStore`` syncs it before a record turns terminal and before a
    checkpoint (``shared.storage.filesystem``)."""
    settings = get_common_settings()
    store = create_store(settings, durable=False)
    return JobStore(PatientStore(store, settings.jobs.storage_patience_s))


def _options(task: Task, settings: CommonSettings) -> RunnerOptions:
    hostname = getattr(task.request, "hostname", None) or socket.gethostname()
    return RunnerOptions(
        worker=str(hostname),
        lease_ttl_s=settings.jobs.lease_ttl_s,
        heartbeat_s=settings.jobs.heartbeat_s,
        max_attempts=settings.jobs.max_attempts,
        reraise=(KeyboardInterrupt, SystemExit),
    )


def _time_limited(handler: Handler) -> Handler:
    def wrapped(ctx: JobContext) -> list[str] | None:
        try:
            return handler(ctx)
        except SoftTimeLimitExceeded as exc:
            raise SuiteError(
                "job time limit reached; its last checkpoint is kept", code="time_limit"
            ) from exc

    return wrapped


def run_in_worker(
    task: Task, job_id: str, handler: Callable[[JobContext], list[str] | None]
) -> dict[str, Any]:
    """Run a job handler under the runner's state machine; returns a short summary."""
    settings = get_common_settings()
    try:
        record: JobRecord = run_job(
            job_id, worker_jobs(), _time_limited(handler), _options(task, settings)
        )
    except RecordUnavailableError as exc:
        delay = retry_delay_s(settings.jobs.record_retry_s, _retries(task))
        log.warning("%s; retrying in %.0f s", exc.message, delay)
        # retry() publishes a new message before this one is acked, so the job is not lost.
        raise task.retry(exc=exc, countdown=delay, max_retries=None) from exc
    return {"job_id": record.id, "state": record.state.value}


def retry_delay_s(first_s: float, retries: int, cap_s: float = 300.0) -> float:
    """Doubling retry delay for a task whose record is unavailable, capped at ``cap_s``."""
    return float(min(cap_s, first_s * 2 ** min(retries, 16)))


def _retries(task: Task) -> int:
    return int(getattr(task.request, "retries", 0) or 0)


@worker_init.connect
@worker_process_init.connect
def _apply_training_threads(**_: Any) -> None:
    # Once per process (the solo/threads pools run in the main one, prefork in children):
    # AGBP, AGDP, finetune and ToCoAD fits then use TRAINING_THREADS cores (default all).
    threads = configure_training_threads(get_common_settings().training.threads)
    log.info("training uses %d CPU thread(s)", threads)


@worker_ready.connect
def _start_reaper(sender: Any = None, **_: Any) -> None:
    settings = get_common_settings()
    try:
        queues = {q.name for q in sender.task_consumer.queues}
    except AttributeError:
        queues = {q.value for q in Queue}
    reaper = Reaper(
        sender.app,
        worker_jobs(),
        lease_ttl_s=settings.jobs.lease_ttl_s,
        interval_s=settings.jobs.reaper_interval_s,
        queues=queues,
        pending_after_s=settings.jobs.pending_requeue_s,
    )
    reaper.start()
    _reapers.append(reaper)
    log.info("orphan reaper started for queues %s", sorted(queues))


@worker_shutting_down.connect
def _stop_reaper(**_: Any) -> None:
    for reaper in _reapers:
        reaper.stop()
