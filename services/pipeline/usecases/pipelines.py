"""Use cases of the pipeline service: create, cancel, resume, and advance one tick.

A pipeline never holds a worker: ``advance`` looks at the current step once (submit its job,
read its job's record, or make its call) and returns; the driver calls it again a few
seconds later. Every transition is saved before the next call, so a driver that dies
resumes from the record. One window stays open: a driver killed after a service accepted a
job but before the record was saved submits that step again on takeover (the first job
then runs unobserved; the pipeline follows only the job id it recorded).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from services.pipeline.params import PipelineRequest
from services.pipeline.stores.pipelines import (
    PipelineRecord,
    PipelineState,
    PipelineStore,
    StepRecord,
    StepState,
)
from services.pipeline.usecases.clients import ServiceClient
from services.pipeline.usecases.common import StepCallError
from services.pipeline.usecases.steps import SPECS, plan
from shared.errors import ConflictError, InvalidInputError
from shared.jobs.store import new_job_id
from shared.schemas.jobs import utcnow
from shared.storage.base import ObjectStore

log = logging.getLogger(__name__)

Reporter = Callable[[PipelineRecord], str]
_JOB_END = {"SUCCEEDED", "FAILED", "CANCELED"}
_MAX_STEPS_PER_TICK = 20
_LOCKS = tuple(threading.Lock() for _ in range(64))


def check_request(request: PipelineRequest, store: ObjectStore) -> None:
    """What can be known before any job runs: prefixes hold objects, maps are named.

    Raises:
        InvalidInputError: ``maps_prefix_missing``, ``source_empty``.
    """
    if request.maps == "provided" and request.maps_prefix is None:
        raise InvalidInputError("maps=provided needs maps_prefix", code="maps_prefix_missing")
    prefixes = [request.unlabelled_prefix]
    if request.labelled.prefix is not None:
        prefixes.append(request.labelled.prefix)
    if request.maps == "provided" and request.maps_prefix:
        prefixes.append(request.maps_prefix)
    for prefix in prefixes:
        if not store.list(prefix):
            raise InvalidInputError(f"nothing is stored under {prefix!r}", code="source_empty")


def create_pipeline(pipelines: PipelineStore, request: PipelineRequest) -> PipelineRecord:
    """Check and save a new pipeline; the driver starts it on its next tick."""
    check_request(request, pipelines.store)
    record = PipelineRecord(id=new_job_id(), request=request, steps=plan(request))
    return pipelines.save(record)


def cancel_pipeline(pipelines: PipelineStore, pipeline_id: str) -> PipelineRecord:
    """Flag a cancel; the driver cancels the running step's job and stops the pipeline."""
    record = pipelines.get(pipeline_id)
    if record.state is PipelineState.RUNNING:
        pipelines.request_cancel(pipeline_id)
        record.cancel_requested = True
    return record


def resume_pipeline(pipelines: PipelineStore, pipeline_id: str) -> PipelineRecord:
    """Run a failed or canceled pipeline again from the step where it stopped.

    Raises:
        ConflictError: ``pipeline_not_resumable`` for a running or finished pipeline.
    """
    with _record_lock(pipeline_id):  # read, check and write as one: one resume of many wins
        record = pipelines.get(pipeline_id)
        if record.state not in (PipelineState.FAILED, PipelineState.CANCELED):
            raise ConflictError(
                f"pipeline {pipeline_id} is {record.state.value}; only FAILED or CANCELED resume",
                code="pipeline_not_resumable",
            )
        step = record.current
        if step is not None:
            _reset(step)
        pipelines.clear_cancel(pipeline_id)
        record.state, record.cancel_requested = PipelineState.RUNNING, False
        record.error, record.finished_at = None, None
        return pipelines.save(record)


def _record_lock(pipeline_id: str) -> threading.Lock:
    """The lock that serialises read-check-write of one pipeline's record in this process.

    The pipeline API runs as one process (one replica in compose and k8s: its driver owns
    the running pipelines), so a process lock makes a transition atomic; the object store
    has no conditional write to do it across processes. Locks are striped (a fixed set,
    chosen by the id's hash), so memory does not grow with the number of pipelines.
    """
    return _LOCKS[hash(pipeline_id) % len(_LOCKS)]


def _reset(step: StepRecord) -> None:
    step.state, step.job_id, step.progress = StepState.PENDING, None, 0.0
    step.error = step.error_code = None
    step.message = f"resumed (attempt {step.attempts + 1})"


def advance(
    record: PipelineRecord,
    client: ServiceClient,
    save: Callable[[PipelineRecord], PipelineRecord],
    reporter: Reporter,
) -> PipelineRecord:
    """Move a running pipeline as far as it can go without waiting; saves every change."""
    for _ in range(_MAX_STEPS_PER_TICK):
        if record.state is not PipelineState.RUNNING:
            return record
        step = record.current
        if step is None:
            return save(_finish(record, PipelineState.SUCCEEDED))
        if record.cancel_requested:
            return save(_cancel(record, step, client))
        before = (step.state, step.progress, step.message)
        try:
            _tick_step(record, step, client, reporter)
        except StepCallError as exc:
            if exc.transient:
                step.message = f"waiting: {exc.message}"
                return save(record)
            _fail(record, step, exc.message, exc.code)
        if step.state in (StepState.PENDING, StepState.RUNNING):
            # still waiting on the step's job: save only what changed and stop this tick
            return save(record) if before != (step.state, step.progress, step.message) else record
        save(record)
    return record


def _tick_step(
    record: PipelineRecord, step: StepRecord, client: ServiceClient, reporter: Reporter
) -> None:
    spec = SPECS[step.name]
    if spec.kind == "local":
        _start(step)
        _succeed(step, {})
        # The report shows the record as it stands once this step is done.
        final = record.model_copy(deep=True)
        if final.current is None:
            _finish(final, PipelineState.SUCCEEDED)
        step.outputs = {"report_key": reporter(final)}
        record.report_key = step.outputs["report_key"]
        return
    if step.state is StepState.PENDING:
        call = spec.build(record)
        if call is None:
            step.state, step.message = StepState.SKIPPED, "not needed for this pipeline"
            return
        answer = client.send(call)  # a transient failure leaves the step PENDING
        _start(step)
        if spec.kind == "call":
            _succeed(step, spec.collect(answer))
        else:
            step.job_id, step.message = str(answer["id"]), f"submitted job {answer['id']}"
        return
    assert step.job_id is not None  # a RUNNING job step always has its job id saved
    _follow_job(record, step, client.job(step.service, step.job_id))


def _follow_job(record: PipelineRecord, step: StepRecord, job: dict[str, Any]) -> None:
    step.progress = float(job.get("progress") or 0.0)
    step.message = str(job.get("message") or "")
    state = str(job.get("state"))
    if state not in _JOB_END:
        return
    if state == "SUCCEEDED":
        _succeed(step, SPECS[step.name].collect(job))
        return
    code = str(job.get("error_code") or ("job_canceled" if state == "CANCELED" else "job_failed"))
    _fail(record, step, f"job {step.job_id} {state}: {job.get('error') or ''}".strip(), code)


def _start(step: StepRecord) -> None:
    step.state, step.started_at, step.attempts = StepState.RUNNING, utcnow(), step.attempts + 1


def _succeed(step: StepRecord, outputs: dict[str, Any]) -> None:
    step.state, step.progress, step.outputs = StepState.SUCCEEDED, 100.0, dict(outputs)
    step.finished_at = utcnow()
    step.message = "done"


def _fail(record: PipelineRecord, step: StepRecord, message: str, code: str) -> None:
    step.state, step.error, step.error_code = StepState.FAILED, message, code
    step.finished_at = utcnow()
    record.error = f"step {step.name} failed: {message}"
    _finish(record, PipelineState.FAILED)


def _cancel(record: PipelineRecord, step: StepRecord, client: ServiceClient) -> PipelineRecord:
    if step.state is StepState.RUNNING and step.job_id is not None:
        try:
            client.cancel(step.service, step.job_id)
        except StepCallError as exc:  # the job ends on its own; the pipeline stops anyway
            log.warning("pipeline %s: cancel of job %s failed: %s", record.id, step.job_id, exc)
    step.state, step.finished_at, step.message = StepState.CANCELED, utcnow(), "canceled"
    return _finish(record, PipelineState.CANCELED)


def _finish(record: PipelineRecord, state: PipelineState) -> PipelineRecord:
    record.state, record.finished_at = state, utcnow()
    return record
