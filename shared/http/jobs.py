"""``/v1/jobs`` routes shared by every service that runs jobs: list, show, cancel."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request

from shared.http.deps import state_object
from shared.jobs.store import JobStore
from shared.schemas.jobs import JobRecord, JobState


def _jobs(request: Request) -> JobStore:
    store: JobStore = state_object(request, "jobs")
    return store


JobsDep = Annotated[JobStore, Depends(_jobs)]


def jobs_router() -> APIRouter:
    """Routes reading durable job records; they work while the broker is down."""
    router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

    @router.get("", response_model=list[JobRecord])
    def list_jobs(
        jobs: JobsDep,
        kind: str | None = None,
        state: JobState | None = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> list[JobRecord]:
        """List jobs, newest first."""
        return jobs.list(kind=kind, state=state, limit=limit)

    @router.get("/{job_id}", response_model=JobRecord)
    def get_job(job_id: str, jobs: JobsDep) -> JobRecord:
        """One job record: state, progress, metrics, error, artifacts."""
        return jobs.get(job_id)

    @router.post("/{job_id}/cancel", response_model=JobRecord, status_code=202)
    def cancel_job(job_id: str, jobs: JobsDep) -> JobRecord:
        """Ask a job to stop at its next step boundary (cooperative, never a kill)."""
        return jobs.request_cancel(job_id)

    return router
