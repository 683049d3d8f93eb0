"""Shared steps of the detector jobs: runtime set-up, job hooks and resume, training, evaluation,
ONNX export and publishing. Framework-free; ``service.py`` puts them together.
"""

from __future__ import annotations

import functools
import json
import logging
import shutil
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from services.finetune.config import FinetuneSettings
from services.finetune.ml.config import DetectorTrainConfig
from services.finetune.ml.dataset import DetectionDataset
from services.finetune.ml.detector import (
    InitSpec,
    TransferReport,
    build_detector,
    detector_from_checkpoint,
)
from services.finetune.ml.evaluate import EvalResult
from services.finetune.ml.export import check_onnx_matches, export_onnx
from services.finetune.ml.materialize import YoloDataFolder
from services.finetune.ml.offline import configure_ultralytics_offline
from services.finetune.ml.predict import evaluate_detector, read_bgr
from services.finetune.ml.train import TrainResult, resume_training, run_training
from services.finetune.registry import (
    CLASSES_FILE,
    CONFIG_FILE,
    METRICS_FILE,
    ONNX_FILE,
    PT_FILE,
    WEIGHTS_FILE,
)
from shared.errors import SuiteError, UnavailableError
from shared.imaging.intake import ImageLimits
from shared.jobs.context import JobContext
from shared.ml.device import resolve_device
from shared.ml.hooks import TrainHooks
from shared.schemas.artifacts import ArtifactRef
from shared.storage.artifacts import ArtifactStore
from shared.storage.base import ObjectStore

log = logging.getLogger(__name__)

LAST_PT = "last.pt"
LAST_META = "last.json"
TRAIN_SPAN = (5.0, 90.0)  # share of job progress the training epochs take


def prepare_runtime(settings: FinetuneSettings) -> None:
    """ultralytics offline (before its first import) and the device checked, once per process.

    Raises:
        UnavailableError: FINETUNE_DEVICE names a device this machine lacks.
    """
    _offline(settings.ultralytics_dir())
    try:
        resolve_device(settings.device)
    except RuntimeError as exc:
        raise UnavailableError(str(exc), code="device_unavailable") from exc


@functools.cache
def _offline(config_dir: Path) -> Path:
    return configure_ultralytics_offline(config_dir)


def image_limits(settings: FinetuneSettings) -> ImageLimits:
    """Caps for images read from the store."""
    return ImageLimits(
        max_bytes=int(settings.max_image_mb * 2**20),
        max_pixels=settings.common.http.max_image_pixels,
    )


@contextmanager
def workspace(settings: FinetuneSettings, name: str) -> Iterator[Path]:
    """A scratch folder per job, removed afterwards unless FINETUNE_KEEP_WORK_DIR is set.

    The path is fixed per job id: ultralytics' ``last.pt`` names its run folder, so a
    resumed job on the same worker finds it again.
    """
    path = settings.resolved_work_dir() / name
    path.mkdir(parents=True, exist_ok=True)
    try:
        yield path
    finally:
        if not settings.keep_work_dir:
            shutil.rmtree(path, ignore_errors=True)


def transfer_summary(report: TransferReport | None) -> dict[str, Any] | None:
    """A transfer report for job outputs and lineage (None for a random start)."""
    if report is None:
        return None
    return {
        "loaded": report.loaded,
        "total": report.total,
        "fraction": report.fraction,
        "target_total": report.target_total,
        "fresh": report.target_total - report.loaded,
        "skipped": [list(item) for item in report.skipped],
    }


def train_detector(
    init: InitSpec,
    data: YoloDataFolder,
    work: Path,
    config: DetectorTrainConfig,
    hooks: TrainHooks,
    on_transfer: Callable[[TransferReport | None], None] = lambda report: None,
) -> TrainResult:
    """Resume from ``hooks.resume_state`` or build the detector from ``init`` and train it.

    ``on_transfer`` sees the transfer report before the first epoch (not on a resume), so a
    job records it even when its worker dies mid-run. Class-logit convs whose class count
    differs keep their fresh init (agssp-spec §5.3).
    """
    if hooks.resume_state and hooks.resume_state.get("path"):
        log.info("resuming from %s", hooks.resume_state["path"])
        return resume_training(Path(hooks.resume_state["path"]), data, work, config, hooks)
    detector = build_detector(config.scale, len(data.classes), init, data.classes, config.seed)
    on_transfer(detector.report)
    return run_training(detector, data, work, config, hooks)


def job_hooks(ctx: JobContext, work: Path, span: tuple[float, float] = TRAIN_SPAN) -> TrainHooks:
    """TrainHooks writing progress and metrics to the job record and ``last.pt`` to the store."""
    low, high = span

    def on_progress(percent: float, message: str, metrics: Mapping[str, float]) -> None:
        ctx.progress(low + (high - low) * percent / 100.0, message, force=True, metrics=metrics)

    def on_checkpoint(state: dict[str, Any]) -> None:
        ctx.store.put_file(ctx.jobs.checkpoint_key(ctx.job_id, LAST_PT), Path(state["path"]))
        meta = {"epoch": state["epoch"], "epochs": state["config"]["epochs"]}
        ctx.save_checkpoint(json.dumps(meta).encode(), LAST_META)

    return TrainHooks(
        on_progress=on_progress,
        should_stop=ctx.should_stop,
        on_checkpoint=on_checkpoint,
        resume_state=_resume_state(ctx, work),
    )


def _resume_state(ctx: JobContext, work: Path) -> dict[str, Any] | None:
    raw = ctx.load_checkpoint(LAST_META)
    if raw is None:
        return None
    meta = json.loads(raw)
    if meta["epoch"] >= meta["epochs"]:
        # ultralytics refuses to resume a finished run; its best.pt died with the worker.
        log.warning("job %s: stored last.pt is from the final epoch, training again", ctx.job_id)
        return None
    path = work / "resume" / LAST_PT
    path.parent.mkdir(parents=True, exist_ok=True)
    ctx.store.get_file(ctx.jobs.checkpoint_key(ctx.job_id, LAST_PT), path)
    ctx.progress(TRAIN_SPAN[0], f"resuming after epoch {meta['epoch']}", force=True)
    return {"path": str(path)}


@dataclass(frozen=True)
class PackagedDetector:
    """Files of a detector artifact and the metrics that go into ``metrics.json``."""

    files: dict[str, bytes | Path]
    metrics: dict[str, Any]
    evaluation: EvalResult
    classes: list[str]


def evaluation_doc(result: EvalResult) -> dict[str, Any]:
    """COCO mAP@0.5 and mAP@0.5:0.95, overall and per class (agssp-spec §5.4)."""
    return {
        "map50": result.map50,
        "map50_95": result.map50_95,
        "per_class": {
            name: {"map50": ap.map50, "map50_95": ap.map50_95, "num_gt": ap.num_gt}
            for name, ap in result.per_class.items()
        },
    }


def evaluate_result(
    result: TrainResult,
    val: DetectionDataset,
    images_dir: Path,
    config: DetectorTrainConfig,
    settings: FinetuneSettings,
) -> EvalResult:
    """COCO mAP of the run's best checkpoint on ``val`` (pycocotools, not ultralytics)."""
    detector = detector_from_checkpoint(result.checkpoint)
    return evaluate_detector(
        detector, val, images_dir, config.imgsz, settings.eval_batch, settings.device
    )


def package_detector(
    result: TrainResult,
    val: DetectionDataset,
    images_dir: Path,
    work: Path,
    config: DetectorTrainConfig,
    settings: FinetuneSettings,
) -> PackagedDetector:
    """ONNX export (dynamic batch) checked against torch, evaluation on ``val``, files.

    Raises:
        SuiteError: ONNX Runtime disagrees with torch on a val image (code onnx_mismatch).
    """
    detector = detector_from_checkpoint(result.checkpoint)
    onnx = export_onnx(detector, work / ONNX_FILE, imgsz=config.imgsz, work_dir=work / "scratch")
    sample = [read_bgr(images_dir / im.file_name) for im in val.images[:2]]
    check = check_onnx_matches(detector, onnx, sample, imgsz=config.imgsz)
    if not check.matches:
        raise SuiteError(
            f"ONNX export differs from torch by {check.max_abs_diff:.3g}", code="onnx_mismatch"
        )
    evaluation = evaluate_result(result, val, images_dir, config, settings)
    metrics = {
        **evaluation_doc(evaluation),
        "evaluated_on": {"split": "val", "images": len(val.images)},
        "epochs_completed": result.epochs_completed,
        "ultralytics_val": result.checkpoint.metrics,
        "history": result.history,
        "onnx_check": {"max_abs_diff": check.max_abs_diff, "matches": check.matches},
    }
    files: dict[str, bytes | Path] = {
        PT_FILE: result.best_pt if result.best_pt.is_file() else result.last_pt,
        ONNX_FILE: onnx,
        WEIGHTS_FILE: result.checkpoint.to_bytes(),
        CLASSES_FILE: json.dumps(list(result.checkpoint.classes)).encode(),
        CONFIG_FILE: yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False).encode(),
        METRICS_FILE: json.dumps(metrics, indent=1).encode(),
    }
    return PackagedDetector(files, metrics, evaluation, list(result.checkpoint.classes))


def publish_detector(
    store: ObjectStore,
    ref: ArtifactRef,
    packaged: PackagedDetector,
    kind: str,
    config: DetectorTrainConfig,
    lineage: dict[str, Any],
) -> ArtifactRef:
    """Publish the files as ``ref`` with kind, metrics summary and lineage in the manifest."""
    metadata = {
        "kind": kind,
        "job_id": lineage.get("job_id"),
        "scale": config.scale,
        "imgsz": config.imgsz,
        "classes": packaged.classes,
        "metrics": {k: packaged.metrics[k] for k in ("map50", "map50_95")},
        "lineage": lineage,
    }
    return ArtifactStore(store).publish(
        ref.name, packaged.files, version=ref.version, metadata=metadata
    )
