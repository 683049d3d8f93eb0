"""The job runner's state machine on a local-folder store (no broker needed)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from shared.errors import ConflictError, InvalidInputError
from shared.jobs.context import JobContext
from shared.jobs.reaper import find_orphans, reap_once
from shared.jobs.runner import RunnerOptions, run_job
from shared.jobs.selftest import run_selftest
from shared.jobs.store import JobStore
from shared.schemas.jobs import JobState, utcnow
from shared.storage.artifacts import ArtifactStore
from shared.storage.filesystem import FileObjectStore

OPTS = RunnerOptions(worker="w1", lease_ttl_s=30, heartbeat_s=5, max_attempts=3)


@pytest.fixture
def jobs(tmp_path: Path) -> JobStore:
    return JobStore(FileObjectStore(tmp_path / "store"))


def _submit(jobs: JobStore, **params: object) -> str:
    return jobs.create(
        kind="selftest", task_name="jobs.selftest", queue="default", params=dict(params)
    ).id


def test_successful_job_records_artifact_and_full_progress(jobs: JobStore) -> None:
    # given
    job_id = _submit(jobs, steps=3, step_s=0)
    # when
    record = run_job(job_id, jobs, run_selftest, OPTS)
    # then
    assert record.state == JobState.SUCCEEDED
    assert record.progress == 100.0
    assert record.artifacts == [f"selftest-{job_id}:{job_id}"]
    assert jobs.get(job_id).outputs["executed"] == [0, 1, 2]


def test_terminal_job_is_not_run_again(jobs: JobStore) -> None:
    # given a finished job
    job_id = _submit(jobs, steps=1, step_s=0)
    run_job(job_id, jobs, run_selftest, OPTS)
    calls: list[str] = []
    # when it is delivered again
    record = run_job(job_id, jobs, lambda ctx: calls.append("ran") or [], OPTS)
    # then
    assert calls == []
    assert record.state == JobState.SUCCEEDED


def test_delivery_while_another_worker_is_alive_is_dropped(jobs: JobStore) -> None:
    # given a job running on w2 with a fresh heartbeat
    job_id = _submit(jobs)
    jobs.update(job_id, state=JobState.RUNNING, worker="w2", heartbeat_at=utcnow())
    calls: list[str] = []
    # when
    run_job(job_id, jobs, lambda ctx: calls.append("ran") or [], OPTS)
    # then
    assert calls == []
    assert jobs.get(job_id).worker == "w2"


def test_stale_running_job_is_taken_over_and_resumes_from_checkpoint(jobs: JobStore) -> None:
    # given a job whose worker died after two of four steps
    job_id = _submit(jobs, steps=4, step_s=0)
    jobs.save_checkpoint(job_id, "checkpoint", b'{"done": 2, "executed": [0, 1]}')
    jobs.update(
        job_id,
        state=JobState.RUNNING,
        worker="dead",
        attempts=1,
        heartbeat_at=utcnow() - timedelta(seconds=600),
    )
    # when
    record = run_job(job_id, jobs, run_selftest, OPTS)
    # then
    assert record.state == JobState.SUCCEEDED
    assert record.resumed == 1
    assert record.outputs["executed"] == [0, 1, 2, 3]


def test_redelivered_job_publishes_its_artifact_once(jobs: JobStore) -> None:
    # given a job that published and then lost its worker before recording SUCCEEDED
    job_id = _submit(jobs, steps=1, step_s=0)
    run_job(job_id, jobs, run_selftest, OPTS)
    jobs.update(job_id, state=JobState.RUNNING, heartbeat_at=utcnow() - timedelta(hours=1))
    # when it runs again
    run_job(job_id, jobs, run_selftest, OPTS)
    # then one version exists
    assert ArtifactStore(jobs.store).versions(f"selftest-{job_id}") == [job_id]


def test_cancel_before_start_marks_canceled_and_never_runs(jobs: JobStore) -> None:
    # given
    job_id = _submit(jobs)
    jobs.request_cancel(job_id)
    calls: list[str] = []
    # when
    record = run_job(job_id, jobs, lambda ctx: calls.append("ran") or [], OPTS)
    # then
    assert calls == []
    assert record.state == JobState.CANCELED


def test_cancel_while_running_stops_at_next_step(jobs: JobStore) -> None:
    # given a handler that asks for cancel itself after its first step
    job_id = _submit(jobs, steps=5, step_s=0)
    seen: list[int] = []

    def handler(ctx: JobContext) -> list[str]:
        for step in range(5):
            ctx.check_cancel()
            seen.append(step)
            if step == 1:
                jobs.request_cancel(job_id)
        return []

    # when
    record = run_job(job_id, jobs, handler, OPTS)
    # then
    assert seen == [0, 1]
    assert record.state == JobState.CANCELED


def test_cancel_of_finished_job_conflicts(jobs: JobStore) -> None:
    job_id = _submit(jobs, steps=1, step_s=0)
    run_job(job_id, jobs, run_selftest, OPTS)
    with pytest.raises(ConflictError):
        jobs.request_cancel(job_id)


def test_domain_error_fails_job_with_its_code(jobs: JobStore) -> None:
    # given
    job_id = _submit(jobs)

    def handler(ctx: JobContext) -> list[str]:
        raise InvalidInputError("no images under prefix x/", code="empty_dataset")

    # when
    record = run_job(job_id, jobs, handler, OPTS)
    # then
    assert (record.state, record.error_code) == (JobState.FAILED, "empty_dataset")
    assert "no images" in (record.error or "")


def test_job_exceeding_max_attempts_fails(jobs: JobStore) -> None:
    job_id = _submit(jobs)
    jobs.update(job_id, state=JobState.RUNNING, attempts=3, heartbeat_at=None)
    record = run_job(job_id, jobs, lambda ctx: [], OPTS)
    assert (record.state, record.error_code) == (JobState.FAILED, "too_many_attempts")


class _Sender:
    def __init__(self) -> None:
        self.sent: list[tuple[str, list[str], str]] = []

    def send_task(self, name: str, args: list[str] | None = None, **options: object) -> None:
        self.sent.append((name, list(args or []), str(options["queue"])))


def test_reaper_requeues_only_stale_running_jobs_once(jobs: JobStore) -> None:
    # given one stale and one live RUNNING job
    stale, live = _submit(jobs), _submit(jobs)
    jobs.update(stale, state=JobState.RUNNING, heartbeat_at=utcnow() - timedelta(seconds=120))
    jobs.update(live, state=JobState.RUNNING, heartbeat_at=utcnow())
    sender = _Sender()
    # when the reaper runs twice
    first = reap_once(sender, jobs, 60, {"default"})
    second = reap_once(sender, jobs, 60, {"default"})
    # then the stale job was sent once
    assert first == [stale]
    assert second == []
    assert sender.sent == [("jobs.selftest", [stale], "default")]
    assert find_orphans(jobs, 60, {"other-queue"}) == []


class ReadCounting(FileObjectStore):
    """Counts record reads."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.record_reads = 0

    def get_bytes(self, key: str) -> bytes:
        if key.endswith("/job.json"):
            self.record_reads += 1
        return super().get_bytes(key)


def _finished_jobs(jobs: JobStore, count: int) -> list[str]:
    ids = []
    for _ in range(count):
        record = jobs.create(kind="selftest", task_name="t", queue="default", params={})
        record.state = JobState.SUCCEEDED
        jobs.save(record)
        ids.append(record.id)
    return ids


def test_the_reaper_reads_only_live_jobs_however_long_the_history(tmp_path: Path) -> None:
    # given 60 finished jobs and 2 live ones
    store = ReadCounting(tmp_path / "store")
    jobs = JobStore(store)
    _finished_jobs(jobs, 60)
    live = [jobs.create(kind="selftest", task_name="t", queue="default", params={}).id
            for _ in range(2)]  # fmt: skip
    # when the reaper looks for orphans (the index is already built by the writes)
    jobs.live()
    store.record_reads = 0
    orphans = find_orphans(jobs, 30, ["default"], pending_after_s=0.0)
    # then it read the two live records, not the history
    assert store.record_reads == 2
    assert sorted(r.id for r in orphans) == sorted(live)


def test_a_store_without_the_index_builds_it_once_and_drops_stale_markers(
    tmp_path: Path,
) -> None:
    # given records written before the index existed (no markers), one of them live
    store = FileObjectStore(tmp_path / "store")
    old = JobStore(store)
    _finished_jobs(old, 3)
    pending = old.create(kind="selftest", task_name="t", queue="default", params={})
    for key in store.list("jobs/live/"):
        store.delete(key)
    # when a new store instance lists live jobs
    fresh = JobStore(store)
    assert [r.id for r in fresh.live()] == [pending.id]
    assert store.exists("jobs/live.built")
    # and a job finishes behind a marker's back (a record written by an older worker)
    record = fresh.get(pending.id)
    record.state = JobState.FAILED
    store.put_bytes(JobStore.record_key(record.id), record.model_dump_json().encode())
    # then the marker is dropped when met
    assert fresh.live() == []
    assert store.list("jobs/live/") == []


def test_pages_continue_from_a_cursor_without_gaps(tmp_path: Path) -> None:
    jobs = JobStore(FileObjectStore(tmp_path / "store"))
    ids = sorted(_finished_jobs(jobs, 7), reverse=True)
    first = jobs.list(limit=3)
    second = jobs.list(limit=3, before=first[-1].id)
    third = jobs.list(limit=3, before=second[-1].id)
    assert [r.id for r in first + second + third] == ids


class ListCounting(FileObjectStore):
    """Records the prefixes listed."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.listed: list[str] = []

    def list(self, prefix: str = "") -> list[str]:
        self.listed.append(prefix)
        return super().list(prefix)


def test_a_page_lists_its_days_markers_never_every_job(tmp_path: Path) -> None:
    # given a history whose records predate the day index (its markers removed)
    store = ListCounting(tmp_path / "store")
    ids = sorted(_finished_jobs(JobStore(store), 5), reverse=True)
    for key in [*store.list("jobs/day-ids/"), "jobs/day-ids.built"]:
        store.delete(key)
    # when a new instance lists a page, and another instance a page after that
    first = JobStore(store)
    assert [r.id for r in first.list(limit=2)] == ids[:2]
    assert store.exists("jobs/day-ids.built")  # built once from the keys
    store.listed.clear()
    page = JobStore(store).list(limit=2, before=ids[1])
    # then the second page is right and listed only the day index, never all of jobs/
    assert [r.id for r in page] == ids[2:4]
    assert "jobs/" not in store.listed
    assert all(p.startswith("jobs/day") for p in store.listed), store.listed
