"""Jobs ride out short storage outages: store calls retry a transient outage with doubling
pauses within a patience budget; past it, or for a refusal, they raise; and a job whose
outage outlasts the budget is left RUNNING for the reaper, not FAILED."""

from __future__ import annotations

import io
import time
from pathlib import Path

import pytest

from shared.errors import UnavailableError
from shared.jobs.context import JobContext
from shared.jobs.reaper import find_orphans
from shared.jobs.runner import RunnerOptions, run_job
from shared.jobs.store import JobStore
from shared.schemas.jobs import JobState
from shared.storage.base import ObjectNotFoundError
from shared.storage.filesystem import FileObjectStore
from shared.storage.patient import PatientStore

pytestmark = pytest.mark.unit


class StallingStore(FileObjectStore):
    """Fails the next ``stalls`` calls with ``error`` (a storage outage by default)."""

    def __init__(self, root: Path, stalls: int, error: Exception | None = None) -> None:
        super().__init__(root)
        self.stalls = stalls
        self.error = error or UnavailableError("read timed out", code="storage_unavailable")

    def _maybe_stall(self) -> None:
        if self.stalls > 0:
            self.stalls -= 1
            raise self.error

    def get_bytes(self, key: str) -> bytes:
        self._maybe_stall()
        return super().get_bytes(key)

    def put_stream(self, key, stream, length=-1, content_type="application/octet-stream"):  # type: ignore[no-untyped-def]
        if self.stalls > 0:
            stream.read(1)  # a partial read before the failure, as a real upload makes
        self._maybe_stall()
        return super().put_stream(key, stream, length, content_type)


class Clock:
    def __init__(self) -> None:
        self.now, self.pauses = 0.0, []  # type: ignore[var-annotated]

    def sleep(self, seconds: float) -> None:
        self.pauses.append(seconds)
        self.now += seconds


def _patient(inner: FileObjectStore, patience_s: float) -> tuple[PatientStore, Clock]:
    clock = Clock()
    return PatientStore(inner, patience_s, sleep=clock.sleep, clock=lambda: clock.now), clock


def test_a_short_outage_is_waited_out_with_doubling_pauses(tmp_path: Path) -> None:
    inner = StallingStore(tmp_path, stalls=0)
    inner.put_bytes("a/b.bin", b"data")
    inner.stalls = 3
    store, clock = _patient(inner, patience_s=30)
    assert store.get_bytes("a/b.bin") == b"data"
    assert clock.pauses == [0.5, 1.0, 2.0]


def test_an_outage_longer_than_the_patience_is_raised(tmp_path: Path) -> None:
    inner = StallingStore(tmp_path, stalls=1000)
    store, clock = _patient(inner, patience_s=30)
    with pytest.raises(UnavailableError):
        store.get_bytes("a/b.bin")
    assert 25 <= sum(clock.pauses) <= 30
    assert clock.pauses[-1] == 5.0  # capped


def test_a_refusal_is_raised_at_once(tmp_path: Path) -> None:
    denied = UnavailableError("AccessDenied", code="storage_access_denied")
    store, clock = _patient(StallingStore(tmp_path, stalls=1, error=denied), patience_s=30)
    with pytest.raises(UnavailableError):
        store.get_bytes("x")
    with pytest.raises(ObjectNotFoundError):
        store.get_bytes("missing")
    assert clock.pauses == []


def test_a_stream_is_rewound_for_the_retry_and_an_unseekable_one_is_not_retried(
    tmp_path: Path,
) -> None:
    store, _ = _patient(StallingStore(tmp_path, stalls=1), patience_s=30)
    store.put_stream("s/one.bin", io.BytesIO(b"0123456789"), 10)
    assert store.get_bytes("s/one.bin") == b"0123456789"

    class OneWay(io.BytesIO):
        def seekable(self) -> bool:
            return False

    store, clock = _patient(StallingStore(tmp_path, stalls=1), patience_s=30)
    with pytest.raises(UnavailableError):
        store.put_stream("s/two.bin", OneWay(b"0123456789"), 10)
    assert clock.pauses == []


def test_a_job_whose_outage_outlasts_the_patience_is_left_for_the_reaper(
    tmp_path: Path,
) -> None:
    # given a job whose handler meets an outage the store could not wait out
    jobs = JobStore(FileObjectStore(tmp_path / "store"))
    job_id = jobs.create(kind="selftest", task_name="t", queue="default", params={}).id

    def handler(ctx: JobContext) -> list[str]:
        raise UnavailableError("put jobs/x: timed out", code="storage_unavailable")

    # when
    opts = RunnerOptions(worker="w1", lease_ttl_s=0.01, heartbeat_s=5, max_attempts=3)
    record = run_job(job_id, jobs, handler, opts)
    # then it is not failed, and once its lease is stale the reaper hands it on
    assert record.state == JobState.RUNNING
    assert record.error is None
    time.sleep(0.05)
    assert [r.id for r in find_orphans(jobs, 0.01, ["default"])] == [job_id]
