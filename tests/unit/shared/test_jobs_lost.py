"""Lost queued work (issue 15, finding 1): PENDING jobs re-published, unreadable records
retried instead of acked, stuck jobs counted and flagged."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from celery.exceptions import Retry
from prometheus_client import CollectorRegistry, generate_latest
from typer.testing import CliRunner

from shared.config import JobSettings
from shared.errors import UnavailableError
from shared.jobs import worker as worker_module
from shared.jobs.reaper import pending_wait_s, reap_once, stuck_reason
from shared.jobs.runner import RecordUnavailableError, RunnerOptions, run_job
from shared.jobs.selftest import run_selftest
from shared.jobs.store import JobStore
from shared.jobs.stuck import StuckJobsCollector
from shared.schemas.jobs import JobState, utcnow
from shared.storage.filesystem import FileObjectStore

OPTS = RunnerOptions(worker="w1", lease_ttl_s=30, heartbeat_s=5, max_attempts=3)


@pytest.fixture
def jobs(tmp_path: Path) -> JobStore:
    return JobStore(FileObjectStore(tmp_path / "store"))


class _Sender:
    def __init__(self) -> None:
        self.sent: list[str] = []

    def send_task(self, name: str, args: list[str] | None = None, **options: object) -> None:
        self.sent.extend(args or [])


def _pending(jobs: JobStore, age_s: float) -> str:
    record = jobs.create(kind="selftest", task_name="jobs.selftest", queue="default", params={})
    return jobs.update(record.id, created_at=utcnow() - timedelta(seconds=age_s)).id


def test_unclaimed_pending_jobs_older_than_the_bound_are_republished(jobs: JobStore) -> None:
    # given a PENDING job whose message was lost long ago and one just submitted
    old, fresh = _pending(jobs, 700), _pending(jobs, 1)
    sender = _Sender()
    # when the reaper runs with a 600 s bound
    first = reap_once(sender, jobs, 60, {"default"}, pending_after_s=600)
    # then only the old one is re-sent, and not again before its doubled wait
    assert first == [old]
    assert sender.sent == [old]
    assert jobs.get(old).requeues == 1
    assert reap_once(sender, jobs, 60, {"default"}, pending_after_s=600) == []
    assert fresh not in sender.sent


def test_the_pending_wait_doubles_per_republish_and_is_capped(jobs: JobStore) -> None:
    record = jobs.get(_pending(jobs, 0))
    waits = []
    for n in (0, 1, 2, 50):
        record.requeues = n
        waits.append(pending_wait_s(record, 10))
    assert waits == [10, 20, 40, 640]


def test_a_duplicate_of_a_republished_job_runs_it_once(jobs: JobStore) -> None:
    # given a lost PENDING job re-published, and the lost message turning up after all
    job_id = _pending(jobs, 700)
    reap_once(_Sender(), jobs, 60, {"default"}, pending_after_s=600)
    runs: list[str] = []

    def handler(ctx: Any) -> list[str]:
        runs.append(ctx.job_id)
        return []

    # when both deliveries arrive, then the job runs once
    run_job(job_id, jobs, handler, OPTS)
    run_job(job_id, jobs, handler, OPTS)
    assert runs == [job_id]
    assert jobs.get(job_id).attempts == 1


class _HangingStore(FileObjectStore):
    down = True

    def get_bytes(self, key: str) -> bytes:
        if self.down:
            raise UnavailableError("object store timed out", retry_after_s=2)
        return super().get_bytes(key)


def test_a_record_that_cannot_be_read_raises_retryable_and_changes_nothing(
    tmp_path: Path,
) -> None:
    # given a job whose record the store cannot serve right now
    store = _HangingStore(tmp_path / "store")
    jobs = JobStore(store)
    store.down = False
    job_id = _pending(jobs, 0)
    store.down = True
    # when a delivery arrives, then the runner says "retry", not "done"
    with pytest.raises(RecordUnavailableError):
        run_job(job_id, jobs, run_selftest, OPTS)
    store.down = False
    assert jobs.get(job_id).state == JobState.PENDING
    assert run_job(job_id, jobs, run_selftest, OPTS).state == JobState.SUCCEEDED


class _Request:
    hostname = "w1@test"
    retries = 2


class _Task:
    request = _Request()

    def __init__(self) -> None:
        self.retried: dict[str, Any] = {}

    def retry(self, **kwargs: Any) -> Retry:
        self.retried = kwargs
        return Retry("retry", when=kwargs.get("countdown"))


def test_the_worker_retries_with_a_growing_delay_when_the_record_is_unavailable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given a worker whose store is down
    store = _HangingStore(tmp_path / "store")
    monkeypatch.setattr(worker_module, "worker_jobs", lambda: JobStore(store))
    task = _Task()
    # when the task runs, then it asks Celery for a retry (a new message), never returns
    with pytest.raises(Retry):
        worker_module.run_in_worker(task, "20260101T000000-abcdef12", run_selftest)  # type: ignore[arg-type]
    first = worker_module.get_common_settings().jobs.record_retry_s
    assert task.retried["countdown"] == first * 4
    assert task.retried["max_retries"] is None
    assert worker_module.retry_delay_s(5, 30) == 300


def test_stuck_jobs_are_flagged_by_reason(jobs: JobStore) -> None:
    # given a stale RUNNING job, an old PENDING one and a fresh one
    stale = jobs.update(
        _pending(jobs, 0), state=JobState.RUNNING, heartbeat_at=utcnow() - timedelta(seconds=300)
    )
    old, fresh = jobs.get(_pending(jobs, 1000)), jobs.get(_pending(jobs, 5))
    kwargs = {"lease_ttl_s": 60.0, "pending_after_s": 600.0}
    # then
    assert "RUNNING without heartbeat" in (stuck_reason(stale, **kwargs) or "")
    assert "PENDING unclaimed for 1000 s" in (stuck_reason(old, **kwargs) or "")
    assert stuck_reason(fresh, **kwargs) is None


def test_the_stuck_gauge_counts_per_queue_and_survives_a_store_outage(tmp_path: Path) -> None:
    store = _HangingStore(tmp_path / "store")
    store.down = False
    jobs = JobStore(store)
    _pending(jobs, 1000)
    _pending(jobs, 2000)
    registry = CollectorRegistry()
    collector = StuckJobsCollector(jobs, JobSettings(pending_requeue_s=600), cache_s=0)
    registry.register(collector)
    assert 'agssp_jobs_stuck{queue="default"} 2.0' in generate_latest(registry).decode()
    store.down = True
    text = generate_latest(registry).decode()
    assert "agssp_jobs_stuck" in text
    assert 'queue="default"' not in text


def test_jobs_list_flags_stuck_jobs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from agssp import main

    jobs = JobStore(FileObjectStore(tmp_path / "store"))
    old, fresh = _pending(jobs, 5000), _pending(jobs, 1)
    monkeypatch.setattr(main, "_job_store", lambda: jobs)
    out = CliRunner().invoke(main.app, ["jobs", "list"]).output
    lines = {line.split()[0]: line for line in out.splitlines() if line.strip()}
    assert "STUCK (PENDING unclaimed" in lines[old]
    assert "STUCK" not in lines[fresh]
