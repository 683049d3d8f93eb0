"""Queued jobs are never lost (issue 15, finding 1), with a real redis-server, moto's S3
server and a real Celery worker process.

* Redis restarted empty with a job queued behind a running one: the reaper re-publishes the
  unclaimed PENDING record and both jobs finish exactly once.
* The S3 server hangs (SIGSTOP) as a task starts: the task cannot read its record, retries
  instead of acking, and the job finishes exactly once when S3 answers again.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.jobs.celery_app import make_celery
from shared.jobs.producer import submit_job
from shared.jobs.store import JobStore
from shared.schemas.jobs import JobRecord, JobState, Queue, TaskName
from shared.storage.artifacts import ArtifactStore
from shared.storage.base import ObjectStore
from shared.storage.factory import create_store
from tests.integration.suite import SuiteEnv, start_worker, suite_env, wait_for
from tests.servers import ServerHandle, start_moto_s3, start_redis

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def own_redis() -> Iterator[ServerHandle]:
    with start_redis(allow_external=False) as server:
        yield server


@pytest.fixture
def own_s3() -> Iterator[ServerHandle]:
    with start_moto_s3(allow_external=False) as server:
        yield server


def _submit(senv: SuiteEnv, jobs: JobStore, steps: int, step_s: float) -> JobRecord:
    return submit_job(
        make_celery(senv.settings),
        jobs,
        kind="selftest",
        task_name=TaskName.SELFTEST,
        queue=Queue.DEFAULT,
        params={"steps": steps, "step_s": step_s},
    )


def _safe_state(jobs: JobStore, job_id: str) -> JobState | None:
    try:
        return jobs.get(job_id).state
    except Exception:
        return None


def _assert_ran_once(store: ObjectStore, jobs: JobStore, job_id: str, steps: int) -> None:
    record = jobs.get(job_id)
    assert record.state == JobState.SUCCEEDED, record
    assert record.attempts == 1, record
    assert record.resumed == 0
    assert record.outputs["executed"] == list(range(steps))  # every step once, none twice
    assert ArtifactStore(store).versions(f"selftest-{job_id}") == [job_id]


def test_a_job_queued_when_redis_restarts_empty_is_republished_and_runs_once(
    tmp_path: Path, own_redis: ServerHandle, s3_server: ServerHandle
) -> None:
    # given one worker, a running job and a second one queued behind it in Redis
    senv = suite_env(tmp_path, redis_url=own_redis.url, s3_url=s3_server.url, lease_ttl_s=5)
    senv.env["JOBS_PENDING_REQUEUE_S"] = "6"
    store = create_store(senv.settings)
    jobs = JobStore(store)
    worker = start_worker(senv, tmp_path, ["default"], "w1")
    try:
        first = _submit(senv, jobs, steps=12, step_s=0.5)
        wait_for(lambda: _safe_state(jobs, first.id) == JobState.RUNNING, 60, worker.tail)
        queued = _submit(senv, jobs, steps=2, step_s=0.1)
        # when Redis restarts with nothing in it (the queued message is gone)
        own_redis.restart()
        # then both jobs still finish, each exactly once
        for job_id in (first.id, queued.id):
            wait_for(
                lambda job_id=job_id: _safe_state(jobs, job_id) == JobState.SUCCEEDED,
                90,
                lambda: f"job lost after a Redis restart:\n{worker.tail(60)}",
            )
    finally:
        worker.stop()
    _assert_ran_once(store, jobs, first.id, 12)
    _assert_ran_once(store, jobs, queued.id, 2)
    assert jobs.get(queued.id).requeues >= 1


def test_a_task_that_cannot_read_its_record_retries_and_the_job_runs_once(
    tmp_path: Path, redis_server: ServerHandle, own_s3: ServerHandle
) -> None:
    # given a worker and a job record written while S3 answers; no PENDING re-publish,
    # so only the task's own retry can save the job
    senv = suite_env(
        tmp_path, redis_url=f"redis://127.0.0.1:{redis_server.port}/0", s3_url=own_s3.url
    )
    # A short store patience: past it the claim gives up and the task's retry takes over.
    senv.env.update(
        JOBS_PENDING_REQUEUE_S="3600", JOBS_RECORD_RETRY_S="2", JOBS_STORAGE_PATIENCE_S="3"
    )
    store = create_store(senv.settings)
    jobs = JobStore(store)
    store.ping()
    worker = start_worker(senv, tmp_path, ["default"], "w1")
    assert own_s3.process is not None
    try:
        wait_for(lambda: "ready" in worker.tail(200), 60, worker.tail)
        record = jobs.create(
            kind="selftest",
            task_name=TaskName.SELFTEST,
            queue=Queue.DEFAULT,
            params={"steps": 2, "step_s": 0.1},
        )
        # when S3 hangs as the task starts
        os.kill(own_s3.process.pid, signal.SIGSTOP)
        try:
            make_celery(senv.settings).send_task(
                TaskName.SELFTEST, args=[record.id], queue=Queue.DEFAULT
            )
            wait_for(lambda: "record unavailable" in worker.tail(200), 60, worker.tail)
        finally:
            os.kill(own_s3.process.pid, signal.SIGCONT)
        # then the job finishes once S3 answers again
        wait_for(
            lambda: _safe_state(jobs, record.id) == JobState.SUCCEEDED,
            90,
            lambda: f"job lost after an S3 hang:\n{worker.tail(60)}",
        )
    finally:
        worker.stop()
    _assert_ran_once(store, jobs, record.id, 2)
