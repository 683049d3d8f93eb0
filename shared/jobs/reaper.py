"""Re-queue orphaned jobs: the object store is the source of truth for queued work too.

Two kinds of orphans are re-published:

* RUNNING records whose worker stopped sending heartbeats. Redis redelivers unacked
  messages only after the visibility timeout, and the embedded filesystem transport never
  does; the reaper gives both the same recovery time (the lease TTL).
* PENDING records never claimed within ``pending_after_s`` (the broker lost the message:
  Redis restarted empty, a message acked by a worker that could not read the record). The
  wait doubles with every re-publish, so a job queued behind a long one is not re-sent
  without end.

Duplicate deliveries are harmless: the runner drops a delivery whose job is finished or
alive on another worker.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Collection
from datetime import datetime, timedelta

from shared.jobs.producer import TaskSender, resend_job
from shared.jobs.store import JobStore, heartbeat_is_fresh
from shared.schemas.jobs import JobRecord, JobState, utcnow

log = logging.getLogger(__name__)


MAX_PENDING_DOUBLINGS = 6


def pending_wait_s(record: JobRecord, pending_after_s: float) -> float:
    """How long a PENDING record may stay unclaimed before it is re-published (again)."""
    return float(pending_after_s * 2 ** min(record.requeues, MAX_PENDING_DOUBLINGS))


def stuck_reason(
    record: JobRecord,
    *,
    lease_ttl_s: float,
    pending_after_s: float,
    now: datetime | None = None,
) -> str | None:
    """Why a job looks stuck (``None`` when it does not): what ``jobs list`` and metrics show."""
    now = now or utcnow()
    if record.state == JobState.RUNNING and not heartbeat_is_fresh(record, lease_ttl_s, now):
        age = (
            "never" if record.heartbeat_at is None else f"{_age_s(record.heartbeat_at, now)} s ago"
        )
        return f"RUNNING without heartbeat (last {age})"
    if record.state == JobState.PENDING:
        since = record.requeued_at or record.created_at
        if now - since >= timedelta(seconds=pending_wait_s(record, pending_after_s)):
            return f"PENDING unclaimed for {_age_s(record.created_at, now)} s"
    return None


def _age_s(then: datetime, now: datetime) -> int:
    return int((now - then).total_seconds())


def find_orphans(
    jobs: JobStore,
    lease_ttl_s: float,
    queues: Collection[str],
    pending_after_s: float | None = None,
) -> list[JobRecord]:
    """Jobs on ``queues`` to re-publish: stale RUNNING ones and (optionally) unclaimed PENDING."""
    now = utcnow()
    orphans = []
    for record in jobs.live():  # the live index: cost follows the live jobs, not history
        if record.queue not in queues or record.terminal:
            continue
        if record.state == JobState.RUNNING and _running_orphan(record, lease_ttl_s, now):
            orphans.append(record)
        elif record.state == JobState.PENDING and pending_after_s is not None:
            reason = stuck_reason(
                record, lease_ttl_s=lease_ttl_s, pending_after_s=pending_after_s, now=now
            )
            if reason:
                orphans.append(record)
    return orphans


def _running_orphan(record: JobRecord, lease_ttl_s: float, now: datetime) -> bool:
    if heartbeat_is_fresh(record, lease_ttl_s, now):
        return False
    return not (record.requeued_at and now - record.requeued_at < timedelta(seconds=lease_ttl_s))


def reap_once(
    sender: TaskSender,
    jobs: JobStore,
    lease_ttl_s: float,
    queues: Collection[str],
    pending_after_s: float | None = None,
) -> list[str]:
    """Re-send every orphan once; returns their ids."""
    ids = []
    for record in find_orphans(jobs, lease_ttl_s, queues, pending_after_s):
        log.warning(
            "re-queueing orphaned %s job %s (created %s, last heartbeat %s, worker %s)",
            record.state,
            record.id,
            record.created_at,
            record.heartbeat_at,
            record.worker,
        )
        if resend_job(sender, jobs, record):
            ids.append(record.id)
    return ids


class Reaper:
    """A daemon thread calling ``reap_once`` every ``interval_s`` until stopped."""

    def __init__(
        self,
        sender: TaskSender,
        jobs: JobStore,
        *,
        lease_ttl_s: float,
        interval_s: float,
        queues: Collection[str],
        pending_after_s: float | None = None,
    ) -> None:
        self._args = (sender, jobs, lease_ttl_s, queues, pending_after_s)
        self._interval = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="job-reaper", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                reap_once(*self._args)
            except Exception:
                log.warning("reaper pass failed", exc_info=True)
