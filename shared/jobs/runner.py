"""``run_job``: the state machine around a job handler, independent of Celery.

Delivery semantics: the broker delivers at least once (late acks, redelivery after a lost
worker). The runner turns that into "runs to completion once": a terminal record is never
run again, a live duplicate delivery (fresh heartbeat, other worker) is dropped, and a
delivery that finds a stale RUNNING record takes the job over and the handler resumes from
its checkpoint. Handlers publish with versions derived from the job id, so a resumed job
cannot publish twice.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

from shared.errors import JobCanceledError, SuiteError, UnavailableError
from shared.jobs.context import JobContext
from shared.jobs.store import JobStore, heartbeat_is_fresh
from shared.redact import public_text
from shared.schemas.jobs import JobRecord, JobState, utcnow
from shared.storage.patient import is_transient

log = logging.getLogger(__name__)

Handler = Callable[[JobContext], list[str] | None]


@dataclass(frozen=True)
class RunnerOptions:
    """Timing knobs, normally taken from ``JobSettings``."""

    worker: str
    lease_ttl_s: float = 60.0
    heartbeat_s: float = 10.0
    max_attempts: int = 5
    reraise: tuple[type[BaseException], ...] = ()


class _Heartbeat:
    """Background thread that keeps the record's heartbeat fresh during long steps."""

    def __init__(self, ctx: JobContext, period_s: float) -> None:
        self._ctx, self._period = ctx, period_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="job-heartbeat", daemon=True)

    def __enter__(self) -> _Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=self._period + 5)

    def _run(self) -> None:
        while not self._stop.wait(self._period):
            try:
                self._ctx.heartbeat()
            except Exception:  # the next beat may work; a missed beat is not fatal
                log.warning("heartbeat write failed for job %s", self._ctx.job_id, exc_info=True)


def _should_skip(record: JobRecord, jobs: JobStore, opts: RunnerOptions) -> str | None:
    if record.terminal:
        return f"already {record.state}"
    if (
        record.state == JobState.RUNNING
        and record.worker != opts.worker
        and heartbeat_is_fresh(record, opts.lease_ttl_s)
    ):
        return f"running on live worker {record.worker}"
    return None


def _start(record: JobRecord, jobs: JobStore, opts: RunnerOptions) -> JobRecord:
    if record.state == JobState.RUNNING:
        record.resumed += 1
        record.message = f"resumed after losing worker {record.worker}"
    record.state = JobState.RUNNING
    record.worker = opts.worker
    record.attempts += 1
    record.started_at = record.started_at or utcnow()
    record.heartbeat_at = utcnow()
    return jobs.save(record)


def _finish(
    ctx: JobContext, state: JobState, *, error: str | None = None, code: str | None = None
) -> None:
    record = ctx.record
    # Any key that may start a job reads its record: the full message stays in the log.
    public = public_text(error) if error is not None else None
    record.state, record.error, record.error_code = state, public, code
    record.finished_at = utcnow()
    if state == JobState.SUCCEEDED:
        record.progress = 100.0
    ctx.jobs.save(record)


class RecordUnavailableError(UnavailableError):
    """The job record could not be read or claimed (storage down or hanging).

    Nothing ran; the delivery must be retried, never acked as done (the record stays the
    truth, and the reaper re-publishes it if the retry is lost too).
    """

    code = "job_record_unavailable"


def run_job(job_id: str, jobs: JobStore, handler: Handler, opts: RunnerOptions) -> JobRecord:
    """Run ``handler`` for the job unless the record says it must not run again.

    Raises:
        RecordUnavailableError: the store failed before the job was claimed.
    """
    try:
        claimed = _claim(job_id, jobs, opts)
    except UnavailableError as exc:
        raise RecordUnavailableError(
            f"job {job_id}: record unavailable before start: {exc.message}",
            retry_after_s=exc.retry_after_s,
        ) from exc
    if isinstance(claimed, JobRecord):
        return claimed
    _execute(claimed, handler, opts)
    return claimed.record


def _claim(job_id: str, jobs: JobStore, opts: RunnerOptions) -> JobContext | JobRecord:
    """The context of a claimed (RUNNING) job, or the final record when it must not run."""
    record = jobs.get(job_id)
    reason = _should_skip(record, jobs, opts)
    if reason:
        log.info("job %s not run: %s", job_id, reason)
        return record
    ctx = JobContext(jobs, record)
    if jobs.cancel_requested(job_id):
        _finish(ctx, JobState.CANCELED, error="canceled before it started", code="canceled")
        return ctx.record
    if record.attempts >= opts.max_attempts:
        _finish(
            ctx,
            JobState.FAILED,
            error=f"gave up after {record.attempts} deliveries",
            code="too_many_attempts",
        )
        return ctx.record
    ctx.record = _start(record, jobs, opts)
    return ctx


def _execute(ctx: JobContext, handler: Handler, opts: RunnerOptions) -> None:
    try:
        with _Heartbeat(ctx, opts.heartbeat_s):
            artifacts = handler(ctx)
    except JobCanceledError:
        _finish(ctx, JobState.CANCELED, error="canceled", code="canceled")
    except opts.reraise:
        raise  # e.g. a worker shutdown: leave RUNNING so the job resumes elsewhere
    except UnavailableError as exc:
        if not is_transient(exc):
            log.warning("job %s failed: %s", ctx.job_id, exc.message)
            _finish(ctx, JobState.FAILED, error=exc.message, code=exc.code)
            return
        # An outage outlasted the store's patience: no reason to fail the job. Its record
        # stays RUNNING; with no heartbeat the reaper hands it to a later delivery, which
        # resumes from the last checkpoint (attempts still bound the retries).
        log.warning("job %s: storage unavailable (%s); left RUNNING to resume", ctx.job_id, exc)
    except SuiteError as exc:
        log.warning("job %s failed: %s", ctx.job_id, exc.message)
        _finish(ctx, JobState.FAILED, error=exc.message, code=exc.code)
    except Exception as exc:
        log.exception("job %s crashed", ctx.job_id)
        _finish(ctx, JobState.FAILED, error=f"{type(exc).__name__}: {exc}", code="internal_error")
    else:
        ctx.record.artifacts = list(artifacts or ctx.record.artifacts)
        _finish(ctx, JobState.SUCCEEDED)
