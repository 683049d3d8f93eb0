"""FP32 vs INT8 mAP@0.5 on a NEU-DET validation split, for ``benchmarks.detect``.

A YOLOv8n is finetuned from scratch for a few CPU epochs through the finetune service's own
paths (VOC import with its 90/10 split, ultralytics training, ONNX export); enough to compare
the two precisions, not to reach paper accuracy. The FP32 export is cached under ``var/`` by
its settings, so a rerun skips the training. INT8 is ``services.finetune.ml.yolov8.quantize``
calibrated on training images, then both are scored with the same COCO evaluation.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
NEU_DET = ROOT.parent / "shared" / "data" / "neu-det"
CACHE = ROOT / "var" / "bench-detect"


def _settings(work: Path) -> Any:
    from services.finetune.config import FinetuneSettings
    from shared.config import CommonSettings, PathSettings

    return FinetuneSettings(
        common=CommonSettings(paths=PathSettings(home=work)), device="cpu", work_dir=str(work)
    )


def _train(data: Path, cache: Path, fields: dict[str, Any], max_train: int | None) -> float:
    """Import NEU-DET, train from scratch, export ``cache/fp32.onnx``; returns seconds."""
    from services.finetune.ml.backend import TrainRequest
    from services.finetune.ml.config import FinetuneConfig
    from services.finetune.ml.materialize import materialize_yolo
    from services.finetune.ml.yolov8.checkpoint import DetectorCheckpoint
    from services.finetune.ml.yolov8.detector import detector_from_checkpoint
    from services.finetune.ml.yolov8.export import export_onnx
    from services.finetune.params import DatasetImportParams
    from services.finetune.runtime.yolo_backend import TORCH
    from services.finetune.stores.datasets import load_split
    from services.finetune.usecases.comparisons import parse_inits
    from services.finetune.usecases.datasets import import_local_dataset
    from shared.ml.hooks import TrainHooks
    from shared.storage.filesystem import FileObjectStore

    started = time.perf_counter()
    settings = _settings(cache / "work")
    TORCH.prepare(settings)
    store = FileObjectStore(cache / "store")
    params = DatasetImportParams(
        name="neu-det",
        prefix="local/",
        format="voc",
        val_fraction=0.1,
        seed=fields["seed"],
        split_method="shuffle",  # the split of the committed results
    )
    ref, _ = import_local_dataset(store, data, params, "bench", settings)
    train, images = load_split(store, ref, "train", cache / "data")
    if max_train is not None:
        train = train.subset([im.file_name for im in train.images[:max_train]])
    val, _ = load_split(store, ref, "val", cache / "data")
    folder = materialize_yolo(train, val, images, cache / "yolo")
    config = FinetuneConfig(**fields, device="cpu", workers=0)
    init = parse_inits("scratch")[0].init
    report = TrainHooks(on_progress=lambda pct, msg, _: print(f"  finetune: {msg}", flush=True))
    request = TrainRequest(store, init, folder, cache / "run", config, report, settings)
    run = TORCH.train(request)
    detector = detector_from_checkpoint(DetectorCheckpoint.from_bytes(run.weights, "run"))
    export_onnx(detector, cache / "fp32.onnx", imgsz=fields["imgsz"], work_dir=cache / "export")
    return time.perf_counter() - started


def _subset_dataset(cache: Path, split: str) -> tuple[Any, Path]:
    from services.finetune.stores.datasets import DatasetCatalog, load_split
    from shared.storage.filesystem import FileObjectStore

    store = FileObjectStore(cache / "store")
    ref = DatasetCatalog(store).resolve("neu-det")
    return load_split(store, ref, split, cache / "data")


def _score(onnx: Path, cache: Path, imgsz: int) -> dict[str, float]:
    from services.finetune.ml.evaluate import evaluate_detections
    from services.finetune.ml.yolov8.predict import predict_with
    from services.finetune.runtime.yolo_backend import onnx_forward

    val, images = _subset_dataset(cache, "val")
    forward, seconds = onnx_forward(onnx)
    predictions = predict_with(forward, val, images, 0.001, 0.7, imgsz, 8)
    result = evaluate_detections(val, predictions)
    return {
        "map50": round(result.map50, 5),
        "map50_95": round(result.map50_95, 5),
        "model_s": round(sum(seconds), 3),
        "images": len(val.images),
    }


def measure_int8_accuracy(
    *, epochs: int, imgsz: int, batch: int, calibration: int, max_train: int | None, seed: int = 0
) -> dict[str, Any]:
    """Train (or reuse the cached model), quantise, score both; the ``int8`` result block."""
    from services.finetune.ml.image_files import read_bgr
    from services.finetune.ml.yolov8.predict import letterbox_batch
    from services.finetune.ml.yolov8.quantize import quantize_int8

    if not (NEU_DET / "annotations").is_dir():
        return {"skipped": f"NEU-DET not found at {NEU_DET}"}
    fields = {"scale": "n", "epochs": epochs, "imgsz": imgsz, "batch": batch, "seed": seed}
    key = f"neu-n-e{epochs}-i{imgsz}-b{batch}-s{seed}-t{max_train or 'all'}"
    cache = CACHE / key
    train_s = None
    if not (cache / "fp32.onnx").is_file():
        shutil.rmtree(cache, ignore_errors=True)  # a run that died half-way starts over
        train_s = round(_train(NEU_DET, cache, fields, max_train), 1)
        (cache / "trained.json").write_text(json.dumps({**fields, "train_s": train_s}))
    train, images = _subset_dataset(cache, "train")
    order = np.random.default_rng(0).permutation(len(train.images))[:calibration]
    batches = [
        letterbox_batch([read_bgr(images / train.images[i].file_name)], imgsz).numpy()
        for i in order
    ]
    int8 = quantize_int8(cache / "fp32.onnx", cache / "int8.onnx", batches)
    fp32_score, int8_score = _score(cache / "fp32.onnx", cache, imgsz), _score(int8, cache, imgsz)
    return {
        "map50_fp32": fp32_score["map50"],
        "map50_int8": int8_score["map50"],
        "map50_95_fp32": fp32_score["map50_95"],
        "map50_95_int8": int8_score["map50_95"],
        "map50_drop_points": round(100 * (fp32_score["map50"] - int8_score["map50"]), 2),
        "speedup": round(fp32_score["model_s"] / max(int8_score["model_s"], 1e-9), 3),
        "speedup_note": "ONNX Runtime CPU model time over the val split at batch 8, same session "
        "options, INT8 over FP32 (the service rows measure serving speed on 640 px exports)",
        "model": {"scale": "n", "init": "scratch", **fields, "max_train_images": max_train},
        "val_images": fp32_score["images"],
        "calibration_images": len(batches),
        "train_s": train_s,
        "cached_model": str(cache.relative_to(ROOT)),
    }
