"""The running index: a driver tick reads the running pipelines' records, not every record."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from services.pipeline.params import PipelineRequest
from services.pipeline.stores.pipelines import PipelineRecord, PipelineState, PipelineStore
from services.pipeline.usecases.clients import ServiceClient
from services.pipeline.usecases.driver import PipelineDriver
from services.pipeline.usecases.pipelines import create_pipeline, resume_pipeline
from shared.errors import ConflictError
from shared.storage.filesystem import FileObjectStore
from tests.unit.pipeline.fake_suite import URLS, FakeSuite

REQUEST = {
    "name": "steel-det",
    "category": "steel",
    "unlabelled_prefix": "lines/steel/",
    "labelled": {"prefix": "labelled/", "format": "yolo"},
}


class CountingStore(FileObjectStore):
    """Remembers which pipeline records were read."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.records_read: list[str] = []

    def get_bytes(self, key: str) -> bytes:
        if key.endswith("/pipeline.json"):
            self.records_read.append(key.split("/")[1])
        return super().get_bytes(key)


@pytest.fixture
def store(tmp_path: Path) -> CountingStore:
    store = CountingStore(tmp_path / "store")
    store.put_bytes("lines/steel/a.png", b"x")
    store.put_bytes("labelled/images/a.png", b"x")
    return store


def _driver(pipelines: PipelineStore) -> PipelineDriver:
    client = ServiceClient(URLS, transport=FakeSuite().transport())
    return PipelineDriver(pipelines, client, name="me")


def _finished(pipelines: PipelineStore, state: PipelineState) -> PipelineRecord:
    record = create_pipeline(pipelines, PipelineRequest.model_validate(REQUEST))
    record.state = state
    return pipelines.save(record)


def test_a_tick_reads_only_the_running_pipelines(store: CountingStore) -> None:
    # given two finished pipelines and one running
    pipelines = PipelineStore(store)
    done = [_finished(pipelines, s) for s in (PipelineState.SUCCEEDED, PipelineState.FAILED)]
    running = create_pipeline(pipelines, PipelineRequest.model_validate(REQUEST))
    driver = _driver(pipelines)
    assert driver.tick() == 1  # the first tick also scans every record once
    store.records_read.clear()

    # when
    touched = driver.tick()

    # then only the running record was read
    assert touched == 1
    assert set(store.records_read) == {running.id}
    assert pipelines.running_ids() == [running.id]
    assert all(d.id not in pipelines.running_ids() for d in done)


def test_a_running_record_from_before_the_index_is_driven(store: CountingStore) -> None:
    # given a running pipeline whose record was written without an index entry
    pipelines = PipelineStore(store)
    record = create_pipeline(pipelines, PipelineRequest.model_validate(REQUEST))
    store.delete(f"pipelines/running/{record.id}")
    assert pipelines.running_ids() == []

    # when a driver starts
    touched = _driver(pipelines).tick()

    # then its first tick finds and advances the pipeline
    assert touched == 1
    assert pipelines.running_ids() == [record.id]
    assert pipelines.get(record.id).driver == "me"


def test_a_stale_entry_is_dropped_and_a_resume_indexes_again(store: CountingStore) -> None:
    # given a failed pipeline still indexed (a crash between its last save and the cleanup)
    pipelines = PipelineStore(store)
    record = _finished(pipelines, PipelineState.FAILED)
    store.put_bytes(f"pipelines/running/{record.id}", b"1")
    driver = _driver(pipelines)

    # when / then the tick leaves it alone and drops the entry
    assert driver.tick() == 0
    assert pipelines.running_ids() == []
    assert pipelines.get(record.id).state is PipelineState.FAILED

    # and a resume puts it back where the next tick finds it
    resume_pipeline(pipelines, record.id)
    assert pipelines.running_ids() == [record.id]
    assert driver.tick() == 1


class SlowStore(FileObjectStore):
    """Takes its time to read a record, as a loaded S3 server does: concurrent callers all
    read before any of them writes, unless something serialises them."""

    def get_bytes(self, key: str) -> bytes:
        if key.endswith("/pipeline.json"):
            time.sleep(0.05)
        return super().get_bytes(key)


def test_ten_concurrent_resumes_start_the_pipeline_once(tmp_path: Path) -> None:
    # given a failed pipeline in a slow store
    store = SlowStore(tmp_path / "store")
    store.put_bytes("lines/steel/a.png", b"x")
    store.put_bytes("labelled/images/a.png", b"x")
    pipelines = PipelineStore(store)
    record = _finished(pipelines, PipelineState.FAILED)
    # when ten clients resume it at once
    start = threading.Barrier(10)

    def resume() -> str:
        start.wait()
        try:
            return resume_pipeline(pipelines, record.id).state.value
        except ConflictError as exc:
            return exc.code

    with ThreadPoolExecutor(10) as pool:
        answers = list(pool.map(lambda _: resume(), range(10)))
    # then exactly one resume went through and nine were told it is running
    assert sorted(answers) == ["RUNNING"] + ["pipeline_not_resumable"] * 9


def test_pipeline_pages_follow_a_cursor(tmp_path: Path) -> None:
    store = FileObjectStore(tmp_path / "store")
    store.put_bytes("lines/steel/a.png", b"x")
    store.put_bytes("labelled/images/a.png", b"x")
    pipelines = PipelineStore(store)
    made = sorted(
        (_finished(pipelines, PipelineState.SUCCEEDED).id for _ in range(5)), reverse=True
    )
    first = pipelines.list(2)
    rest = pipelines.list(10, before=first[-1].id)
    assert [r.id for r in first + rest] == made
