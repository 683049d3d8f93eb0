"""The INT8 quantisation job, run by the real job runner on a tiny finetuned YOLOv8n.

Reuses the pipeline module's fixtures (import -> AGDP -> finetune on a synthetic set).
"""

from __future__ import annotations

import json

import onnxruntime as ort
import pytest

from services.finetune.ml.backend import load_backend
from services.finetune.ml.yolov8.quantize import INT8_TOLERANCE
from services.finetune.params import QuantizeParams
from services.finetune.usecases.quantize_jobs import run_quantize_job, submit_quantization
from shared.errors import InvalidInputError
from shared.schemas.artifacts import ArtifactRef
from shared.schemas.detector_artifact import INT8_KIND, U8S8_RR7
from shared.schemas.jobs import JobRecord, JobState, TaskName
from shared.storage.artifacts import ArtifactStore
from tests.unit.finetune.test_service_pipeline import (  # noqa: F401  (fixtures)
    FakeSender,
    World,
    agbp,
    agdp_job,
    dataset_job,
    finetune_job,
    world,
)


@pytest.fixture(scope="module")
def quantize_job(world: World, finetune_job: JobRecord) -> tuple[JobRecord, FakeSender]:  # noqa: F811
    sender = FakeSender()
    params = QuantizeParams(
        model="shapes-yolov8n", dataset="shapes", calibration_split="train", calibration_images=4
    )
    record = submit_quantization(sender, world.jobs, params)
    return world.run(record, run_quantize_job, load_backend), sender


def test_the_int8_model_is_a_new_version_with_both_maps(
    world: World,  # noqa: F811
    quantize_job: tuple[JobRecord, FakeSender],
    finetune_job: JobRecord,  # noqa: F811
) -> None:
    record, sender = quantize_job
    assert record.state == JobState.SUCCEEDED, record.error
    assert sender.sent[0][0] == TaskName.FINETUNE_QUANTIZE.value
    name, version = record.outputs["model"].split(":")
    assert name == "shapes-yolov8n"
    assert version != finetune_job.id  # a new version beside the FP32 one
    artifacts = ArtifactStore(world.store)
    ref = ArtifactRef(name=name, version=version)
    manifest = artifacts.manifest(ref)
    assert manifest.metadata["kind"] == INT8_KIND
    assert manifest.metadata["lineage"]["quantized_from"] == f"shapes-yolov8n:{finetune_job.id}"
    metrics = json.loads(artifacts.get_file_bytes(ref, "metrics.json"))
    assert 0.0 <= metrics["fp32"]["map50"] <= 1.0
    assert 0.0 <= metrics["int8"]["map50"] <= 1.0
    assert metrics["map50"] == metrics["int8"]["map50"] == record.outputs["map50_int8"]
    assert record.outputs["map50_fp32"] == metrics["fp32"]["map50"]
    assert metrics["speedup"] > 0
    # the INT8 export is servable: ONNX Runtime opens it and keeps the class names
    onnx_bytes = artifacts.get_file_bytes(ref, "model.onnx")
    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    assert "light" in session.get_modelmeta().custom_metadata_map["names"]
    assert json.loads(artifacts.get_file_bytes(ref, "classes.json")) == ["light", "dark"]


def test_the_int8_version_records_its_scheme_and_its_check_against_fp32(
    world: World,  # noqa: F811
    quantize_job: tuple[JobRecord, FakeSender],
) -> None:
    record, _ = quantize_job
    name, version = record.outputs["model"].split(":")
    ref = ArtifactRef(name=name, version=version)
    artifacts = ArtifactStore(world.store)
    # the scheme safe on every CPU, in the manifest, the ONNX metadata and the outputs
    assert artifacts.manifest(ref).metadata["int8_scheme"] == U8S8_RR7
    session = ort.InferenceSession(
        artifacts.get_file_bytes(ref, "model.onnx"), providers=["CPUExecutionProvider"]
    )
    assert session.get_modelmeta().custom_metadata_map["int8_scheme"] == U8S8_RR7
    assert record.outputs["int8_scheme"] == U8S8_RR7
    # and the errors on the calibration images, within the stated tolerance
    check = json.loads(artifacts.get_file_bytes(ref, "metrics.json"))["int8_check"]
    assert check["scheme"] == U8S8_RR7
    assert check["images"] == 4
    assert check["tolerance"] == INT8_TOLERANCE
    assert all(check["errors"][k] <= limit for k, limit in INT8_TOLERANCE.items()), check
    assert record.metrics["int8_score_p99"] == check["errors"]["score_p99"]


def test_a_model_beyond_the_int8_tolerance_is_not_published(
    world: World,  # noqa: F811
    finetune_job: JobRecord,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # given a tolerance no INT8 model meets (the real check, measured on the real model)
    monkeypatch.setitem(INT8_TOLERANCE, "score_p99", 0.0)
    artifacts = ArtifactStore(world.store)
    before = artifacts.versions("shapes-yolov8n")
    params = QuantizeParams(
        model=f"shapes-yolov8n:{finetune_job.id}",  # the FP32 version (LATEST may be INT8)
        dataset="shapes",
        calibration_split="train",
        calibration_images=4,
    )
    # when
    record = world.run(
        submit_quantization(FakeSender(), world.jobs, params), run_quantize_job, load_backend
    )
    # then the job failed with the code and the measured errors, and published nothing
    assert record.state == JobState.FAILED
    assert record.error_code == "int8_accuracy"
    assert record.error is not None
    assert "score_p99" in record.error
    assert "> 0" in record.error
    assert "not published" in record.error
    assert artifacts.versions("shapes-yolov8n") == before


def test_quantisation_refuses_an_unknown_split(world: World, finetune_job: JobRecord) -> None:  # noqa: F811
    params = QuantizeParams(model="shapes-yolov8n", dataset="shapes", eval_split="nope")
    with pytest.raises(InvalidInputError):
        submit_quantization(FakeSender(), world.jobs, params)
