"""A finished run is kept with the job's checkpoints: a delivery that dies while packaging
(export, final evaluation, publishing) is followed by one that packages, never one that
trains again; a canceled run is not kept."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import pytest

from services.finetune.ml.backend import DetectorBackend, TrainedRun, TrainRequest
from services.finetune.usecases.common import train_once
from shared.errors import JobCanceledError
from shared.jobs.context import JobContext
from shared.jobs.store import JobStore
from shared.storage.filesystem import FileObjectStore

pytestmark = pytest.mark.unit


class CountingBackend:
    """Trains by writing a fake ``best.pt``; counts its runs."""

    def __init__(self, canceled: bool = False) -> None:
        self.trained = 0
        self.canceled = canceled

    def train(self, request: TrainRequest) -> TrainedRun:
        self.trained += 1
        request.work.mkdir(parents=True, exist_ok=True)
        pt_file = request.work / "best.pt"
        pt_file.write_bytes(b"ultralytics-pickle")
        return TrainedRun(
            weights=b"tensors", pt_file=pt_file, classes=["scratch"], epochs_completed=7,
            canceled=self.canceled, history=[{"epoch": 7.0, "loss": 0.5}],
            transfer={"loaded": 3}, checkpoint_metrics={"map50": 0.4}, torch_threads=2,
        )  # fmt: skip


def _request(work: Path) -> TrainRequest:
    return cast(TrainRequest, type("Request", (), {"work": work})())


def _context(jobs: JobStore, job_id: str) -> JobContext:
    return JobContext(jobs, jobs.get(job_id))


def test_a_second_delivery_packages_the_kept_run_without_training(tmp_path: Path) -> None:
    # given a job whose first delivery trained, then died before publishing
    jobs = JobStore(FileObjectStore(tmp_path / "store"))
    job_id = jobs.create(kind="finetune", task_name="t", queue="default", params={}).id
    backend = CountingBackend()
    first = train_once(
        _context(jobs, job_id), cast(DetectorBackend, backend), _request(tmp_path / "w1")
    )
    # when the job is delivered again, on another worker with an empty work folder
    again = train_once(
        _context(jobs, job_id), cast(DetectorBackend, backend), _request(tmp_path / "w2")
    )
    # then it trained once, and the second delivery has the same run with its files
    assert backend.trained == 1
    fields: dict[str, Any] = {k: getattr(first, k) for k in ("weights", "classes", "history")}
    assert {k: getattr(again, k) for k in fields} == fields
    assert (again.epochs_completed, again.transfer, again.torch_threads) == (7, {"loaded": 3}, 2)
    assert again.pt_file.read_bytes() == b"ultralytics-pickle"
    assert again.pt_file.name == "best.pt"
    assert again.pt_file.is_relative_to(tmp_path / "w2")


def test_a_canceled_run_is_not_kept(tmp_path: Path) -> None:
    jobs = JobStore(FileObjectStore(tmp_path / "store"))
    job_id = jobs.create(kind="finetune", task_name="t", queue="default", params={}).id
    backend = CountingBackend(canceled=True)
    with pytest.raises(JobCanceledError):
        train_once(_context(jobs, job_id), cast(DetectorBackend, backend), _request(tmp_path))
    assert jobs.load_checkpoint(job_id, "trained.json") is None
