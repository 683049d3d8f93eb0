"""Re-queue orphaned jobs: RUNNING records whose worker stopped sending heartbeats.

Redis redelivers unacked messages only after the visibility timeout, and the embedded
filesystem transport never does; the reaper gives both the same recovery time (the lease
TTL). Duplicate deliveries are harmless: the runner drops a delivery whose job is alive.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Collection
from datetime import timedelta

from shared.jobs.producer import TaskSender, resend_job
from shared.jobs.store import JobStore, heartbeat_is_fresh
from shared.schemas.jobs import JobRecord, JobState, utcnow

log = logging.getLogger(__name__)


def find_orphans(jobs: JobStore, lease_ttl_s: float, queues: Collection[str]) -> list[JobRecord]:
    """RUNNING jobs on ``queues`` with a stale heartbeat, not re-queued within the TTL."""
    now = utcnow()
    orphans = []
    for record in jobs.list(state=JobState.RUNNING, limit=10_000):
        if record.queue not in queues or heartbeat_is_fresh(record, lease_ttl_s, now):
            continue
        if record.requeued_at and now - record.requeued_at < timedelta(seconds=lease_ttl_s):
            continue
        orphans.append(record)
    return orphans


def reap_once(
    sender: TaskSender, jobs: JobStore, lease_ttl_s: float, queues: Collection[str]
) -> list[str]:
    """Re-send every orphan once; returns their ids."""
    ids = []
    for record in find_orphans(jobs, lease_ttl_s, queues):
        log.warning(
            "re-queueing orphaned job %s (last heartbeat %s, worker %s)",
            record.id,
            record.heartbeat_at,
            record.worker,
        )
        resend_job(sender, jobs, record)
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
    ) -> None:
        self._args = (sender, jobs, lease_ttl_s, queues)
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
