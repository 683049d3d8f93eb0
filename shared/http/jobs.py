"""``/v1/jobs`` routes shared by every service that runs jobs: list, show, cancel."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, Response

from shared.errors import ForbiddenError
from shared.http.auth import request_scopes
from shared.http.scopes import require_scope
from shared.http.state import http_state, jobs_of
from shared.jobs.store import JobStore
from shared.schemas.jobs import JobRecord, JobState, Queue

# The queues whose jobs each service's train key may cancel (kinds belong to queues).
SERVICE_QUEUES: dict[str, frozenset[str]] = {
    "anomaly_map": frozenset({Queue.MAPS.value}),
    "pretrain": frozenset({Queue.PRETRAIN.value}),
    "finetune": frozenset({Queue.FINETUNE.value, Queue.FINETUNE_EXPORTS.value}),
}


def check_cancel_scope(request: Request, record: JobRecord) -> None:
    """Raise ``ForbiddenError`` unless this service owns the job's queue or the key is admin."""
    state = http_state(request.app)
    scopes = request_scopes(request.scope, bool(state.settings.auth.api_keys))
    if scopes is None or "admin" in scopes:
        return
    if record.queue not in SERVICE_QUEUES.get(state.service, frozenset()):
        raise ForbiddenError(
            f"job {record.id} is a {record.kind} job of another service; cancel it there "
            "or with an admin key",
            code="job_of_another_service",
        )


JobsDep = Annotated[JobStore, Depends(jobs_of)]


def jobs_router() -> APIRouter:
    """Routes reading durable job records (scope train); they work while the broker is down."""
    router = APIRouter(prefix="/v1/jobs", tags=["jobs"], dependencies=[require_scope("train")])

    @router.get("", response_model=list[JobRecord])
    def list_jobs(
        jobs: JobsDep,
        response: Response,
        kind: str | None = None,
        state: JobState | None = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        before: Annotated[str | None, Query(max_length=64, pattern=r"^[\w.\-]+$")] = None,
    ) -> list[JobRecord]:
        """List jobs, newest first. A full page sets ``X-Next-Cursor`` to pass as ``before``
        for the next one; PENDING and RUNNING come from the live index (their cost does
        not grow with finished jobs)."""
        page = jobs.list(kind=kind, state=state, limit=limit, before=before)
        if len(page) == limit:
            response.headers["X-Next-Cursor"] = page[-1].id
        return page

    @router.get("/{job_id}", response_model=JobRecord)
    def get_job(job_id: str, jobs: JobsDep) -> JobRecord:
        """One job record: state, progress, metrics, error, artifacts."""
        return jobs.get(job_id)

    @router.post(
        "/{job_id}/cancel",
        response_model=JobRecord,
        status_code=202,
        responses={403: {"description": "the job belongs to another service (admin only)"}},
    )
    def cancel_job(job_id: str, jobs: JobsDep, request: Request) -> JobRecord:
        """Ask a job to stop at its next step boundary (cooperative, never a kill).

        A service cancels the jobs of its own queues; a job of another service (or the
        self-test) needs an admin key.
        """
        check_cancel_scope(request, jobs.get(job_id))
        return jobs.request_cancel(job_id)

    return router
