"""A finetune job whose batch the training split cannot fill is refused at submission."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from services.finetune.params import FinetuneJobParams
from services.finetune.stores.datasets import DatasetCatalog, DatasetRef
from services.finetune.usecases.finetune_jobs import submit_finetune
from shared.errors import InvalidInputError
from shared.jobs.store import JobStore
from shared.schemas.jobs import TaskName
from shared.storage.filesystem import FileObjectStore


class FakeSender:
    def __init__(self) -> None:
        self.sent: list[str] = []

    def send_task(self, name: str, args: Any = None, **options: Any) -> None:
        self.sent.append(name)


@pytest.fixture
def jobs(tmp_path: Path) -> JobStore:
    store = FileObjectStore(tmp_path / "store")
    manifest = {
        "classes": ["dent"],
        "images": 12,
        "boxes": 12,
        "splits": {"train": 8, "val": 2, "mini-3": 3},
    }
    DatasetCatalog(store).publish(DatasetRef("shapes", "v1"), {"splits.json": b"{}"}, manifest)
    return JobStore(store)


def _params(batch: int, **fields: Any) -> FinetuneJobParams:
    return FinetuneJobParams.model_validate(
        {"dataset": "shapes", "scale": "n", "model_name": "m", "config": {"batch": batch}, **fields}
    )


@pytest.mark.parametrize(
    ("fields", "size"), [({}, 8), ({"mini": 3}, 3)], ids=["train", "stored-mini"]
)
def test_a_batch_larger_than_the_training_split_is_refused(
    jobs: JobStore, fields: dict[str, Any], size: int
) -> None:
    # given
    sender = FakeSender()

    # when / then: a clear 422 (InvalidInputError) naming the split's size; nothing queued
    with pytest.raises(InvalidInputError) as caught:
        submit_finetune(sender, jobs, _params(size + 1, **fields))
    assert caught.value.code == "batch_too_large"
    assert f"({size} images)" in caught.value.message
    assert sender.sent == []


def test_a_batch_the_split_fills_is_queued(jobs: JobStore) -> None:
    # given
    sender = FakeSender()

    # when
    record = submit_finetune(sender, jobs, _params(8))

    # then
    assert sender.sent == [TaskName.FINETUNE_TRAIN.value]
    assert record.params["config"]["batch"] == 8


def test_a_mini_split_drawn_later_is_not_checked_at_submission(jobs: JobStore) -> None:
    # given: mini-5 is not stored, its size is known only when the worker draws it
    sender = FakeSender()

    # when
    submit_finetune(sender, jobs, _params(6, mini=5))

    # then
    assert sender.sent == [TaskName.FINETUNE_TRAIN.value]
