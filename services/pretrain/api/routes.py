"""Routes of the pretrain API: submit AGBP and pseudo-label jobs, read them back."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from services.pretrain.api.deps import JobsDep, SenderDep
from services.pretrain.api.schemas import PretrainJobRequest, PseudoLabelJobRequest
from services.pretrain.usecases.agbp_jobs import AGBP_KIND, submit_agbp_job
from services.pretrain.usecases.pseudo_label_jobs import PSEUDO_LABELS_KIND, submit_pseudo_label_job
from shared.errors import NotFoundError
from shared.http.scopes import require_scope
from shared.jobs.store import JobStore
from shared.schemas.jobs import JobRecord

_ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"description": "unknown job or start-weights artifact"},
    409: {"description": "out_prefix already holds finished output (code output_exists)"},
    422: {"description": "invalid request (codes: unknown_config_keys, invalid_config, ...)"},
    503: {"description": "storage or job broker unavailable"},
}

router = APIRouter(
    prefix="/v1", tags=["pretrain"], responses=_ERRORS, dependencies=[require_scope("train")]
)


def _job_of_kind(jobs: JobStore, job_id: str, kind: str) -> JobRecord:
    record = jobs.get(job_id)
    if record.kind != kind:
        raise NotFoundError(f"job {job_id!r} is not a {kind} job", code="job_not_found")
    return record


@router.post("/pretrain-jobs", status_code=202, response_model=JobRecord)
def create_pretrain_job(body: PretrainJobRequest, jobs: JobsDep, sender: SenderDep) -> JobRecord:
    """Queue an AGBP backbone pretraining job."""
    return submit_agbp_job(sender, jobs, body)


@router.get("/pretrain-jobs/{job_id}", response_model=JobRecord)
def get_pretrain_job(job_id: str, jobs: JobsDep) -> JobRecord:
    """One AGBP job: state, progress, losses, pairing report, artifact."""
    return _job_of_kind(jobs, job_id, AGBP_KIND)


@router.post("/pseudo-label-jobs", status_code=202, response_model=JobRecord)
def create_pseudo_label_job(
    body: PseudoLabelJobRequest, jobs: JobsDep, sender: SenderDep
) -> JobRecord:
    """Queue a pseudo-defect box job for one category."""
    return submit_pseudo_label_job(sender, jobs, body)


@router.get("/pseudo-label-jobs/{job_id}", response_model=JobRecord)
def get_pseudo_label_job(job_id: str, jobs: JobsDep) -> JobRecord:
    """One pseudo-label job: state, threshold, counts, output keys."""
    return _job_of_kind(jobs, job_id, PSEUDO_LABELS_KIND)
