"""``JobStore``: durable job records at ``jobs/<id>/job.json``, cancel flags and checkpoints.

The record lives in the object store, not in Redis, so any API can read it after a broker
restart. The cancel flag is a separate object so that an API writing it never races with
the worker rewriting the record.
"""

from __future__ import annotations

import logging
import uuid
from datetime import datetime, timedelta
from typing import Any

from shared.errors import ConflictError, InvalidInputError, NotFoundError
from shared.schemas.jobs import JobRecord, JobState, utcnow
from shared.storage.base import ObjectNotFoundError, ObjectStore

log = logging.getLogger(__name__)

JOBS_PREFIX = "jobs/"


def new_job_id() -> str:
    """A sortable, unique job id: UTC timestamp plus 8 random hex characters."""
    return f"{utcnow():%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}"


def _check_id(job_id: str) -> str:
    if not job_id or "/" in job_id or job_id in (".", "..") or len(job_id) > 64:
        raise InvalidInputError(f"invalid job id {job_id!r}", code="invalid_job_id")
    return job_id


class JobStore:
    """Reads and writes job records, cancel flags and checkpoints in an ``ObjectStore``."""

    def __init__(self, store: ObjectStore) -> None:
        self.store = store

    @staticmethod
    def record_key(job_id: str) -> str:
        return f"{JOBS_PREFIX}{_check_id(job_id)}/job.json"

    @staticmethod
    def prefix(job_id: str) -> str:
        """Scratch space of one job; outputs of a redelivered job overwrite their own files."""
        return f"{JOBS_PREFIX}{_check_id(job_id)}/"

    def create(self, *, kind: str, task_name: str, queue: str, params: dict[str, Any]) -> JobRecord:
        record = JobRecord(
            id=new_job_id(), kind=kind, task_name=task_name, queue=queue, params=params
        )
        self.save(record)
        return record

    def save(self, record: JobRecord) -> JobRecord:
        record.updated_at = utcnow()
        self.store.put_bytes(
            self.record_key(record.id),
            record.model_dump_json(indent=1).encode(),
            content_type="application/json",
        )
        return record

    def get(self, job_id: str) -> JobRecord:
        try:
            raw = self.store.get_bytes(self.record_key(job_id))
        except ObjectNotFoundError as exc:
            raise NotFoundError(f"job {job_id!r} not found", code="job_not_found") from exc
        return JobRecord.model_validate_json(raw)

    def update(self, job_id: str, **fields: Any) -> JobRecord:
        record = self.get(job_id)
        for name, value in fields.items():
            setattr(record, name, value)
        return self.save(record)

    def list(
        self, *, kind: str | None = None, state: JobState | None = None, limit: int = 100
    ) -> list[JobRecord]:
        """Newest first. Reads each record: fine for thousands of jobs, not millions."""
        keys = [k for k in self.store.list(JOBS_PREFIX) if k.endswith("/job.json")]
        records: list[JobRecord] = []
        for key in sorted(keys, reverse=True):
            try:
                record = JobRecord.model_validate_json(self.store.get_bytes(key))
            except (ObjectNotFoundError, ValueError):
                log.warning("skipping unreadable job record %s", key)
                continue
            if (kind is None or record.kind == kind) and (state is None or record.state == state):
                records.append(record)
            if len(records) >= limit:
                break
        return records

    # -- cancellation -------------------------------------------------------------------
    def cancel_key(self, job_id: str) -> str:
        return f"{self.prefix(job_id)}cancel"

    def request_cancel(self, job_id: str) -> JobRecord:
        """Cooperative cancel: a flag the worker reads between steps; never a kill."""
        record = self.get(job_id)
        if record.terminal:
            raise ConflictError(f"job {job_id} is already {record.state}", code="job_finished")
        self.store.put_bytes(self.cancel_key(job_id), utcnow().isoformat().encode())
        record.cancel_requested = True
        if record.state == JobState.PENDING:
            record.state = JobState.CANCELED
            record.finished_at = utcnow()
            record.message = "canceled before it started"
        return self.save(record)

    def cancel_requested(self, job_id: str) -> bool:
        return self.store.exists(self.cancel_key(job_id))

    # -- checkpoints --------------------------------------------------------------------
    def checkpoint_key(self, job_id: str, name: str) -> str:
        return f"{self.prefix(job_id)}checkpoints/{name}"

    def save_checkpoint(self, job_id: str, name: str, data: bytes) -> None:
        self.store.put_bytes(self.checkpoint_key(job_id, name), data)

    def load_checkpoint(self, job_id: str, name: str) -> bytes | None:
        try:
            return self.store.get_bytes(self.checkpoint_key(job_id, name))
        except ObjectNotFoundError:
            return None


def heartbeat_is_fresh(record: JobRecord, ttl_s: float, now: datetime | None = None) -> bool:
    """True when a RUNNING record's worker reported within ``ttl_s`` seconds."""
    if record.heartbeat_at is None:
        return False
    return (now or utcnow()) - record.heartbeat_at < timedelta(seconds=ttl_s)
