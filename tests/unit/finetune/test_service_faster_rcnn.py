"""Service level, no servers: the Faster R-CNN family through the same job kinds as YOLOv8.

AGBP ResNet artifact -> AGDP (one class, backbone frozen) -> finetune on two classes ->
evaluation, each submitted with the API's submission functions and run by the real job
runner on a FileObjectStore; then the published ONNX export is served by inference's
detector for its layout and gives the torch model's boxes. Tiny random ResNet, 64 px.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from services.finetune.config import FinetuneSettings
from services.finetune.ml.backend import load_backend
from services.finetune.ml.faster_rcnn.checkpoint import FasterRcnnCheckpoint, model_from_checkpoint
from services.finetune.ml.faster_rcnn.data import read_rgb
from services.finetune.ml.faster_rcnn.model import predict
from services.finetune.ml.yolo_format import yolo_label_text
from services.finetune.params import (
    AgdpJobParams,
    DatasetImportParams,
    EvaluationParams,
    FinetuneJobParams,
    InitParams,
    QuantizeParams,
)
from services.finetune.usecases.agdp_jobs import run_agdp_job, submit_agdp
from services.finetune.usecases.datasets import run_import_job, submit_import
from services.finetune.usecases.evaluations import run_evaluation_job, submit_evaluation
from services.finetune.usecases.finetune_jobs import run_finetune_job, submit_finetune
from services.finetune.usecases.quantize_jobs import submit_quantization
from services.inference.ml.boxes_detector import BoxesOnnxDetector
from services.inference.ml.detections import DetectParams
from services.inference.ml.layouts import open_onnx_detector
from shared.config import CommonSettings, PathSettings
from shared.errors import InvalidInputError
from shared.jobs.runner import RunnerOptions, run_job
from shared.jobs.store import JobStore
from shared.ml.backbones.factory import create_backbone
from shared.schemas.artifacts import ArtifactRef
from shared.schemas.detector_families import BOXES_LABELS_SCORES, OUTPUT_LAYOUT_KEY
from shared.schemas.jobs import JobRecord, JobState
from shared.storage.artifacts import ArtifactStore
from shared.storage.filesystem import FileObjectStore
from tests.unit.finetune.conftest import stage_pseudo_labelled

TINY_RESNET = "resnet18-test"
TINY = {
    "family": "faster-rcnn", "backbone": TINY_RESNET,
    "epochs": 2, "batch": 4, "imgsz": 64, "seed": 0,
}  # fmt: skip
SERVED = {"model.onnx", "classes.json", "weights.pt", "config.yaml", "metrics.json"}


class FakeSender:
    def __init__(self) -> None:
        self.sent: list[tuple[str, Any, dict[str, Any]]] = []

    def send_task(self, name: str, args: Any = None, **options: Any) -> None:
        self.sent.append((name, args, options))


class World:
    def __init__(self, root: Path) -> None:
        self.store = FileObjectStore(root / "store")
        self.jobs = JobStore(self.store)
        self.settings = FinetuneSettings(
            common=CommonSettings(paths=PathSettings(home=root / "home")),
            device="cpu",
            work_dir=str(root / "work"),
        )

    def run(self, record: JobRecord, handler: Any, *args: Any) -> JobRecord:
        def call(ctx: Any) -> list[str]:
            return handler(ctx, self.settings, *args)  # type: ignore[no-any-return]

        return run_job(record.id, self.jobs, call, RunnerOptions(worker="unit"))


def _ref(spec: str) -> ArtifactRef:
    name, _, version = spec.partition(":")
    return ArtifactRef(name=name, version=version)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    return World(tmp_path_factory.mktemp("frcnn-world"))


def _publish_backbone(world: World, name: str, backbone: str, seed: int) -> ArtifactRef:
    torch.manual_seed(seed)
    state = create_backbone(backbone, out_indices=(1, 2, 3, 4)).state_dict()
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return ArtifactStore(world.store).publish(
        name,
        {"backbone.pt": buffer.getvalue(), "config.yaml": f"backbone: {backbone}\n".encode()},
        version="20260101T000000-00000001",
        metadata={"kind": "agbp", "job_id": "pretrain-1", "backbone": backbone},
    )


@pytest.fixture(scope="module")
def agbp(world: World) -> ArtifactRef:
    return _publish_backbone(world, "agbp-resnet-test", TINY_RESNET, seed=5)


@pytest.fixture(scope="module")
def agdp_job(world: World, agbp: ArtifactRef, make_dataset: Any) -> JobRecord:
    stage_pseudo_labelled(world.store, make_dataset)
    params = AgdpJobParams(
        images_prefix="uploads/rect/",
        labels_prefix="pseudo/rect/pl-1/",
        backbone_artifact=str(agbp),
        config=TINY,
        val_fraction=0.25,
    )
    record = submit_agdp(FakeSender(), world.jobs, params)
    return world.run(record, run_agdp_job, load_backend)


@pytest.fixture(scope="module")
def dataset_job(world: World, make_dataset: Any) -> JobRecord:
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
    return world.run(submit_import(FakeSender(), world.jobs, params), run_import_job)


@pytest.fixture(scope="module")
def finetune_job(world: World, agdp_job: JobRecord, dataset_job: JobRecord) -> JobRecord:
    params = FinetuneJobParams(
        dataset="shapes",
        init=InitParams(kind="agdp", artifact="agdp-faster-rcnn"),
        config=TINY,
        model_name="shapes-frcnn",
    )
    record = submit_finetune(FakeSender(), world.jobs, params)
    return world.run(record, run_finetune_job, load_backend)


def test_agdp_starts_from_the_agbp_resnet_with_every_tensor_counted(agdp_job: JobRecord) -> None:
    assert agdp_job.state == JobState.SUCCEEDED, agdp_job.error
    transfer = agdp_job.outputs["transfer"]
    assert transfer["loaded"] == transfer["total"] > 0
    assert transfer["fraction"] == 1.0
    assert transfer["target_total"] > transfer["loaded"]  # FPN and heads start fresh


def test_agdp_publishes_a_family_tagged_one_class_detector(
    world: World, agdp_job: JobRecord
) -> None:
    ref = _ref(agdp_job.outputs["artifact"])
    assert ref.name == "agdp-faster-rcnn"
    manifest = ArtifactStore(world.store).manifest(ref)
    assert manifest.metadata["family"] == "faster-rcnn"
    assert manifest.metadata["backbone"] == TINY_RESNET
    assert manifest.metadata["scale"] is None
    assert set(manifest.files) >= SERVED
    weights = ArtifactStore(world.store).get_file_bytes(ref, "weights.pt")
    assert FasterRcnnCheckpoint.from_bytes(weights).classes == ("anomaly",)


def test_agdp_froze_the_resnet(world: World, agbp: ArtifactRef, agdp_job: JobRecord) -> None:
    artifacts = ArtifactStore(world.store)
    ref = _ref(agdp_job.outputs["artifact"])
    trained = FasterRcnnCheckpoint.from_bytes(artifacts.get_file_bytes(ref, "weights.pt"))
    start = torch.load(io.BytesIO(artifacts.get_file_bytes(agbp, "backbone.pt")))
    body = {k[len("backbone.body.") :]: v for k, v in trained.state_dict.items()
            if k.startswith("backbone.body.")}  # fmt: skip
    conv = [k for k in start if k.endswith("weight") and "bn" not in k and k in body]
    assert conv
    for key in conv:
        assert torch.equal(body[key], start[key]), key


def test_finetune_transfers_all_but_the_class_layers(finetune_job: JobRecord) -> None:
    assert finetune_job.state == JobState.SUCCEEDED, finetune_job.error
    transfer = finetune_job.outputs["transfer"]
    skipped = {name for name, _ in transfer["skipped"]}
    assert skipped == {
        "roi_heads.box_predictor.cls_score.weight", "roi_heads.box_predictor.cls_score.bias",
        "roi_heads.box_predictor.bbox_pred.weight", "roi_heads.box_predictor.bbox_pred.bias",
    }  # fmt: skip
    assert transfer["loaded"] == transfer["total"] - 4


def test_finetune_reports_map_with_the_shared_evaluator(finetune_job: JobRecord) -> None:
    metrics = finetune_job.outputs["metrics"]
    assert 0.0 <= metrics["map50"] <= 1.0
    assert set(metrics["per_class"]) == {"light", "dark"}
    assert finetune_job.outputs["epochs_completed"] == TINY["epochs"]
    assert finetune_job.outputs["eval_per_image"].endswith("eval_per_image.json")


def test_finetune_saves_its_val_evaluation_from_the_boxes_its_map_came_from(
    world: World, finetune_job: JobRecord
) -> None:
    # when the version's evaluation on val is read back (before any evaluation job)
    ref = _ref(finetune_job.outputs["artifact"])
    doc = json.loads(world.store.get_bytes(finetune_job.outputs["evaluation_key"]))
    # then the same predictions gave it: the same mAP as the version, exactly
    metrics = ArtifactStore(world.store).manifest(ref).metadata["metrics"]
    assert (doc["model"], doc["split"], doc["conf"]) == (str(ref), "val", 0.25)
    assert doc["map50"] == metrics["map50"] == finetune_job.outputs["metrics"]["map50"]
    assert finetune_job.outputs["error_totals"] == doc["errors"]["totals"]


def test_evaluation_job_reads_the_family_from_the_manifest(
    world: World, finetune_job: JobRecord
) -> None:
    params = EvaluationParams(model="shapes-frcnn", dataset="shapes", split="val")
    record = world.run(
        submit_evaluation(FakeSender(), world.jobs, params), run_evaluation_job, load_backend
    )
    assert record.state == JobState.SUCCEEDED, record.error
    assert record.outputs["map50"] == pytest.approx(finetune_job.outputs["metrics"]["map50"])


def test_int8_is_refused_for_the_family(world: World, finetune_job: JobRecord) -> None:
    params = QuantizeParams(model="shapes-frcnn", dataset="shapes")
    with pytest.raises(InvalidInputError) as caught:
        submit_quantization(FakeSender(), world.jobs, params)
    assert caught.value.code == "int8_unsupported_family"


def test_the_served_export_gives_the_torch_models_boxes(
    world: World, finetune_job: JobRecord, make_dataset: Any, tmp_path: Path
) -> None:
    artifacts = ArtifactStore(world.store)
    ref = _ref(finetune_job.outputs["artifact"])
    onnx = tmp_path / "model.onnx"
    onnx.write_bytes(artifacts.get_file_bytes(ref, "model.onnx"))
    detector = open_onnx_detector(onnx, device="cpu")
    assert isinstance(detector, BoxesOnnxDetector)
    assert detector.metadata[OUTPUT_LAYOUT_KEY] == BOXES_LABELS_SCORES
    assert dict(detector.names) == {0: "light", 1: "dark"}
    checkpoint = FasterRcnnCheckpoint.from_bytes(artifacts.get_file_bytes(ref, "weights.pt"))
    model, arch = model_from_checkpoint(checkpoint), checkpoint.architecture()
    dataset, images = make_dataset(n=3, classes=("light", "dark"), size=80, seed=9)
    seen = 0
    for image in dataset.images:
        rgb = read_rgb(images / image.file_name)
        expected = predict(model, [rgb], arch)[0]
        got = detector.detect([rgb], DetectParams(conf=0.0, iou=0.99, max_det=1000))[0]
        assert len(got) == len(expected)
        want = np.array([[b.x1, b.y1, b.x2, b.y2] for b in expected], np.float32).reshape(-1, 4)
        np.testing.assert_allclose(got.boxes, want, atol=0.5)
        assert list(got.class_ids) == [b.class_id for b in expected]
        seen += len(expected)
    assert seen, "the trained detector found no box at all: nothing was compared"


def test_a_yolo_backbone_is_refused_for_faster_rcnn(world: World, dataset_job: JobRecord) -> None:
    yolo = ArtifactStore(world.store).publish(
        "agbp-yolo", {"backbone.pt": b"x"}, version="20260101T000000-00000002",
        metadata={"kind": "agbp", "backbone": "yolov8n"},
    )  # fmt: skip
    params = FinetuneJobParams(
        dataset="shapes", init=InitParams(kind="agbp", artifact=str(yolo)), config=TINY,
        model_name="refused",
    )  # fmt: skip
    with pytest.raises(InvalidInputError) as caught:
        submit_finetune(FakeSender(), world.jobs, params)
    assert caught.value.code == "backbone_incompatible"


@pytest.mark.parametrize(
    ("config", "code"),
    [
        ({"family": "faster-rcnn", "backbone": "yolov8n"}, "invalid_config"),
        ({"family": "yolov8", "backbone": "resnet50"}, "invalid_config"),
        ({"family": "no-such-detector"}, "invalid_config"),
    ],
)
def test_configs_the_family_does_not_take_are_refused(
    world: World, dataset_job: JobRecord, config: dict[str, Any], code: str
) -> None:
    params = FinetuneJobParams(dataset="shapes", config=config, model_name="refused")
    with pytest.raises(InvalidInputError) as caught:
        submit_finetune(FakeSender(), world.jobs, params)
    assert caught.value.code == code
