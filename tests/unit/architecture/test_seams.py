"""Each seam between services: written by its one writer, read back by its one reader.

The writer and the reader live in different services and never import each other; these
tests are the only place both sides meet, on one local-folder store.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest

from services.anomaly_map.usecases.categories import put_category
from services.anomaly_map.usecases.dataset_maps import run_dataset_maps
from services.finetune.ml.backend import PackagedDetector
from services.finetune.stores.pseudo_labels import load_pseudo_labels
from services.finetune.usecases.common import publish_detector
from services.inference.stores.models import ModelKey, ModelRegistry
from services.pipeline.params import PipelineRequest
from services.pipeline.stores.pipelines import PipelineRecord, StepState
from services.pipeline.usecases.lift_stats import lift_summary
from services.pipeline.usecases.steps import plan
from services.pretrain.config import PretrainSettings
from services.pretrain.ml.labeler import BoxLabeler
from services.pretrain.params import AgbpConfig, SourceSpec
from services.pretrain.stores.maps import collect_pairs, load_scores
from services.pretrain.usecases.pseudo_label_jobs import run_pseudo_label_job
from shared.config import CommonSettings, PathSettings
from shared.errors import InvalidInputError
from shared.imaging.intake import ImageLimits
from shared.imaging.render import encode_png
from shared.jobs.context import JobContext
from shared.jobs.runner import RunnerOptions, run_job
from shared.jobs.store import JobStore
from shared.ml.backbones.factory import available_backbones, create_backbone
from shared.schemas.artifacts import ArtifactRef
from shared.schemas.backbones import BACKBONES, backbone_spec
from shared.schemas.dataset_maps import map_keys
from shared.schemas.detector import FinetuneConfig
from shared.schemas.detector_artifact import CLASSES_FILE, ONNX_FILE, classes_json
from shared.schemas.evaluation import PER_IMAGE_FILE, ImageEval, PerImageEval, RunInfo
from shared.storage.artifacts import ArtifactStore
from shared.storage.filesystem import FileObjectStore
from tests.unit.anomaly_map.test_service_support import (
    image_bytes,
    make_engine,
    make_settings,
    small_spec,
    tiny_scorers,
)

IMAGES = "data/tile/"


def test_dataset_maps_written_by_anomaly_map_pair_in_pretrain(tmp_path: Path) -> None:
    # given: anomaly_map's dataset-map job over four images
    store = FileObjectStore(tmp_path / "store")
    settings = make_settings(tmp_path, max_batch_size=2)
    engine = make_engine(settings, store)
    tokenizer = tiny_scorers().bundle.tokenizer
    references = [("r.png", image_bytes(seed=9))]
    put_category(
        engine.categories, "tile", small_spec(), references,
        tokenizer=tokenizer, limits=ImageLimits(), max_references=4,
    )  # fmt: skip
    names = ["a.png", "b.png", "c.v2.png", "d.png"]
    for i, name in enumerate(names):
        store.put_bytes(f"{IMAGES}{name}", image_bytes(seed=i))
    jobs = JobStore(store)
    record = jobs.create(
        kind="anomaly_map_dataset", task_name="t", queue="maps",
        params={"category": "tile", "prefix": IMAGES},
    )  # fmt: skip
    run_dataset_maps(JobContext(jobs, record, min_interval_s=0.0), engine, settings)
    out = jobs.get(record.id).outputs["output_prefix"]

    # when: pretrain pairs the output
    result = collect_pairs(
        store, [SourceSpec(category="tile", images_prefix=IMAGES, maps_prefix=out)]
    )
    scores = load_scores(store, out)

    # then: every image pairs with its map through the manifest, and has its score
    report = result.reports[0]
    assert report.pairing == "manifest"
    assert report.map_job_id == record.id
    expected = map_keys([f"{IMAGES}{n}" for n in names], IMAGES, out)
    assert {p.image_key: p.map_key for p in result.pairs} == expected
    assert scores is not None
    assert all(np.isfinite(scores[f"{IMAGES}{n}"]) for n in names)


def _maps_with_blobs(store: FileObjectStore, out: str) -> None:
    """Three 200x100 images and 10x10 maps: a blob in a, nothing in b, a blob in c."""
    maps = {name: np.zeros((10, 10), np.float32) for name in ("a", "b", "c")}
    maps["a"][2:4, 3:5] = 2.0
    maps["c"][6:8, 6:8] = 2.0
    for name, amap in maps.items():
        store.put_bytes(f"{IMAGES}{name}.png", encode_png(np.zeros((100, 200, 3), np.uint8)))
        buffer = io.BytesIO()
        np.save(buffer, amap, allow_pickle=False)
        store.put_bytes(f"{out}maps/{name}.npy", buffer.getvalue())


def test_pseudo_labels_written_by_pretrain_train_finetunes_agdp(tmp_path: Path) -> None:
    # given: pretrain's pseudo-label job over maps with two blobs
    store = FileObjectStore(tmp_path / "store")
    _maps_with_blobs(store, "maps/tile/m1/")
    jobs = JobStore(store)
    params = {"category": "tile", "images_prefix": IMAGES, "maps_prefix": "maps/tile/m1/"}
    record = jobs.create(kind="pseudo_labels", task_name="t", queue="pretrain", params=params)
    settings = PretrainSettings(common=CommonSettings(paths=PathSettings(home=tmp_path / "h")))
    done = run_job(
        record.id, jobs, lambda ctx: run_pseudo_label_job(ctx, settings, BoxLabeler()),
        RunnerOptions("w"),
    )  # fmt: skip
    out = done.outputs["out_prefix"]

    # when: finetune's AGDP reader loads them
    data = load_pseudo_labels(store, IMAGES, out, tmp_path / "agdp", ImageLimits())

    # then: one class, three images, boxes exactly where the blobs were
    assert data.dataset.classes == ["anomaly"]
    boxes = {r.file_name: len(r.boxes) for r in data.dataset.images}
    assert boxes == {"a.png": 1, "b.png": 0, "c.png": 1}
    assert data.source["pseudo_label_job_id"] == record.id
    assert data.source["category"] == "tile"


def test_a_detector_published_by_finetune_is_served_by_inference(tmp_path: Path) -> None:
    # given: finetune publishes a detector version
    store = FileObjectStore(tmp_path / "store")
    packaged = PackagedDetector(
        files={ONNX_FILE: b"onnx-bytes", CLASSES_FILE: classes_json(["crack", "pit"])},
        metrics={"map50": 0.5, "map50_95": 0.3},
        classes=["crack", "pit"],
    )
    config = FinetuneConfig(scale="n", imgsz=320)
    ref = publish_detector(store, ArtifactRef(name="det", version="v1"), packaged, "finetune",
                           config, {"job_id": "j1"})  # fmt: skip

    # when: inference fetches it
    files = ModelRegistry(ArtifactStore(store), tmp_path / "cache").fetch(ModelKey("det", "v1"))

    # then: the served graph and class names are the published ones; metadata is typed
    assert files.path.read_bytes() == b"onnx-bytes"
    assert files.names == {0: "crack", 1: "pit"}
    meta = ArtifactStore(store).manifest(ref).metadata
    assert (meta["kind"], meta["imgsz"], meta["classes"]) == ("finetune", 320, ["crack", "pit"])


def _publish_with_records(store: FileObjectStore, name: str, hits: list[bool]) -> str:
    images = [
        ImageEval(file_name=f"v{i}.png", gt=[1], dets=[(0, 0.9, h)]) for i, h in enumerate(hits)
    ]
    run = RunInfo(seed=1, deterministic=True, torch_threads=2, device="cpu")
    records = PerImageEval(classes=["crack"], images=images, run=run)
    packaged = PackagedDetector(
        files={ONNX_FILE: b"onnx", CLASSES_FILE: classes_json(["crack"]),
               PER_IMAGE_FILE: records.to_bytes()},
        metrics={"map50": records.map50(), "map50_95": 0.0},
        classes=["crack"],
    )  # fmt: skip
    ref = publish_detector(store, ArtifactRef(name=name, version="v1"), packaged, "finetune",
                           FinetuneConfig(scale="n"), {"job_id": "j"})  # fmt: skip
    return str(ref)


def test_per_image_records_published_by_finetune_give_the_pipeline_its_interval(
    tmp_path: Path,
) -> None:
    # given: finetune publishes the AGSSP and the scratch detector with their records
    store = FileObjectStore(tmp_path / "store")
    ours = _publish_with_records(store, "det", [True] * 20)
    theirs = _publish_with_records(store, "det-scratch", [True] * 5 + [False] * 15)
    request = PipelineRequest.model_validate({
        "name": "det", "category": "tile", "unlabelled_prefix": "lines/",
        "labelled": {"dataset": "set"}, "maps": "tocoad",
    })  # fmt: skip
    record = PipelineRecord(id="20261201T000000-abcdef12", request=request, steps=plan(request))
    for step in record.steps:
        step.state = StepState.SUCCEEDED
    record.step("finetune").outputs = {"artifact": ours}
    record.step("baseline").outputs = {"artifact": theirs}

    # when: the pipeline's report reads them back
    summary = lift_summary(record, store)

    # then: the lift with an interval above zero, and both runs' facts
    assert summary.interval is not None, summary.reason
    assert summary.interval.lift == pytest.approx(1 - 26 / 101)  # recall 0.25: 26 of 101 points
    assert summary.interval.low > 0
    assert summary.earned
    assert summary.val_images == 20
    assert summary.runs["AGSSP"].torch_threads == 2


def test_the_backbone_table_is_what_the_factory_builds_and_the_api_accepts() -> None:
    assert set(available_backbones()) == set(BACKBONES)
    for name, spec in BACKBONES.items():
        if spec.test_only:  # real ones build too, but take seconds each
            backbone = create_backbone(name)
            assert tuple(backbone.out_indices) == spec.stages
        assert AgbpConfig(backbone=name).backbone == name
    with pytest.raises(InvalidInputError):
        backbone_spec("vgg16")
    with pytest.raises(ValueError, match="backbone"):
        AgbpConfig(backbone="vgg16")
