"""Service level, no servers: a finetune job saves its version's evaluation on val.

The same document an evaluation job saves (misses, false alarms, confusion, PR curves at
the default conf), from the val boxes the version's mAP was computed from; a failure to
save it warns in the outputs instead of failing the job, and a worker lost between
publishing and the evaluation leaves it to the next delivery, which does not train again.
Jobs run by the real job runner on a FileObjectStore with 1-epoch YOLOv8n runs at 64 px.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from services.finetune.config import FinetuneSettings
from services.finetune.ml.backend import PackagedDetector, SplitPredictions, load_backend
from services.finetune.ml.yolo_format import yolo_label_text
from services.finetune.params import DatasetImportParams, EvaluationParams, FinetuneJobParams
from services.finetune.runtime.yolo_backend import TorchBackend
from services.finetune.stores.datasets import DatasetCatalog
from services.finetune.stores.models import ModelRegistry
from services.finetune.usecases.datasets import run_import_job, submit_import
from services.finetune.usecases.evaluation_views import find_evaluation
from services.finetune.usecases.evaluations import run_evaluation_job, submit_evaluation
from services.finetune.usecases.finetune_jobs import run_finetune_job, submit_finetune
from shared.config import CommonSettings, PathSettings
from shared.jobs.context import JobContext
from shared.jobs.runner import RunnerOptions, run_job
from shared.jobs.store import JobStore
from shared.schemas.artifacts import ArtifactRef
from shared.schemas.jobs import JobRecord, JobState
from shared.storage.filesystem import FileObjectStore

TINY = {"epochs": 1, "batch": 4, "imgsz": 64, "seed": 0}


class FakeSender:
    """Records what would go to the broker; the test runs the job itself."""

    def send_task(self, name: str, args: Any = None, **options: Any) -> None:
        pass


@dataclass
class World:
    store: FileObjectStore
    jobs: JobStore
    settings: FinetuneSettings

    def run(self, record: JobRecord, handler: Callable[..., list[str]], *args: Any) -> JobRecord:
        def call(ctx: JobContext) -> list[str]:
            return handler(ctx, self.settings, *args)

        return run_job(record.id, self.jobs, call, RunnerOptions(worker="unit"))

    def finetune(self, model_name: str) -> JobRecord:
        params = FinetuneJobParams(dataset="shapes", scale="n", config=TINY, model_name=model_name)
        return submit_finetune(FakeSender(), self.jobs, params)

    def version(self, record: JobRecord) -> ArtifactRef:
        name, _, version = record.artifacts[0].partition(":")
        return ArtifactRef(name=name, version=version)

    def version_map50(self, ref: ArtifactRef) -> float:
        metrics = ModelRegistry(self.store).version_info(ref).metrics
        return float(metrics["map50"])


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, make_dataset: Any) -> World:
    root = tmp_path_factory.mktemp("eval-world")
    store = FileObjectStore(root / "store")
    settings = FinetuneSettings(
        common=CommonSettings(paths=PathSettings(home=root / "home")),
        device="cpu",
        work_dir=str(root / "work"),
    )
    world = World(store, JobStore(store), settings)
    _import_shapes(world, make_dataset)
    return world


def _import_shapes(world: World, make_dataset: Any) -> None:
    dataset, images = make_dataset(n=8, classes=("light", "dark"), size=64, seed=2)
    for image in dataset.images:
        world.store.put_file(f"uploads/shapes/images/{image.file_name}", images / image.file_name)
        world.store.put_bytes(
            f"uploads/shapes/labels/{image.stem}.txt", yolo_label_text(image).encode()
        )
    world.store.put_bytes("uploads/shapes/classes.txt", b"light\ndark\n")
    params = DatasetImportParams(
        name="shapes", prefix="uploads/shapes/", format="yolo", val_fraction=0.25, seed=0
    )
    record = world.run(submit_import(FakeSender(), world.jobs, params), run_import_job)
    assert record.state == JobState.SUCCEEDED, record.error


@pytest.fixture(scope="module")
def finetune_job(world: World) -> JobRecord:
    return world.run(world.finetune("shapes-det"), run_finetune_job, load_backend)


def _shapes(world: World) -> str:
    return str(DatasetCatalog(world.store).resolve("shapes"))


def test_a_finetune_job_saves_its_val_evaluation_with_the_versions_map50(
    world: World, finetune_job: JobRecord
) -> None:
    # given a finished finetune job
    assert finetune_job.state == JobState.SUCCEEDED, finetune_job.error
    ref = world.version(finetune_job)
    # when the evaluation route's use case looks for the version's evaluation on val
    doc = find_evaluation(ModelRegistry(world.store), DatasetCatalog(world.store), ref, None, "val")
    # then it is there, where the outputs say, at the default conf, with the version's mAP
    name, version = _shapes(world).split(":")
    key = f"models/shapes-det/{ref.version}/evaluations/{name}-{version}-val.json"
    assert finetune_job.outputs["evaluation_key"] == key
    assert json.loads(world.store.get_bytes(key)) == doc
    assert (doc["model"], doc["dataset"], doc["split"], doc["conf"]) == (
        str(ref),
        _shapes(world),
        "val",
        0.25,
    )
    assert doc["map50"] == world.version_map50(ref) == finetune_job.outputs["metrics"]["map50"]
    assert doc["map50_95"] == finetune_job.outputs["metrics"]["map50_95"]
    assert finetune_job.outputs["error_totals"] == doc["errors"]["totals"]
    assert len(doc["errors"]["images"]) == doc["images"] == 2
    assert "evaluation_error" not in finetune_job.outputs


def test_the_saved_evaluation_is_the_one_an_evaluation_job_saves(
    world: World, finetune_job: JobRecord
) -> None:
    # given the document the finetune job saved
    key = finetune_job.outputs["evaluation_key"]
    saved = json.loads(world.store.get_bytes(key))
    # when an evaluation job evaluates the same version on the same split
    params = EvaluationParams(model=str(world.version(finetune_job)), dataset="shapes")
    job = world.run(
        submit_evaluation(FakeSender(), world.jobs, params), run_evaluation_job, load_backend
    )
    # then it writes the same document to the same key (but for its time)
    assert job.state == JobState.SUCCEEDED, job.error
    assert job.artifacts == [key]
    again = json.loads(world.store.get_bytes(key))
    assert {k: v for k, v in again.items() if k != "evaluated_at"} == {
        k: v for k, v in saved.items() if k != "evaluated_at"
    }


def test_a_failing_evaluation_save_leaves_the_job_succeeded_with_a_warning(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given a store that refuses the evaluation document
    def refuse(*args: Any, **kwargs: Any) -> str:
        raise OSError("disk full")

    monkeypatch.setattr(ModelRegistry, "save_evaluation", refuse)
    # when
    record = world.run(world.finetune("shapes-unsaved"), run_finetune_job, load_backend)
    # then the model is registered, the job succeeded, and the outputs say what is missing
    assert record.state == JobState.SUCCEEDED, record.error
    ref = world.version(record)
    assert 0.0 <= world.version_map50(ref) <= 1.0
    assert "disk full" in record.outputs["evaluation_error"]
    assert "POST /v1/evaluations" in record.outputs["evaluation_error"]
    assert "evaluation_key" not in record.outputs
    assert ModelRegistry(world.store).evaluation_names(ref) == []


class KeepsNoValBoxes:
    """The YOLOv8 backend as a family whose packaging keeps no val boxes, counting passes."""

    def __init__(self) -> None:
        self.inner = load_backend()
        self.predict_calls = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def package(self, *args: Any) -> PackagedDetector:
        return dataclasses.replace(self.inner.package(*args), val=None)

    def predict(self, *args: Any) -> SplitPredictions:
        self.predict_calls += 1
        return self.inner.predict(*args)


def test_a_backend_that_keeps_no_val_boxes_costs_one_pass_over_val(world: World) -> None:
    # given a backend whose packaged detector carries no val evaluation
    backend = KeepsNoValBoxes()
    # when
    record = world.run(world.finetune("shapes-one-pass"), run_finetune_job, lambda _: backend)
    # then one predict call over val gave the evaluation, with the version's mAP
    assert record.state == JobState.SUCCEEDED, record.error
    assert backend.predict_calls == 1
    doc = json.loads(world.store.get_bytes(record.outputs["evaluation_key"]))
    assert doc["map50"] == pytest.approx(world.version_map50(world.version(record)), abs=1e-12)


class WorkerLostError(Exception):
    """Stands for a worker that dies right after it published the model."""


class DiesBeforeTheEvaluation(JobContext):
    def progress(self, percent: float, message: str = "", **kwargs: Any) -> None:
        if message.startswith("saving the evaluation"):
            raise WorkerLostError(message)
        super().progress(percent, message, **kwargs)


def test_a_worker_lost_before_the_evaluation_leaves_it_to_the_next_delivery(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given a job whose first delivery dies after publishing, before the evaluation
    record = world.finetune("shapes-resumed")
    with pytest.raises(WorkerLostError):
        run_finetune_job(DiesBeforeTheEvaluation(world.jobs, record), world.settings, load_backend)
    ref = ArtifactRef(name="shapes-resumed", version=record.id)
    registry = ModelRegistry(world.store)
    assert registry.version_info(ref).metrics
    assert registry.evaluation_names(ref) == []

    # and a backend that fails if asked to train again
    def no_training(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the redelivered job trained again")

    monkeypatch.setattr(TorchBackend, "train", no_training)
    # when the job is delivered again
    ctx = JobContext(world.jobs, world.jobs.get(record.id))
    refs = run_finetune_job(ctx, world.settings, load_backend)
    # then the evaluation is saved from the registered weights, with the version's mAP
    assert refs == [str(ref)]
    key = ctx.record.outputs["evaluation_key"]
    doc = json.loads(world.store.get_bytes(key))
    assert doc["model"] == str(ref)
    assert doc["map50"] == pytest.approx(world.version_map50(ref), abs=1e-12)
    assert ctx.record.outputs["error_totals"] == doc["errors"]["totals"]
