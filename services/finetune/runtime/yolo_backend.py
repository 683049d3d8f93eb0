"""The YOLOv8 family's torch side (``DetectorBackend``): training, export, evaluation, INT8.

Only the worker and the CLI import this module; the job kinds receive it through
``ml.backend.load_backend`` (the detector-family table's row), so the API that submits
their jobs never loads torch or ultralytics.
"""

from __future__ import annotations

import functools
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from services.finetune.config import FinetuneSettings
from services.finetune.ml.backend import (
    PackagedDetector,
    QuantizedDetector,
    SplitPredictions,
    TrainedRun,
    TrainRequest,
    ValEvaluation,
    WeightsInfo,
)
from services.finetune.ml.dataset import DetectionDataset
from services.finetune.ml.evaluate import EvalResult, evaluate_detections
from services.finetune.ml.image_files import read_bgr
from services.finetune.ml.yolov8.checkpoint import DetectorCheckpoint
from services.finetune.ml.yolov8.detector import (
    BackboneInit,
    CheckpointPathInit,
    Detector,
    DetectorInit,
    InitSpec,
    TransferReport,
    build_detector,
    detector_from_checkpoint,
)
from services.finetune.ml.yolov8.export import check_onnx_matches, export_onnx
from services.finetune.ml.yolov8.offline import configure_ultralytics_offline
from services.finetune.ml.yolov8.predict import (
    evaluate_detector,
    letterbox_batch,
    predict_dataset,
    predict_with,
)
from services.finetune.ml.yolov8.quantize import (
    CHECK_IMAGES,
    INT8_TOLERANCE,
    SAFE_SCHEME,
    measure_int8_errors,
    over_tolerance,
    quantize_int8,
)
from services.finetune.ml.yolov8.train import TrainResult, resume_training, run_training
from services.finetune.params import CalibrationMethod, InitParams
from services.finetune.runtime.start_weights import (
    artifact_file,
    backbone_tensors,
    local_checkpoint_path,
    transfer_doc,
)
from services.finetune.stores.models import ModelRegistry
from shared.errors import SuiteError, UnavailableError
from shared.ml.device import resolve_device
from shared.schemas.artifacts import ArtifactRef
from shared.schemas.detector import DetectorTrainConfig
from shared.schemas.detector_artifact import (
    CLASSES_FILE,
    CONFIG_FILE,
    METRICS_FILE,
    ONNX_FILE,
    PT_FILE,
    WEIGHTS_FILE,
    classes_json,
)
from shared.schemas.evaluation import PER_IMAGE_FILE, PerImageEval, RunInfo
from shared.storage.base import ObjectStore

log = logging.getLogger(__name__)
DEFAULT_IMGSZ = 640  # what ultralytics trains at when a checkpoint's config names none


class TorchBackend:
    """``DetectorBackend`` on PyTorch, ultralytics and ONNX Runtime."""

    def prepare(self, settings: FinetuneSettings) -> None:
        """ultralytics offline (before its first import) and the device checked.

        Raises:
            UnavailableError: FINETUNE_DEVICE names a device this machine lacks.
        """
        _offline(settings.ultralytics_dir())
        try:
            resolve_device(settings.device)
        except RuntimeError as exc:
            raise UnavailableError(str(exc), code="device_unavailable") from exc

    def train(self, request: TrainRequest) -> TrainedRun:
        """Resume from ``hooks.resume_state`` or build the detector from the init and train.

        Class-logit convs whose class count differs keep their fresh init (agssp-spec §5.3).
        """
        hooks, data, config = request.hooks, request.data, request.config
        if hooks.resume_state and hooks.resume_state.get("path"):
            log.info("resuming from %s", hooks.resume_state["path"])
            last = Path(hooks.resume_state["path"])
            return _trained(resume_training(last, data, request.work, config, hooks))
        init = resolve_init(request.store, request.init, request.settings, request.local_ok)
        detector = build_detector(config.scale, len(data.classes), init, data.classes, config.seed)
        request.on_transfer(transfer_summary(detector.report))
        return _trained(run_training(detector, data, request.work, config, hooks))

    def package(
        self,
        run: TrainedRun,
        val: DetectionDataset,
        images_dir: Path,
        work: Path,
        settings: FinetuneSettings,
        config: DetectorTrainConfig,
    ) -> PackagedDetector:
        """ONNX export (dynamic batch) checked against torch, evaluation on ``val``, files.

        The evaluation's per-image records go into the artifact as ``eval_per_image.json``
        with the run's seed and thread count (issue 21: a lift with its interval, and runs
        that can be repeated); its boxes come back for the version's saved evaluation.

        Raises:
            SuiteError: ONNX Runtime disagrees with torch on a val image (code onnx_mismatch).
        """
        checkpoint = DetectorCheckpoint.from_bytes(run.weights, source=WEIGHTS_FILE)
        detector = detector_from_checkpoint(checkpoint)
        onnx = export_onnx(
            detector, work / ONNX_FILE, imgsz=config.imgsz, work_dir=work / "scratch"
        )
        sample = [read_bgr(images_dir / im.file_name) for im in val.images[:2]]
        check = check_onnx_matches(detector, onnx, sample, imgsz=config.imgsz)
        if not check.matches:
            raise SuiteError(
                f"ONNX export differs from torch by {check.max_abs_diff:.3g}", code="onnx_mismatch"
            )
        predicted = self.predict(run.weights, val, images_dir, config.imgsz, settings)
        result = evaluate_detections(val, predicted.boxes, max_dets=predicted.max_dets)
        run_info = RunInfo(
            seed=config.seed,
            deterministic=config.deterministic,
            torch_threads=run.torch_threads,
            device=str(resolve_device(config.device)),
        )
        records = result.records or PerImageEval(classes=list(val.classes), images=[])
        metrics = {
            **evaluation_doc(result),
            "run": run_info.model_dump(mode="json"),
            "evaluated_on": {"split": "val", "images": len(val.images)},
            "epochs_completed": run.epochs_completed,
            "ultralytics_val": run.checkpoint_metrics,
            "history": run.history,
            "onnx_check": {"max_abs_diff": check.max_abs_diff, "matches": check.matches},
        }
        files = _files(run, onnx, config, metrics)
        files[PER_IMAGE_FILE] = records.model_copy(update={"run": run_info}).to_bytes()
        return PackagedDetector(files, metrics, run.classes, ValEvaluation(predicted, result))

    def read_weights(self, weights: bytes, source: str) -> WeightsInfo:
        checkpoint = DetectorCheckpoint.from_bytes(weights, source=source)
        imgsz = int(checkpoint.config.get("imgsz", DEFAULT_IMGSZ))
        return WeightsInfo(list(checkpoint.classes), imgsz)

    def evaluate(
        self,
        weights: bytes,
        subset: DetectionDataset,
        images_dir: Path,
        imgsz: int,
        settings: FinetuneSettings,
    ) -> dict[str, Any]:
        """COCO mAP with pycocotools (not ultralytics' own figures)."""
        return evaluation_doc(_evaluate(weights, subset, images_dir, imgsz, settings))

    def predict(
        self,
        weights: bytes,
        subset: DetectionDataset,
        images_dir: Path,
        imgsz: int,
        settings: FinetuneSettings,
    ) -> SplitPredictions:
        """The boxes ``evaluate`` scores (score 0.001, NMS IoU 0.7, agssp-spec §5.1)."""
        batch, device = settings.eval_batch, settings.device
        boxes = predict_dataset(
            _detector(weights), subset, images_dir, imgsz=imgsz, batch=batch, device=device
        )
        return SplitPredictions(boxes)

    def quantize(
        self,
        fp32: Path,
        out: Path,
        calibration: list[Path],
        imgsz: int,
        method: CalibrationMethod,
    ) -> QuantizedDetector:
        """INT8 in the scheme safe on every CPU, measured against ``fp32`` on the same images."""
        batches = [letterbox_batch([read_bgr(path)], imgsz).numpy() for path in calibration]
        int8 = quantize_int8(fp32, out, batches, method=method, scheme=SAFE_SCHEME)
        checked = batches[:CHECK_IMAGES]
        errors = measure_int8_errors(fp32, int8, checked, imgsz)
        return QuantizedDetector(
            int8, SAFE_SCHEME, errors, dict(INT8_TOLERANCE), over_tolerance(errors), len(checked)
        )

    def evaluate_onnx(
        self,
        model: Path,
        subset: DetectionDataset,
        images_dir: Path,
        imgsz: int,
        settings: FinetuneSettings,
    ) -> tuple[dict[str, Any], float]:
        forward, seconds = onnx_forward(model)
        predictions = predict_with(
            forward, subset, images_dir, 0.001, 0.7, imgsz, settings.eval_batch
        )
        return evaluation_doc(evaluate_detections(subset, predictions)), sum(seconds)


TORCH = TorchBackend()


def _evaluate(
    weights: bytes,
    subset: DetectionDataset,
    images_dir: Path,
    imgsz: int,
    settings: FinetuneSettings,
) -> EvalResult:
    return evaluate_detector(
        _detector(weights), subset, images_dir, imgsz, settings.eval_batch, settings.device
    )


def _detector(weights: bytes) -> Detector:
    """The stored weights as a detector (the one place the backend reads a checkpoint)."""
    return detector_from_checkpoint(DetectorCheckpoint.from_bytes(weights, source=WEIGHTS_FILE))


@functools.cache
def _offline(config_dir: Path) -> Path:
    return configure_ultralytics_offline(config_dir)


def _trained(result: TrainResult) -> TrainedRun:
    pt_file = result.best_pt if result.best_pt.is_file() else result.last_pt
    return TrainedRun(
        weights=result.checkpoint.to_bytes(),
        pt_file=pt_file,
        classes=list(result.checkpoint.classes),
        epochs_completed=result.epochs_completed,
        canceled=result.canceled,
        history=result.history,
        transfer=transfer_summary(result.transfer),
        checkpoint_metrics=dict(result.checkpoint.metrics),
        # the count the run trained with (ultralytics' select_device set it, then ours)
        torch_threads=torch.get_num_threads(),
    )


def _files(
    run: TrainedRun, onnx: Path, config: DetectorTrainConfig, metrics: dict[str, Any]
) -> dict[str, bytes | Path]:
    """The detector artifact's files (``shared.schemas.detector_artifact``)."""
    config_doc = yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
    return {
        PT_FILE: run.pt_file,
        ONNX_FILE: onnx,
        WEIGHTS_FILE: run.weights,
        CLASSES_FILE: classes_json(run.classes),
        CONFIG_FILE: config_doc.encode(),
        METRICS_FILE: json.dumps(metrics, indent=1).encode(),
    }


def resolve_init(
    store: ObjectStore, init: InitParams, settings: FinetuneSettings, local_ok: bool = False
) -> InitSpec:
    """The ml ``InitSpec`` an ``InitParams`` names; artifact tensors load with weights_only.

    Args:
        local_ok: accept checkpoint paths outside AGSSP_MODEL_DIR (the CLI, run by the user).

    Raises:
        InvalidInputError: the artifact lacks the weights file, or the path is not allowed.
    """
    fraction = settings.min_transfer_fraction
    if init.kind == "scratch":
        return None
    if init.artifact is not None:
        registry = ModelRegistry(store)
        ref = registry.resolve(init.artifact)
        if init.kind == "agbp":
            return BackboneInit(backbone_tensors(registry, ref), min_fraction=fraction)
        return DetectorInit(_detector_checkpoint(registry, ref), min_fraction=fraction)
    return CheckpointPathInit(local_checkpoint_path(str(init.path), settings, local_ok), fraction)


def _detector_checkpoint(registry: ModelRegistry, ref: ArtifactRef) -> DetectorCheckpoint:
    data = artifact_file(registry, ref, WEIGHTS_FILE)
    return DetectorCheckpoint.from_bytes(data, source=f"{ref}/{WEIGHTS_FILE}")


def transfer_summary(report: TransferReport | None) -> dict[str, Any] | None:
    """A transfer report for job outputs and lineage (None for a random start)."""
    if report is None:
        return None
    return transfer_doc(
        report.loaded, report.total, report.fraction, report.target_total, report.skipped
    )


def evaluation_doc(result: EvalResult) -> dict[str, Any]:
    """COCO mAP@0.5 and mAP@0.5:0.95, overall and per class (agssp-spec §5.4)."""
    return result.summary()


def onnx_forward(path: Path) -> tuple[Callable[[torch.Tensor], torch.Tensor], list[float]]:
    """A forward function for ``predict_with`` on ONNX Runtime (CPU), timing every call."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    seconds: list[float] = []

    def forward(x: torch.Tensor) -> torch.Tensor:
        started = time.perf_counter()
        (out,) = session.run(None, {name: x.numpy()})[:1]
        seconds.append(time.perf_counter() - started)
        return torch.from_numpy(np.asarray(out))

    return forward, seconds
