"""``JobStore``: durable job records at ``jobs/<id>/job.json``, cancel flags and checkpoints.

The record lives in the object store, not in Redis, so any API can read it after a broker
restart. The cancel flag is a separate object so that an API writing it never races with
the worker rewriting the record.

**The live index.** ``jobs/live/<id>`` is an empty marker for every job that is not finished
(PENDING or RUNNING): written after the record on its first save by a store instance,
removed after the record turns terminal. The reaper, the stuck-job gauge and listings of
PENDING or RUNNING jobs read the marked records only, so their cost follows the live work,
never the history. A store met without the index (records written before it existed) builds
it once from the records (``jobs/live.built`` says it was); a marker whose record is gone or
finished is dropped when met.

**The day index.** ``jobs/days/<YYYYMMDD>`` marks each day that holds a job (ids start with
their UTC creation time) and ``jobs/day-ids/<YYYYMMDD>/<id>`` each job of that day. Listing
by recency walks the days newest first and lists one day's markers at a time, reading only
the records it returns (``list(before=<id>)`` continues a page): its cost follows the page,
on S3 and on a local folder alike (a folder cannot list ``jobs/<day>*`` without reading every
job's name). A store without the index builds it once from its keys (``jobs/day-ids.built``).
"""

from __future__ import annotations

import builtins
import logging
import re
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

from shared.errors import ConflictError, InvalidInputError, NotFoundError
from shared.schemas.jobs import JobRecord, JobState, utcnow
from shared.storage.base import ObjectNotFoundError, ObjectStore

log = logging.getLogger(__name__)

JOBS_PREFIX = "jobs/"
LIVE_PREFIX = f"{JOBS_PREFIX}live/"
LIVE_BUILT = f"{JOBS_PREFIX}live.built"
LIVE_STATES = frozenset({JobState.PENDING, JobState.RUNNING})
DAYS_PREFIX = f"{JOBS_PREFIX}days/"
DAY_IDS_PREFIX = f"{JOBS_PREFIX}day-ids/"
DAY_IDS_BUILT = f"{JOBS_PREFIX}day-ids.built"
_DAY = re.compile(r"^\d{8}T")  # ids start with their UTC creation day (new_job_id)


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
        self._marked: set[str] = set()  # live markers this instance has written
        self._index_ready = False
        self._days_marked: set[str] = set()  # day markers this instance has written
        self._ids_marked: set[str] = set()  # day-id markers this instance has written
        self._days_ready = False

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
        """Write the record durably; a terminal one only after everything written before it
        (the job's output) is durable too (``ObjectStore.sync``)."""
        record.updated_at = utcnow()
        if record.terminal:
            self.store.sync()
        key = self.record_key(record.id)
        self.store.put_bytes(
            key, record.model_dump_json(indent=1).encode(), content_type="application/json"
        )
        self.store.sync([key])
        self._index(record)
        return record

    def _index(self, record: JobRecord) -> None:
        if _DAY.match(record.id):
            self._mark_day(record.id)
        if record.terminal:
            self.store.delete(f"{LIVE_PREFIX}{record.id}")
            self._marked.discard(record.id)
        elif record.id not in self._marked:  # progress saves do not rewrite the marker
            self.store.put_bytes(f"{LIVE_PREFIX}{record.id}", b"")
            self._marked.add(record.id)

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
        self,
        *,
        kind: str | None = None,
        state: JobState | None = None,
        limit: int = 100,
        before: str | None = None,
    ) -> list[JobRecord]:
        """Newest first, at most ``limit``, only jobs older than the id ``before`` if given.

        PENDING and RUNNING come from the live index; other listings read records newest
        first until the page is full (one listing of keys, then only the records shown,
        plus those a ``kind`` or ``state`` filter skips).
        """
        if state in LIVE_STATES:
            found = [r for r in self.live() if r.state == state]
            found = [r for r in found if (kind is None or r.kind == kind)]
            return [r for r in found if before is None or r.id < before][:limit]
        records: list[JobRecord] = []
        for job_id in self._ids_newest_first(before):
            record = self._read(job_id)
            if record is None:
                continue
            if (kind is None or record.kind == kind) and (state is None or record.state == state):
                records.append(record)
            if len(records) >= limit:
                break
        return records

    def live(self) -> builtins.list[JobRecord]:
        """Every PENDING or RUNNING job, newest first, read through the live index."""
        self._ensure_live_index()
        records = []
        for key in self.store.list(LIVE_PREFIX):
            job_id = key[len(LIVE_PREFIX) :]
            record = self._read(job_id)
            if record is None or record.terminal:  # a marker its record outlived
                self.store.delete(key)
                continue
            records.append(record)
        return sorted(records, key=lambda r: r.id, reverse=True)

    def _ensure_live_index(self) -> None:
        if self._index_ready or self.store.exists(LIVE_BUILT):
            self._index_ready = True
            return
        log.info("building the live-job index from the job records (once per store)")
        for job_id in self._ids_newest_first(None):
            record = self._read(job_id)
            if record is not None and not record.terminal:
                self.store.put_bytes(f"{LIVE_PREFIX}{job_id}", b"")
        self.store.put_bytes(LIVE_BUILT, utcnow().isoformat().encode())
        self._index_ready = True

    def _ids_newest_first(self, before: str | None) -> Iterator[str]:
        """Job ids newest first, lazily, one day (a key prefix) at a time over the days that
        hold jobs (``jobs/days/<YYYYMMDD>``): a page lists the days it shows, not the
        whole history."""
        first = before[:8] if before and _DAY.match(before) else None
        for day in sorted(self._days(), reverse=True):
            if first is not None and day > first:
                continue
            marker = f"{DAY_IDS_PREFIX}{day}/"
            ids = [k[len(marker) :] for k in self.store.list(marker)]
            yield from sorted((i for i in ids if before is None or i < before), reverse=True)

    def _ids_of(self, prefix: str) -> builtins.list[str]:
        suffix = "/job.json"
        return [k[len(JOBS_PREFIX) : -len(suffix)] for k in self.store.list(prefix)
                if k.endswith(suffix)]  # fmt: skip

    def _days(self) -> builtins.list[str]:
        """Days that hold jobs; a store without the day index gets it once from its keys."""
        if not (self._days_ready or self.store.exists(DAY_IDS_BUILT)):
            log.info("building the day index from the job records (once per store)")
            for job_id in self._ids_of(JOBS_PREFIX):
                if _DAY.match(job_id):
                    self._mark_day(job_id)
            self.store.put_bytes(DAY_IDS_BUILT, utcnow().isoformat().encode())
        self._days_ready = True
        return [k[len(DAYS_PREFIX) :] for k in self.store.list(DAYS_PREFIX)]

    def _read(self, job_id: str) -> JobRecord | None:
        try:
            return JobRecord.model_validate_json(self.store.get_bytes(self.record_key(job_id)))
        except (ObjectNotFoundError, ValueError):
            log.warning("skipping unreadable job record %s", job_id)
            return None

    def _mark_day(self, job_id: str) -> None:
        """The job's day marker and its own marker under that day (each once per instance)."""
        day = job_id[:8]
        if day not in self._days_marked:
            self.store.put_bytes(f"{DAYS_PREFIX}{day}", b"")
            self._days_marked.add(day)
        if job_id not in self._ids_marked:
            self.store.put_bytes(f"{DAY_IDS_PREFIX}{day}/{job_id}", b"")
            self._ids_marked.add(job_id)

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
        """Write a checkpoint durably, after what the job wrote before it (which it may
        name) is durable (``ObjectStore.sync``)."""
        key = self.checkpoint_key(job_id, name)
        self.store.sync()
        self.store.put_bytes(key, data)
        self.store.sync([key])

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
