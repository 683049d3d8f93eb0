"""The driver: a loop in the pipeline API process that advances every running pipeline.

Each tick reads the running pipelines from the store (through its running index; the first
tick of a driver also scans every record once), takes the ones whose lease is free (no
driver, or one silent for ``lease_ttl_s``), and calls :func:`advance` on each. Several API
replicas may run drivers: the lease keeps one pipeline with one driver at a time, and a
replica that dies hands its pipelines over after one lease.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from datetime import timedelta

from services.pipeline.stores.pipelines import PipelineRecord, PipelineState, PipelineStore
from services.pipeline.usecases.clients import ServiceClient
from services.pipeline.usecases.pipelines import advance
from services.pipeline.usecases.report import render_report
from shared.errors import NotFoundError, SuiteError
from shared.schemas.jobs import utcnow

log = logging.getLogger(__name__)


class PipelineDriver:
    """Advances running pipelines every ``interval_s`` on its own thread."""

    def __init__(
        self,
        pipelines: PipelineStore,
        client: ServiceClient,
        interval_s: float = 2.0,
        lease_ttl_s: float = 60.0,
        name: str | None = None,
    ) -> None:
        self.pipelines = pipelines
        self.client = client
        self.interval_s = interval_s
        self.lease_ttl_s = lease_ttl_s
        self.name = name or f"{socket.gethostname()}-{os.getpid()}"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._indexed = False

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="pipeline-driver", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.tick()
            except SuiteError as exc:  # store outage: try again next tick
                log.warning("pipeline driver: %s", exc)
            except Exception:  # a bug in one tick must not stop every pipeline for good
                log.exception("pipeline driver tick failed")
            self._stop.wait(self.interval_s)

    def tick(self) -> int:
        """Advance every running pipeline this driver may hold; returns how many it touched."""
        if not self._indexed:
            self.pipelines.index_running()
            self._indexed = True
        touched = 0
        for pipeline_id in self.pipelines.running_ids():
            record = self._running(pipeline_id)
            if record is None or not self._claim(record):
                continue
            record.cancel_requested = self.pipelines.cancel_requested(pipeline_id)
            advance(record, self.client, self._save, self._report)
            touched += 1
        return touched

    def _running(self, pipeline_id: str) -> PipelineRecord | None:
        """The record of an indexed pipeline; None (and out of the index) if it is not running."""
        try:
            record = self.pipelines.get(pipeline_id)
        except NotFoundError:  # a record deleted by hand
            record = None
        if record is None or record.state is not PipelineState.RUNNING:
            self.pipelines.unindex(pipeline_id)
            return None
        return record

    def _claim(self, record: PipelineRecord) -> bool:
        now = utcnow()
        fresh = record.driver_heartbeat is not None and now - record.driver_heartbeat < timedelta(
            seconds=self.lease_ttl_s
        )
        if record.driver not in (None, self.name) and fresh:
            return False
        if record.driver != self.name:
            log.info("pipeline %s: taken by driver %s", record.id, self.name)
        record.driver = self.name
        self._save(record)
        return True

    def _save(self, record: PipelineRecord) -> PipelineRecord:
        record.driver_heartbeat = utcnow()
        return self.pipelines.save(record)

    def _report(self, record: PipelineRecord) -> str:
        return self.pipelines.put_report(record.id, render_report(record, self.pipelines.store))
