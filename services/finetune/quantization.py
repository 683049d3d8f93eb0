"""The INT8 quantisation job: calibrate on the user's images, measure mAP of FP32 and INT8 on
the same split, publish the INT8 export as a new version of the same model.

The new version carries ``model.onnx`` (INT8, QDQ), ``classes.json`` and ``metrics.json``
with both mAPs and the measured speed-up, so promoting it is a decision made on numbers.
It has no torch weights: it is for serving, not for further training.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from services.finetune.config import FinetuneSettings
from services.finetune.dataset_io import load_split
from services.finetune.datasets_store import DatasetCatalog
from services.finetune.ml.evaluate import evaluate_detections
from services.finetune.ml.predict import letterbox_batch, predict_with, read_bgr
from services.finetune.ml.quantize import quantize_int8
from services.finetune.params import QuantizeParams
from services.finetune.registry import (
    CLASSES_FILE,
    METRICS_FILE,
    ONNX_FILE,
    ModelRegistry,
)
from services.finetune.training import evaluation_doc, prepare_runtime, workspace
from shared.jobs.context import JobContext
from shared.schemas.artifacts import ArtifactRef
from shared.storage.artifacts import ArtifactStore

INT8_KIND = "detector-int8"


def run_quantize_job(ctx: JobContext, settings: FinetuneSettings) -> list[str]:
    """Quantise, evaluate both, publish; outputs name the new version and both mAPs."""
    params = QuantizeParams.model_validate(ctx.params)
    prepare_runtime(settings)
    with workspace(settings, ctx.job_id) as work:
        registry = ModelRegistry(ctx.store)
        source = registry.resolve(params.model)
        fp32 = work / "fp32.onnx"
        fp32.write_bytes(registry.artifacts.get_file_bytes(source, ONNX_FILE))
        imgsz = int(registry.artifacts.manifest(source).metadata.get("imgsz", 640))
        ctx.progress(10, "calibrating on the user's images", force=True)
        calibration = _calibration(ctx, params, imgsz, work)
        int8 = quantize_int8(fp32, work / ONNX_FILE, calibration, method=params.method)
        ctx.progress(50, f"evaluating FP32 and INT8 on {params.eval_split!r}", force=True)
        metrics = _compare(ctx, params, fp32, int8, imgsz, settings, work)
        ref = _publish(ctx, registry, source, int8, metrics, params)
    outputs = {"model": str(ref), "source": str(source), **_summary(metrics)}
    ctx.set_outputs(**outputs)
    return [str(ref)]


def _calibration(
    ctx: JobContext, params: QuantizeParams, imgsz: int, work: Path
) -> list[np.ndarray]:
    dataset = DatasetCatalog(ctx.store).resolve(params.dataset)
    subset, images = load_split(ctx.store, dataset, params.calibration_split, work / "calib")
    names = [im.file_name for im in subset.images]
    order = np.random.default_rng(0).permutation(len(names))[: params.calibration_images]
    return [letterbox_batch([read_bgr(images / names[i])], imgsz).numpy() for i in order]


def _compare(
    ctx: JobContext,
    params: QuantizeParams,
    fp32: Path,
    int8: Path,
    imgsz: int,
    settings: FinetuneSettings,
    work: Path,
) -> dict[str, Any]:
    dataset = DatasetCatalog(ctx.store).resolve(params.dataset)
    subset, images = load_split(ctx.store, dataset, params.eval_split, work / "eval")
    found: dict[str, Any] = {}
    for label, path in (("fp32", fp32), ("int8", int8)):
        forward, seconds = onnx_forward(path)
        predictions = predict_with(forward, subset, images, 0.001, 0.7, imgsz, settings.eval_batch)
        found[label] = {**evaluation_doc(evaluate_detections(subset, predictions))}
        found[label]["model_seconds"] = round(sum(seconds), 4)
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


def onnx_forward(path: Path) -> tuple[Any, list[float]]:
    """A forward function for ``predict_with`` on ONNX Runtime (CPU), timing every call."""
    import onnxruntime as ort
    import torch

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    seconds: list[float] = []

    def forward(x: torch.Tensor) -> torch.Tensor:
        started = time.perf_counter()
        (out,) = session.run(None, {name: x.numpy()})[:1]
        seconds.append(time.perf_counter() - started)
        return torch.from_numpy(np.asarray(out))

    return forward, seconds


def _publish(
    ctx: JobContext,
    registry: ModelRegistry,
    source: ArtifactRef,
    int8: Path,
    metrics: dict[str, Any],
    params: QuantizeParams,
) -> ArtifactRef:
    manifest = registry.artifacts.manifest(source)
    classes = registry.classes(source)
    files: dict[str, bytes | Path] = {
        ONNX_FILE: int8,
        CLASSES_FILE: json.dumps(classes).encode(),
        METRICS_FILE: json.dumps(metrics, indent=1).encode(),
    }
    metadata = {
        "kind": INT8_KIND,
        "job_id": ctx.job_id,
        "scale": manifest.metadata.get("scale"),
        "imgsz": manifest.metadata.get("imgsz"),
        "classes": classes,
        "metrics": {"map50": metrics["map50"], "map50_95": metrics["map50_95"]},
        "map50_fp32": metrics["fp32"]["map50"],
        "lineage": {
            "job_id": ctx.job_id,
            "quantized_from": str(source),
            "calibration": {"dataset": params.dataset, **metrics["calibration"]},
        },
    }
    # version = job id, as every job of this service: a redelivered job republishes the same
    return ArtifactStore(ctx.store).publish(
        source.name, files, version=ctx.job_id, metadata=metadata
    )


def _summary(metrics: dict[str, Any]) -> dict[str, Any]:
    return {
        "map50_fp32": metrics["fp32"]["map50"],
        "map50_int8": metrics["int8"]["map50"],
        "map50_drop": metrics["map50_drop"],
        "speedup": metrics["speedup"],
    }
