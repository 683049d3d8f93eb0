"""Jobs through real Celery worker processes on a real redis-server and a real S3 server."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.jobs.celery_app import make_celery
from shared.jobs.producer import submit_job
from shared.jobs.store import JobStore
from shared.schemas.jobs import JobRecord, JobState, Queue, TaskName
from shared.storage.artifacts import ArtifactStore
from shared.storage.factory import create_store
from tests.integration.suite import SuiteEnv, start_api, start_worker, suite_env, wait_for
from tests.servers import ServerHandle, start_moto_s3

pytestmark = pytest.mark.timeout(240)


@pytest.fixture
def senv(tmp_path: Path, redis_server: ServerHandle, s3_server: ServerHandle) -> SuiteEnv:
    return suite_env(
        tmp_path, redis_url=f"redis://127.0.0.1:{redis_server.port}/0", s3_url=s3_server.url
    )


@pytest.fixture
def jobs(senv: SuiteEnv) -> JobStore:
    return JobStore(create_store(senv.settings))


def _submit(senv: SuiteEnv, jobs: JobStore, steps: int, step_s: float) -> JobRecord:
    return submit_job(
        make_celery(senv.settings),
        jobs,
        kind="selftest",
        task_name=TaskName.SELFTEST,
        queue=Queue.DEFAULT,
        params={"steps": steps, "step_s": step_s},
    )


def _state(jobs: JobStore, job_id: str) -> JobRecord:
    return jobs.get(job_id)


def test_round_trip_reports_progress_and_publishes(
    senv: SuiteEnv, jobs: JobStore, tmp_path: Path
) -> None:
    # given a worker
    worker = start_worker(senv, tmp_path, ["default"], "w1")
    try:
        # when a job is submitted
        record = _submit(senv, jobs, steps=4, step_s=0.3)
        wait_for(
            lambda: _state(jobs, record.id).state == JobState.SUCCEEDED,
            90,
            f"job did not finish:\n{worker.tail()}",
        )
    finally:
        worker.stop()
    # then
    done = _state(jobs, record.id)
    assert done.progress == 100.0
    assert done.metrics["step"] == 4
    assert done.artifacts == [f"selftest-{record.id}:{record.id}"]
    assert ArtifactStore(jobs.store).latest(f"selftest-{record.id}") is not None


def test_cancel_stops_a_running_job(senv: SuiteEnv, jobs: JobStore, tmp_path: Path) -> None:
    worker = start_worker(senv, tmp_path, ["default"], "w1")
    try:
        record = _submit(senv, jobs, steps=50, step_s=0.3)
        wait_for(lambda: _state(jobs, record.id).progress >= 4, 90, worker.tail())
        # when
        jobs.request_cancel(record.id)
        wait_for(lambda: _state(jobs, record.id).terminal, 60, worker.tail())
    finally:
        worker.stop()
    # then
    final = _state(jobs, record.id)
    assert final.state == JobState.CANCELED
    assert final.progress < 100
    assert ArtifactStore(jobs.store).versions(f"selftest-{record.id}") == []


def test_worker_killed_mid_job_resumes_from_checkpoint_and_publishes_once(
    senv: SuiteEnv, jobs: JobStore, tmp_path: Path
) -> None:
    # given a job running on worker 1
    first = start_worker(senv, tmp_path, ["default"], "w1")
    record = _submit(senv, jobs, steps=12, step_s=0.4)
    try:
        wait_for(lambda: _state(jobs, record.id).progress >= 25, 90, first.tail())
    finally:
        # when worker 1 dies without any chance to clean up
        first.kill()
    killed_at = _state(jobs, record.id)
    assert killed_at.state == JobState.RUNNING
    second = start_worker(senv, tmp_path, ["default"], "w2")
    try:
        wait_for(
            lambda: _state(jobs, record.id).state == JobState.SUCCEEDED,
            120,
            f"not resumed:\n{second.tail()}",
        )
    finally:
        second.stop()
    # then it resumed (not restarted) on worker 2 and published exactly once
    final = _state(jobs, record.id)
    executed = final.outputs["executed"]
    assert final.resumed >= 1
    assert final.worker == "w2@it"
    assert sorted(set(executed)) == list(range(12))
    assert len(executed) - len(set(executed)) <= 1  # at most the step in flight re-runs
    assert executed.count(0) == 1
    assert ArtifactStore(jobs.store).versions(f"selftest-{record.id}") == [record.id]


@pytest.fixture
def own_s3() -> Iterator[ServerHandle]:
    with start_moto_s3(allow_external=False) as server:
        yield server


def _lower(items: object) -> dict[str, str]:
    return {str(k).lower(): str(v) for k, v in items}  # type: ignore[attr-defined]


def _get(url: str) -> tuple[int, dict[str, str], dict[str, object]]:
    try:
        with urllib.request.urlopen(url, timeout=20) as response:
            return response.status, _lower(response.headers.items()), json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, _lower(err.headers.items()), json.loads(err.read())


def test_s3_outage_gives_503_with_retry_hint_then_recovers(
    tmp_path: Path, redis_server: ServerHandle, own_s3: ServerHandle
) -> None:
    # given an API on a dedicated S3 server
    senv = suite_env(
        tmp_path, redis_url=f"redis://127.0.0.1:{redis_server.port}/0", s3_url=own_s3.url
    )
    api, url = start_api(senv, tmp_path, "pretrain")
    try:
        assert _get(f"{url}/v1/jobs")[0] == 200
        # when the S3 server stops mid-use
        own_s3.stop()
        status, headers, body = _get(f"{url}/v1/jobs")
        ready_status = _get(f"{url}/readyz")[0]
        # then a clear 503 with a retry hint, and the process keeps serving
        assert status == 503
        assert body["code"] == "storage_unavailable"
        assert int(headers["retry-after"]) >= 1
        assert ready_status == 503
        # when it comes back
        own_s3.restart()
        wait_for(lambda: _get(f"{url}/v1/jobs")[0] == 200, 30, api.tail())
        assert _get(f"{url}/readyz")[0] == 200
    finally:
        api.stop()
