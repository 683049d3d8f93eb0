"""``JobContext``: what a service function sees of the job it runs in.

It reports progress (throttled), answers "was I canceled?", and saves/loads checkpoints in
the object store under ``jobs/<id>/checkpoints/``. Service code depends on this class only,
never on Celery, so the same use case runs in a worker, in a CLI command or in a test.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from shared.errors import JobCanceledError
from shared.jobs.store import JobStore
from shared.schemas.jobs import JobRecord, utcnow
from shared.storage.base import ObjectStore


class JobContext:
    """Progress, cancellation and checkpoints for one running job."""

    def __init__(self, jobs: JobStore, record: JobRecord, *, min_interval_s: float = 1.0) -> None:
        self.jobs = jobs
        self.record = record
        self.min_interval_s = min_interval_s
        self._last_write = 0.0

    @property
    def job_id(self) -> str:
        return self.record.id

    @property
    def params(self) -> dict[str, Any]:
        return self.record.params

    @property
    def store(self) -> ObjectStore:
        return self.jobs.store

    @property
    def prefix(self) -> str:
        """Scratch prefix of this job (``jobs/<id>/``)."""
        return self.jobs.prefix(self.job_id)

    def progress(
        self,
        percent: float,
        message: str = "",
        *,
        force: bool = False,
        metrics: Mapping[str, Any] | None = None,
    ) -> None:
        """Record progress 0-100; writes at most once per ``min_interval_s`` unless forced."""
        self.record.progress = max(0.0, min(100.0, float(percent)))
        if message:
            self.record.message = message
        if metrics:
            self.record.metrics.update(metrics)
        now = time.monotonic()
        if force or now - self._last_write >= self.min_interval_s:
            self._write()
            self._last_write = now

    def set_outputs(self, **outputs: Any) -> None:
        self.record.outputs.update(outputs)
        self._write()

    def heartbeat(self) -> None:
        self._write()

    def _write(self) -> None:
        # The API writes the cancel flag as its own object; mirror it so the record shows it.
        self.record.cancel_requested = self.jobs.cancel_requested(self.job_id)
        self.record.heartbeat_at = utcnow()
        self.jobs.save(self.record)

    def should_stop(self) -> bool:
        return self.jobs.cancel_requested(self.job_id)

    def check_cancel(self) -> None:
        """Raise ``JobCanceledError`` when a cancel was requested (call between steps)."""
        if self.should_stop():
            raise JobCanceledError(f"job {self.job_id} was canceled")

    def save_checkpoint(self, data: bytes, name: str = "checkpoint") -> None:
        self.jobs.save_checkpoint(self.job_id, name, data)

    def load_checkpoint(self, name: str = "checkpoint") -> bytes | None:
        return self.jobs.load_checkpoint(self.job_id, name)
