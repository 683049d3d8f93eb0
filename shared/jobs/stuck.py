"""``agssp_jobs_stuck``: a Prometheus gauge of jobs that look stuck, computed on scrape.

A job is stuck when it is RUNNING without a fresh heartbeat or PENDING and unclaimed past
its re-publish wait (``shared.jobs.reaper.stuck_reason``). The listing is cached for
``cache_s`` so frequent scrapes do not read every record each time; a store outage yields
no sample instead of failing ``/metrics``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Iterator

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from shared.config import JobSettings
from shared.jobs.reaper import stuck_reason
from shared.jobs.store import JobStore

log = logging.getLogger(__name__)


def count_stuck(jobs: JobStore, settings: JobSettings) -> Counter[str]:
    """Stuck jobs per queue among the live (PENDING or RUNNING) jobs."""
    counts: Counter[str] = Counter()
    for record in jobs.live():
        reason = stuck_reason(
            record, lease_ttl_s=settings.lease_ttl_s, pending_after_s=settings.pending_requeue_s
        )
        if reason:
            counts[record.queue] += 1
    return counts


class StuckJobsCollector(Collector):
    """Yields ``agssp_jobs_stuck{queue}`` from the durable job records."""

    def __init__(self, jobs: JobStore, settings: JobSettings, cache_s: float = 30.0) -> None:
        self._jobs, self._settings, self._cache_s = jobs, settings, cache_s
        self._lock = threading.Lock()
        self._at = float("-inf")
        self._counts: Counter[str] | None = None

    def collect(self) -> Iterator[GaugeMetricFamily]:
        gauge = GaugeMetricFamily(
            "agssp_jobs_stuck",
            "Jobs RUNNING without heartbeat or PENDING unclaimed past the re-publish wait",
            labels=["queue"],
        )
        counts = self._current()
        if counts is not None:
            for queue, value in sorted(counts.items()):
                gauge.add_metric([queue], float(value))
        yield gauge

    def _current(self) -> Counter[str] | None:
        with self._lock:
            if time.monotonic() - self._at >= self._cache_s:
                try:
                    self._counts = count_stuck(self._jobs, self._settings)
                except Exception:  # a store outage must not break /metrics
                    log.warning("could not count stuck jobs", exc_info=True)
                    self._counts = None
                self._at = time.monotonic()
            return self._counts
