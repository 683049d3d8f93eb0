"""Service level, no servers: import -> AGDP -> finetune -> evaluate on a tiny synthetic set.

Jobs are submitted with the API's submission functions (a fake sender) and run by the real
job runner on a FileObjectStore, exactly as a worker runs them, with 1-epoch YOLOv8n runs.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import torch

from services.finetune.config import FinetuneSettings
from services.finetune.ml.backend import load_backend
from services.finetune.ml.dataset import DetectionDataset
from services.finetune.ml.yolo_format import yolo_label_text
from services.finetune.ml.yolov8.detector import build_detector
from services.finetune.params import (
    AgdpJobParams,
    DatasetImportParams,
    EvaluationParams,
    FinetuneJobParams,
    InitParams,
)
from services.finetune.usecases.agdp_jobs import run_agdp_job, submit_agdp
from services.finetune.usecases.datasets import run_import_job, submit_import
from services.finetune.usecases.evaluations import run_evaluation_job, submit_evaluation
from services.finetune.usecases.finetune_jobs import run_finetune_job, submit_finetune
from shared.config import CommonSettings, PathSettings
from shared.errors import JobCanceledError
from shared.jobs.context import JobContext
from shared.jobs.runner import RunnerOptions, run_job
from shared.jobs.store import JobStore
from shared.schemas.artifacts import ArtifactRef
from shared.schemas.evaluation import PerImageEval
from shared.schemas.jobs import JobRecord, JobState
from shared.storage.artifacts import ArtifactStore
from shared.storage.filesystem import FileObjectStore
from tests.unit.finetune.conftest import stage_pseudo_labelled

TINY = {"epochs": 1, "batch": 4, "imgsz": 64, "seed": 0}
DETECTOR_FILES = {
    "model.onnx",
    "classes.json",
    "model.pt",
    "weights.pt",
    "config.yaml",
    "metrics.json",
    "eval_per_image.json",
}
BACKBONE = re.compile(r"^model\.[0-9]\.")


class FakeSender:
    """Records what would go to the broker; the test runs the job itself."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, Any, dict[str, Any]]] = []

    def send_task(self, name: str, args: Any = None, **options: Any) -> None:
        self.sent.append((name, args, options))


@dataclass
class World:
    store: FileObjectStore
    jobs: JobStore
    settings: FinetuneSettings

    def run(self, record: JobRecord, handler: Callable[..., list[str]], *args: Any) -> JobRecord:
        def call(ctx: JobContext) -> list[str]:
            return handler(ctx, self.settings, *args)

        return run_job(record.id, self.jobs, call, RunnerOptions(worker="unit"))

    def upload(self, folder: Path, prefix: str) -> None:
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            self.store.put_file(prefix + path.relative_to(folder).as_posix(), path)


def _write_yolo_folder(dataset: DetectionDataset, images: Path, root: Path) -> Path:
    (root / "labels").mkdir(parents=True)
    (root / "images").mkdir()
    for image in dataset.images:
        (root / "images" / image.file_name).write_bytes((images / image.file_name).read_bytes())
        (root / "labels" / f"{image.stem}.txt").write_text(yolo_label_text(image))
    (root / "classes.txt").write_text("".join(f"{c}\n" for c in dataset.classes))
    return root


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    root = tmp_path_factory.mktemp("world")
    store = FileObjectStore(root / "store")
    settings = FinetuneSettings(
        common=CommonSettings(paths=PathSettings(home=root / "home")),
        device="cpu",
        work_dir=str(root / "work"),
    )
    return World(store, JobStore(store), settings)


@pytest.fixture(scope="module")
def agbp(world: World) -> ArtifactRef:
    # an "AGBP" artifact as the pretrain service publishes it: backbone tensors only
    model = build_detector("n", 1, seed=123).model
    state = {k: v for k, v in model.state_dict().items() if BACKBONE.match(k)}
    buffer = io.BytesIO()
    torch.save(state, buffer)
    meta = {"kind": "agbp", "job_id": "pretrain-1", "backbone": "yolov8n"}
    return ArtifactStore(world.store).publish(
        "agbp-yolov8n",
        {"backbone.pt": buffer.getvalue(), "config.yaml": b"backbone: yolov8n\n"},
        version="20260101T000000-00000001",
        metadata={**meta, "key_names": "ultralytics-detector"},
    )


@pytest.fixture(scope="module")
def agdp_job(world: World, agbp: ArtifactRef, make_dataset: Any) -> JobRecord:
    stage_pseudo_labelled(world.store, make_dataset)
    params = AgdpJobParams(
        images_prefix="uploads/rect/",
        labels_prefix="pseudo/rect/pl-1/",
        backbone_artifact="agbp-yolov8n",
        scale="n",
        config=TINY,
        val_fraction=0.25,
    )
    record = submit_agdp(FakeSender(), world.jobs, params)
    return world.run(record, run_agdp_job, load_backend)


@pytest.fixture(scope="module")
def dataset_job(
    world: World, make_dataset: Any, tmp_path_factory: pytest.TempPathFactory
) -> JobRecord:
    dataset, images = make_dataset(n=8, classes=("light", "dark"), size=64, seed=2)
    folder = _write_yolo_folder(dataset, images, tmp_path_factory.mktemp("yolo-src"))
    world.upload(folder, "uploads/two-class/")
    params = DatasetImportParams(
        name="shapes", prefix="uploads/two-class/", format="yolo", val_fraction=0.25, seed=0
    )
    record = submit_import(FakeSender(), world.jobs, params)
    return world.run(record, run_import_job)


@pytest.fixture(scope="module")
def finetune_job(world: World, agdp_job: JobRecord, dataset_job: JobRecord) -> JobRecord:
    params = FinetuneJobParams(
        dataset="shapes",
        init=InitParams(kind="agdp", artifact="agdp-n"),
        scale="n",
        config=TINY,
        model_name="shapes-yolov8n",
    )
    record = submit_finetune(FakeSender(), world.jobs, params)
    return world.run(record, run_finetune_job, load_backend)


@pytest.fixture(scope="module")
def evaluation_job(world: World, finetune_job: JobRecord) -> JobRecord:
    params = EvaluationParams(model="shapes-yolov8n", dataset="shapes", split="val")
    record = submit_evaluation(FakeSender(), world.jobs, params)
    return world.run(record, run_evaluation_job, load_backend)


def _ref(record: JobRecord) -> ArtifactRef:
    name, version = record.artifacts[0].split(":")
    return ArtifactRef(name=name, version=version)


def _file(world: World, record: JobRecord, filename: str) -> bytes:
    return ArtifactStore(world.store).get_file_bytes(_ref(record), filename)


def test_import_job_stores_a_split_dataset(world: World, dataset_job: JobRecord) -> None:
    # then
    assert dataset_job.state == JobState.SUCCEEDED, dataset_job.error
    assert dataset_job.outputs["classes"] == ["light", "dark"]
    assert dataset_job.outputs["splits"] == {"train": 6, "val": 2}
    assert world.store.exists(f"datasets/shapes/{dataset_job.id}/images/img_000.png")


def test_agdp_records_the_backbone_transfer(agdp_job: JobRecord) -> None:
    # then every AGBP tensor was loaded into the one-class detector
    assert agdp_job.state == JobState.SUCCEEDED, agdp_job.error
    transfer = agdp_job.outputs["transfer"]
    assert transfer["loaded"] == transfer["total"] > 0
    assert transfer["skipped"] == []
    assert agdp_job.artifacts == [f"agdp-n:{agdp_job.id}"]


def test_agdp_publishes_a_one_class_detector_with_the_exact_layout(
    world: World, agdp_job: JobRecord
) -> None:
    # when
    manifest = ArtifactStore(world.store).manifest(_ref(agdp_job))
    # then
    assert set(manifest.files) == DETECTOR_FILES
    assert json.loads(_file(world, agdp_job, "classes.json")) == ["anomaly"]
    assert manifest.metadata["kind"] == "agdp"
    assert (
        manifest.metadata["lineage"]["init"]["artifact"] == "agbp-yolov8n:20260101T000000-00000001"
    )


def test_agdp_checkpoints_last_pt_into_the_job_prefix(world: World, agdp_job: JobRecord) -> None:
    # then the TrainHooks checkpoint reached the store
    assert world.store.exists(f"jobs/{agdp_job.id}/checkpoints/last.pt")
    meta = json.loads(world.store.get_bytes(f"jobs/{agdp_job.id}/checkpoints/last.json"))
    assert meta == {"epoch": 1, "epochs": 1}


def test_finetune_reinitialises_only_the_class_logits_for_two_classes(
    finetune_job: JobRecord,
) -> None:
    # then (agssp-spec §5.3) the 1-class logit convs of the AGDP head are skipped, all else loads
    assert finetune_job.state == JobState.SUCCEEDED, finetune_job.error
    transfer = finetune_job.outputs["transfer"]
    skipped = [name for name, _ in transfer["skipped"]]
    assert len(skipped) == 6
    assert all(".cv3." in n and n.endswith((".2.weight", ".2.bias")) for n in skipped)
    assert transfer["loaded"] == transfer["total"] - 6


def test_finetune_metrics_have_overall_and_per_class_map(
    world: World, finetune_job: JobRecord
) -> None:
    # when
    metrics = json.loads(_file(world, finetune_job, "metrics.json"))
    # then
    assert 0.0 <= metrics["map50"] <= 1.0
    assert 0.0 <= metrics["map50_95"] <= 1.0
    assert set(metrics["per_class"]) == {"light", "dark"}
    assert {"map50", "map50_95", "num_gt"} <= set(metrics["per_class"]["light"])
    assert metrics["onnx_check"]["matches"] is True
    assert finetune_job.outputs["metrics"]["map50"] == metrics["map50"]


def test_finetune_publishes_per_image_records_that_give_its_map50(
    world: World, finetune_job: JobRecord
) -> None:
    # when the pipeline's reader takes the key from the job's outputs
    key = finetune_job.outputs["eval_per_image"]
    records = PerImageEval.from_bytes(world.store.get_bytes(key), key)
    # then: one record per val image, mAP@0.5 recomputed exactly, and the run's facts
    assert key == f"models/shapes-yolov8n/{finetune_job.id}/eval_per_image.json"
    assert records.classes == ["light", "dark"]
    assert len(records.images) == 2
    assert records.map50() == pytest.approx(finetune_job.outputs["metrics"]["map50"], abs=1e-12)
    assert records.run is not None
    assert records.run.seed == TINY["seed"]
    assert records.run.deterministic is True
    assert records.run.torch_threads >= 1
    assert finetune_job.outputs["run"] == records.run.model_dump(mode="json")


def test_two_identical_finetune_jobs_give_identical_weights_and_metrics(
    world: World, dataset_job: JobRecord
) -> None:
    # given the same job twice (same dataset, init, config and seed) on this machine
    params = FinetuneJobParams(
        dataset="shapes", scale="n", config={**TINY, "epochs": 2}, model_name="twice"
    )
    first, second = (
        world.run(submit_finetune(FakeSender(), world.jobs, params), run_finetune_job, load_backend)
        for _ in range(2)
    )
    # then (issue 21, item 6): bit-identical tensors, the same metrics and records
    assert first.state == second.state == JobState.SUCCEEDED, (first.error, second.error)
    assert first.outputs["metrics"] == second.outputs["metrics"]
    assert first.outputs["history"] == second.outputs["history"]
    hashes = [ArtifactStore(world.store).manifest(_ref(r)).hashes() for r in (first, second)]
    assert hashes[0]["weights.pt"] == hashes[1]["weights.pt"]
    assert hashes[0]["eval_per_image.json"] == hashes[1]["eval_per_image.json"]


def test_min_steps_raises_the_epochs_to_the_train_splits_size(
    world: World, dataset_job: JobRecord
) -> None:
    # given one epoch asked for, but at least 3 steps of batch 4 on the train split
    config = {**TINY, "epochs": 1, "min_steps": 3}
    params = FinetuneJobParams(dataset="shapes", scale="n", config=config, model_name="steps")
    # when
    record = world.run(
        submit_finetune(FakeSender(), world.jobs, params), run_finetune_job, load_backend
    )
    # then it planned and trained the epochs those steps take, and publishes that config
    assert record.state == JobState.SUCCEEDED, record.error
    per_epoch = -(-record.outputs["train_images"] // TINY["batch"])  # the last batch is kept
    planned = record.outputs["epochs_planned"]
    assert planned == -(-3 // per_epoch) > 1
    assert [int(h["epoch"]) for h in record.outputs["history"]] == list(range(1, planned + 1))


def test_finetune_lineage_chains_dataset_agdp_and_agbp(
    world: World, finetune_job: JobRecord, agdp_job: JobRecord, dataset_job: JobRecord
) -> None:
    # when
    lineage = ArtifactStore(world.store).manifest(_ref(finetune_job)).metadata["lineage"]
    # then
    assert lineage["dataset"] == f"shapes:{dataset_job.id}"
    assert lineage["job_id"] == finetune_job.id
    chain = [entry["artifact"] for entry in lineage["chain"]]
    assert chain == [f"agdp-n:{agdp_job.id}", "agbp-yolov8n:20260101T000000-00000001"]


def test_finetuned_onnx_runs_with_a_dynamic_batch(world: World, finetune_job: JobRecord) -> None:
    # given
    session = ort.InferenceSession(
        _file(world, finetune_job, "model.onnx"), providers=["CPUExecutionProvider"]
    )
    batch = np.random.default_rng(0).random((2, 3, 64, 64), dtype=np.float32)
    # when
    (output,) = session.run(None, {"images": batch})
    # then: 4 box values + 2 class scores per anchor, for both images
    assert output.shape[:2] == (2, 6)


def test_evaluation_is_saved_with_the_model(
    world: World, evaluation_job: JobRecord, finetune_job: JobRecord, dataset_job: JobRecord
) -> None:
    # then
    assert evaluation_job.state == JobState.SUCCEEDED, evaluation_job.error
    key = f"models/shapes-yolov8n/{finetune_job.id}/evaluations/shapes-{dataset_job.id}-val.json"
    assert evaluation_job.artifacts == [key]
    saved = json.loads(world.store.get_bytes(key))
    assert saved["map50"] == evaluation_job.outputs["map50"]
    assert set(saved["per_class"]) == {"light", "dark"}
    # with where it fails: every val image with its boxes, totals that add up, curves
    errors = saved["errors"]
    assert saved["conf"] == 0.25
    assert [im["file_name"] for im in errors["images"]] == saved_val_names(world, dataset_job)
    assert errors["totals"]["gt"] == sum(len(im["gt"]) for im in errors["images"])
    assert errors["totals"]["misses"] == sum(im["misses"] for im in errors["images"])
    assert evaluation_job.outputs["error_totals"] == errors["totals"]
    assert "errors" not in evaluation_job.outputs
    assert np.sum(errors["confusion"]["matrix"][:2]) == errors["totals"]["gt"]
    for name, curve in saved["pr_curves"]["classes"].items():
        assert np.mean(curve["precision"]) == pytest.approx(
            saved["per_class"][name]["map50"], abs=1e-6
        )


def saved_val_names(world: World, dataset_job: JobRecord) -> list[str]:
    """The val split's image names, in the stored dataset's order."""
    splits = json.loads(world.store.get_bytes(f"datasets/shapes/{dataset_job.id}/splits.json"))
    dataset = json.loads(world.store.get_bytes(f"datasets/shapes/{dataset_job.id}/dataset.json"))
    val = set(splits["splits"]["val"])
    return [im["file_name"] for im in dataset["images"] if im["file_name"] in val]


def test_a_redelivered_finetune_job_does_not_train_again(
    world: World, finetune_job: JobRecord
) -> None:
    # given the finished job's record, delivered once more straight to the service
    ctx = JobContext(world.jobs, world.jobs.get(finetune_job.id))
    before = ArtifactStore(world.store).manifest(_ref(finetune_job))
    # when
    refs = run_finetune_job(ctx, world.settings, load_backend)
    # then
    assert refs == finetune_job.artifacts
    assert ArtifactStore(world.store).manifest(_ref(finetune_job)) == before


class WorkerLostError(Exception):
    """Stands for a worker that dies right after an epoch (its last.pt is in the store)."""


class DyingContext(JobContext):
    def progress(self, percent: float, message: str = "", **kwargs: Any) -> None:
        if message.startswith("epoch 1/"):
            raise WorkerLostError(message)
        super().progress(percent, message, **kwargs)


def test_an_interrupted_run_resumes_from_the_stored_last_pt(
    world: World, dataset_job: JobRecord
) -> None:
    # given a 2-epoch job whose first delivery dies after epoch 1
    params = FinetuneJobParams(
        dataset="shapes", scale="n", config={**TINY, "epochs": 2}, model_name="resumed"
    )
    record = submit_finetune(FakeSender(), world.jobs, params)
    with pytest.raises(WorkerLostError):
        run_finetune_job(DyingContext(world.jobs, record), world.settings, load_backend)
    assert not ArtifactStore(world.store).versions("resumed")
    # when the job is delivered again
    ctx = JobContext(world.jobs, world.jobs.get(record.id))
    refs = run_finetune_job(ctx, world.settings, load_backend)
    # then only the second epoch ran, and the model was published once
    assert [entry["epoch"] for entry in ctx.record.outputs["history"]] == [2.0]
    assert refs == [f"resumed:{record.id}"]


def test_a_job_canceled_before_training_publishes_nothing(
    world: World, dataset_job: JobRecord
) -> None:
    # given
    params = FinetuneJobParams(dataset="shapes", scale="n", config=TINY, model_name="canceled")
    record = submit_finetune(FakeSender(), world.jobs, params)
    world.store.put_bytes(world.jobs.cancel_key(record.id), b"cancel")
    # when / then
    with pytest.raises(JobCanceledError):
        run_finetune_job(JobContext(world.jobs, record), world.settings, load_backend)
    assert ArtifactStore(world.store).versions("canceled") == []
