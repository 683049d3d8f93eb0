"""Pipelines in the object store (``pipelines/<id>/``): the durable record and the report.

The record at ``pipelines/<id>/pipeline.json`` is the source of truth, like a job record:
every step names the job it ran (on which service), its state, progress and the outputs the
next steps read. A driver that dies loses nothing; the next one reads the record and goes on.
``pipelines/running/<id>`` (one empty marker per running pipeline) indexes the running ones,
so a driver tick reads those records only, not every pipeline ever run.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, Field

from services.pipeline.params import PipelineRequest
from shared.errors import NotFoundError
from shared.schemas.jobs import utcnow
from shared.storage.base import ObjectNotFoundError, ObjectStore

PREFIX = "pipelines/"
RECORD_FILE = "pipeline.json"
REPORT_FILE = "report.html"
# A separate object, so a driver saving the record it holds never overwrites a cancel.
CANCEL_FILE = "cancel"
# One object per pipeline, not one shared list: replicas never overwrite each other's entries.
RUNNING_PREFIX = f"{PREFIX}running/"


class StepState(StrEnum):
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELED = "CANCELED"
    SKIPPED = "SKIPPED"


class PipelineState(StrEnum):
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELED = "CANCELED"


class StepRecord(BaseModel):
    """One step: the job (or call) it made and what it produced."""

    name: str
    service: str
    state: StepState = StepState.PENDING
    job_id: str | None = None
    progress: float = Field(0.0, ge=0, le=100)
    message: str = ""
    outputs: dict[str, Any] = Field(default_factory=dict)
    error: str | None = None
    error_code: str | None = None
    attempts: int = 0
    started_at: datetime | None = None
    finished_at: datetime | None = None

    @property
    def done(self) -> bool:
        return self.state in (StepState.SUCCEEDED, StepState.SKIPPED)


class PipelineRecord(BaseModel):
    """The durable record of one pipeline."""

    id: str
    request: PipelineRequest
    state: PipelineState = PipelineState.RUNNING
    steps: list[StepRecord]
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)
    finished_at: datetime | None = None
    cancel_requested: bool = False
    driver: str | None = None
    driver_heartbeat: datetime | None = None
    report_key: str | None = None
    error: str | None = None

    @property
    def current(self) -> StepRecord | None:
        """The first step not done yet, None when all are."""
        return next((s for s in self.steps if not s.done), None)

    @property
    def progress(self) -> float:
        """Share of the steps done, counting the running one's own progress."""
        if not self.steps:
            return 100.0
        done = sum(1.0 if s.done else s.progress / 100.0 for s in self.steps)
        return round(100.0 * done / len(self.steps), 1)

    def step(self, name: str) -> StepRecord:
        """The step called ``name`` (KeyError if the plan has none)."""
        for step in self.steps:
            if step.name == name:
                return step
        raise KeyError(name)

    def has_step(self, name: str) -> bool:
        return any(s.name == name for s in self.steps)


class PipelineSummary(BaseModel):
    """A pipeline in listings."""

    id: str
    name: str
    state: PipelineState
    progress: float
    current_step: str | None
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, record: PipelineRecord) -> PipelineSummary:
        current = record.current
        return cls(
            id=record.id,
            name=record.request.name,
            state=record.state,
            progress=record.progress,
            current_step=current.name if current else None,
            created_at=record.created_at,
            updated_at=record.updated_at,
        )


class PipelineStore:
    """Reads and writes ``pipelines/<id>/pipeline.json`` (whole-object writes)."""

    def __init__(self, store: ObjectStore) -> None:
        self.store = store

    @staticmethod
    def key(pipeline_id: str, name: str = RECORD_FILE) -> str:
        return f"{PREFIX}{pipeline_id}/{name}"

    def save(self, record: PipelineRecord) -> PipelineRecord:
        """Write the record, then its entry in the running index (so a marker has a record)."""
        record.updated_at = utcnow()
        data = record.model_dump_json(indent=2).encode()
        self.store.put_bytes(self.key(record.id), data, "application/json")
        if record.state is PipelineState.RUNNING:
            self._mark_running(record.id)
        else:
            self.store.delete(f"{RUNNING_PREFIX}{record.id}")
        return record

    def get(self, pipeline_id: str) -> PipelineRecord:
        """Raises ``NotFoundError`` (code ``pipeline_not_found``) for an unknown id."""
        try:
            data = self.store.get_bytes(self.key(pipeline_id))
        except ObjectNotFoundError as exc:
            raise NotFoundError(f"no pipeline {pipeline_id!r}", code="pipeline_not_found") from exc
        return PipelineRecord.model_validate_json(data)

    def ids(self) -> list[str]:
        """Every pipeline id, newest first (ids start with their UTC creation time)."""
        suffix = f"/{RECORD_FILE}"
        keys = [k for k in self.store.list(PREFIX) if k.endswith(suffix)]
        return sorted((k[len(PREFIX) : -len(suffix)] for k in keys), reverse=True)

    def running_ids(self) -> list[str]:
        """Ids in the running index, newest first."""
        keys = self.store.list(RUNNING_PREFIX)
        return sorted((k[len(RUNNING_PREFIX) :] for k in keys), reverse=True)

    def index_running(self) -> int:
        """Add every running pipeline to the index (one full scan); returns how many run.

        Covers records written before the index existed and a crash between a record and its
        marker. It only adds: removing could race a resume saved on another replica.
        """
        running = [r.id for r in map(self.get, self.ids()) if r.state is PipelineState.RUNNING]
        for pipeline_id in running:
            self._mark_running(pipeline_id)
        return len(running)

    def unindex(self, pipeline_id: str) -> None:
        """Drop a pipeline found not running from the index, unless a resume has just run it.

        The marker goes first and the record is read after, so a resume saved in between
        (record, then marker) always leaves its marker in place.
        """
        self.store.delete(f"{RUNNING_PREFIX}{pipeline_id}")
        try:
            running = self.get(pipeline_id).state is PipelineState.RUNNING
        except NotFoundError:
            return
        if running:
            self._mark_running(pipeline_id)

    def _mark_running(self, pipeline_id: str) -> None:
        self.store.put_bytes(f"{RUNNING_PREFIX}{pipeline_id}", b"1", "text/plain")

    def list(self, limit: int = 50, before: str | None = None) -> list[PipelineRecord]:
        """Newest first, at most ``limit``, only pipelines older than the id ``before``: one
        listing of keys, then only the records on the page."""
        ids = [i for i in self.ids() if before is None or i < before]
        return [self.get(i) for i in ids[:limit]]

    def request_cancel(self, pipeline_id: str) -> None:
        self.store.put_bytes(self.key(pipeline_id, CANCEL_FILE), b"1", "text/plain")

    def cancel_requested(self, pipeline_id: str) -> bool:
        return self.store.exists(self.key(pipeline_id, CANCEL_FILE))

    def clear_cancel(self, pipeline_id: str) -> None:
        self.store.delete(self.key(pipeline_id, CANCEL_FILE))

    def put_report(self, pipeline_id: str, html: bytes) -> str:
        key = self.key(pipeline_id, REPORT_FILE)
        self.store.put_bytes(key, html, "text/html; charset=utf-8")
        return key

    def report(self, pipeline_id: str) -> bytes:
        """Raises ``NotFoundError`` (code ``report_not_ready``) until the report is written."""
        try:
            return self.store.get_bytes(self.key(pipeline_id, REPORT_FILE))
        except ObjectNotFoundError as exc:
            raise NotFoundError(
                f"pipeline {pipeline_id!r} has no report yet", code="report_not_ready"
            ) from exc
