"""Pipeline records and reports in the object store (``pipelines/<id>/``)."""

from __future__ import annotations

from services.pipeline.records import PipelineRecord
from shared.errors import NotFoundError
from shared.schemas.jobs import utcnow
from shared.storage.base import ObjectNotFoundError, ObjectStore

PREFIX = "pipelines/"
RECORD_FILE = "pipeline.json"
REPORT_FILE = "report.html"
# A separate object, so a driver saving the record it holds never overwrites a cancel.
CANCEL_FILE = "cancel"


class PipelineStore:
    """Reads and writes ``pipelines/<id>/pipeline.json`` (whole-object writes)."""

    def __init__(self, store: ObjectStore) -> None:
        self.store = store

    @staticmethod
    def key(pipeline_id: str, name: str = RECORD_FILE) -> str:
        return f"{PREFIX}{pipeline_id}/{name}"

    def save(self, record: PipelineRecord) -> PipelineRecord:
        record.updated_at = utcnow()
        data = record.model_dump_json(indent=2).encode()
        self.store.put_bytes(self.key(record.id), data, "application/json")
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

    def list(self, limit: int = 50) -> list[PipelineRecord]:
        return [self.get(i) for i in self.ids()[:limit]]

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
