"""The INT8 quantisation job: calibrate on the user's images, check the INT8 model against FP32
on them, measure mAP of FP32 and INT8 on the same split, publish the INT8 export as a new
version of the same model.

The new version carries the served files of ``shared.schemas.detector_artifact`` (an INT8,
QDQ graph in a scheme exact on every CPU, named in its metadata) and its metrics file with
both mAPs, the measured speed-up and the calibration-image errors, so promoting it is a
decision made on numbers. A model off FP32 beyond the stated tolerance is not published: the
job fails with code ``int8_accuracy``. It has no torch weights: it is for serving, not for
further training.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from services.finetune.config import FinetuneSettings
from services.finetune.ml.backend import (
    Backends,
    DetectorBackend,
    QuantizedDetector,
    model_family,
)
from services.finetune.params import QuantizeParams
from services.finetune.stores.datasets import DatasetCatalog, load_split
from services.finetune.stores.models import ModelRegistry
from services.finetune.usecases.common import detector_ref, submit, workspace
from shared.errors import InvalidInputError, SuiteError
from shared.jobs.context import JobContext
from shared.jobs.producer import TaskSender
from shared.jobs.store import JobStore
from shared.schemas.artifacts import ArtifactRef
from shared.schemas.detector_artifact import (
    CLASSES_FILE,
    INT8_KIND,
    METRICS_FILE,
    ONNX_FILE,
    DetectorMetadata,
    classes_json,
)
from shared.schemas.detector_families import FAMILIES, detector_family
from shared.schemas.jobs import JobRecord, TaskName
from shared.storage.artifacts import ArtifactStore

QUANTIZE_KIND = "quantize-int8"


def submit_quantization(sender: TaskSender, jobs: JobStore, params: QuantizeParams) -> JobRecord:
    """Queue INT8 quantisation of a detector; model, dataset and both splits must exist.

    Raises:
        InvalidInputError: unknown split, class mismatch, or the version is not a detector.
        NotFoundError: unknown model or dataset.
    """
    registry, catalog = ModelRegistry(jobs.store), DatasetCatalog(jobs.store)
    model = detector_ref(registry, params.model)
    family = detector_family(model_family(registry.artifacts.manifest(model).metadata))
    if not family.int8:
        raise InvalidInputError(
            f"{model} is a {family.label} detector; INT8 quantisation supports "
            f"{[f.label for f in FAMILIES.values() if f.int8]}",
            code="int8_unsupported_family",
        )
    dataset = catalog.resolve(params.dataset)
    for split in (params.calibration_split, params.eval_split):
        catalog.check_split(dataset, split)
    if registry.classes(model) != catalog.manifest(dataset).get("classes"):
        raise InvalidInputError(
            f"model {model} and dataset {dataset} have different classes", code="class_mismatch"
        )
    stored = params.model_copy(update={"model": str(model), "dataset": str(dataset)})
    task = TaskName.FINETUNE_QUANTIZE
    return submit(sender, jobs, QUANTIZE_KIND, task, stored.model_dump(mode="json"))


def run_quantize_job(ctx: JobContext, settings: FinetuneSettings, backends: Backends) -> list[str]:
    """Quantise, evaluate both, publish; outputs name the new version and both mAPs."""
    params = QuantizeParams.model_validate(ctx.params)
    registry = ModelRegistry(ctx.store)
    source = registry.resolve(params.model)
    backend = backends(model_family(registry.artifacts.manifest(source).metadata))
    backend.prepare(settings)
    with workspace(settings, ctx.job_id) as work:
        fp32 = work / "fp32.onnx"
        fp32.write_bytes(registry.artifacts.get_file_bytes(source, ONNX_FILE))
        imgsz = int(registry.artifacts.manifest(source).metadata.get("imgsz", 640))
        ctx.progress(10, "calibrating on the user's images", force=True)
        calibration = _calibration(ctx, params, work)
        quantized = backend.quantize(fp32, work / ONNX_FILE, calibration, imgsz, params.method)
        _check_accuracy(ctx, quantized)
        ctx.progress(50, f"evaluating FP32 and INT8 on {params.eval_split!r}", force=True)
        metrics = _compare(ctx, params, (fp32, quantized.path), imgsz, settings, work, backend)
        metrics["int8_check"] = _check_doc(quantized)
        ref = _publish(ctx, registry, source, quantized, metrics, params)
    outputs = {"model": str(ref), "source": str(source), **_summary(metrics)}
    ctx.set_outputs(**outputs)
    return [str(ref)]


def _check_doc(quantized: QuantizedDetector) -> dict[str, Any]:
    return {
        "scheme": quantized.scheme,
        "images": quantized.images,
        "errors": {k: round(v, 6) for k, v in quantized.errors.items()},
        "tolerance": quantized.tolerance,
    }


def _check_accuracy(ctx: JobContext, quantized: QuantizedDetector) -> None:
    """Record the INT8 errors on the calibration images; refuse a model beyond tolerance.

    Raises:
        SuiteError: code ``int8_accuracy``, naming each measure over its limit.
    """
    errors = {f"int8_{k}": round(v, 6) for k, v in quantized.errors.items()}
    ctx.progress(40, f"INT8 ({quantized.scheme}) checked against FP32", metrics=errors)
    if not quantized.over_tolerance:
        return
    over = ", ".join(
        f"{k} {v:.4g} > {quantized.tolerance[k]:g}" for k, v in quantized.over_tolerance.items()
    )
    measured = ", ".join(f"{k} {v:.4g}" for k, v in quantized.errors.items())
    raise SuiteError(
        f"the INT8 model ({quantized.scheme}) is off its FP32 source beyond the stated "
        f"tolerance on {quantized.images} calibration images ({over}; measured {measured}); "
        "it was not published",
        code="int8_accuracy",
    )


def _calibration(ctx: JobContext, params: QuantizeParams, work: Path) -> list[Path]:
    """A seeded sample of the calibration split's images (the same on every delivery)."""
    dataset = DatasetCatalog(ctx.store).resolve(params.dataset)
    subset, images = load_split(ctx.store, dataset, params.calibration_split, work / "calib")
    names = [im.file_name for im in subset.images]
    order = np.random.default_rng(0).permutation(len(names))[: params.calibration_images]
    return [images / names[i] for i in order]


def _compare(
    ctx: JobContext,
    params: QuantizeParams,
    models: tuple[Path, Path],
    imgsz: int,
    settings: FinetuneSettings,
    work: Path,
    backend: DetectorBackend,
) -> dict[str, Any]:
    dataset = DatasetCatalog(ctx.store).resolve(params.dataset)
    subset, images = load_split(ctx.store, dataset, params.eval_split, work / "eval")
    found: dict[str, Any] = {}
    for label, path in zip(("fp32", "int8"), models, strict=True):
        doc, seconds = backend.evaluate_onnx(path, subset, images, imgsz, settings)
        found[label] = {**doc, "model_seconds": round(seconds, 4)}
    fp32_s, int8_s = found["fp32"]["model_seconds"], found["int8"]["model_seconds"]
    return {
        "map50": found["int8"]["map50"],
        "map50_95": found["int8"]["map50_95"],
        "fp32": found["fp32"],
        "int8": found["int8"],
        "map50_drop": round(found["fp32"]["map50"] - found["int8"]["map50"], 5),
        "speedup": round(fp32_s / int8_s, 3) if int8_s > 0 else None,
        "evaluated_on": {"dataset": str(dataset), "split": params.eval_split},
        "evaluated_at": datetime.now(UTC).isoformat(),
        "calibration": {
            "split": params.calibration_split,
            "images": params.calibration_images,
            "method": params.method,
        },
    }


def _publish(
    ctx: JobContext,
    registry: ModelRegistry,
    source: ArtifactRef,
    quantized: QuantizedDetector,
    metrics: dict[str, Any],
    params: QuantizeParams,
) -> ArtifactRef:
    manifest = registry.artifacts.manifest(source)
    classes = registry.classes(source)
    files: dict[str, bytes | Path] = {
        ONNX_FILE: quantized.path,
        CLASSES_FILE: classes_json(classes),
        METRICS_FILE: json.dumps(metrics, indent=1).encode(),
    }
    metadata = DetectorMetadata(
        kind=INT8_KIND,
        job_id=ctx.job_id,
        scale=manifest.metadata.get("scale"),
        imgsz=manifest.metadata.get("imgsz"),
        classes=classes,
        metrics={"map50": metrics["map50"], "map50_95": metrics["map50_95"]},
        map50_fp32=metrics["fp32"]["map50"],
        int8_scheme=quantized.scheme,
        lineage={
            "job_id": ctx.job_id,
            "quantized_from": str(source),
            "calibration": {"dataset": params.dataset, **metrics["calibration"]},
        },
    )
    # version = job id, as every job of this service: a redelivered job republishes the same
    return ArtifactStore(ctx.store).publish(
        source.name, files, version=ctx.job_id, metadata=metadata.model_dump(mode="json")
    )


def _summary(metrics: dict[str, Any]) -> dict[str, Any]:
    return {
        "map50_fp32": metrics["fp32"]["map50"],
        "map50_int8": metrics["int8"]["map50"],
        "map50_drop": metrics["map50_drop"],
        "speedup": metrics["speedup"],
        "int8_scheme": metrics["int8_check"]["scheme"],
    }
