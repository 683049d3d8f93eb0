"""The Faster R-CNN family's torch side (``DetectorBackend``): train, export, evaluate.

The detector is ``ml.faster_rcnn``'s (torchvision's Faster R-CNN with an FPN on the
backbone table's ResNet). A run trains on the materialised folder's ``train`` split, saves
a checkpoint after every epoch through the job's hooks (a lost worker resumes at the next
epoch), and keeps the last epoch: unlike the YOLOv8 backend it runs no validation per epoch
(on a CPU a validation pass costs about as much as a training epoch), so "best" is the last
epoch, evaluated once on ``val`` when packaged. INT8 is not offered for this family
(``detector_families``: ``int8=False``).

How the job config maps onto ``FasterRcnnConfig`` (agssp-spec §5.3 leaves the CPU recipe
to us): ``imgsz``, ``epochs``, ``batch``, ``lr0`` -> ``lr``, ``momentum``, ``weight_decay``,
``fliplr`` -> ``hflip``, ``seed``, and ``freeze`` (ultralytics layers, as YOLOv8 counts
them) -> the same number of frozen ResNet stages (``FROZEN_STAGES``). The rest of the
YOLO-shaped config (mosaic, HSV, ...) has no effect here.
"""

from __future__ import annotations

import io
import json
import logging
import time
from pathlib import Path
from typing import Any

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
from services.finetune.ml.dataset import DetectionDataset, ScoredBox
from services.finetune.ml.evaluate import EvalResult, evaluate_detections
from services.finetune.ml.faster_rcnn.checkpoint import (
    FasterRcnnCheckpoint,
    Transfer,
    checkpoint_of,
    load_tensors,
    model_from_checkpoint,
    transfer_detector,
)
from services.finetune.ml.faster_rcnn.data import read_rgb, read_yolo_split
from services.finetune.ml.faster_rcnn.export import decode_onnx, export_onnx, onnx_input
from services.finetune.ml.faster_rcnn.model import (
    FasterRcnnConfig,
    build_faster_rcnn,
    head_width,
    predict,
)
from services.finetune.ml.faster_rcnn.onnx_check import onnx_agreement
from services.finetune.ml.faster_rcnn.train import EpochLog, Resume, train_faster_rcnn
from services.finetune.params import CalibrationMethod, InitParams
from services.finetune.runtime.start_weights import (
    artifact_file,
    backbone_tensors,
    local_checkpoint_path,
    transfer_doc,
)
from services.finetune.stores.models import ModelRegistry
from shared.errors import InvalidInputError, SuiteError, UnavailableError
from shared.ml.backbones.base import LoadReport
from shared.ml.device import resolve_device
from shared.schemas.backbones import BACKBONES
from shared.schemas.detector import DetectorTrainConfig
from shared.schemas.detector_artifact import (
    CLASSES_FILE,
    CONFIG_FILE,
    METRICS_FILE,
    ONNX_FILE,
    WEIGHTS_FILE,
    classes_json,
)
from shared.schemas.detector_families import OUTPUT_LAYOUT_KEY, detector_family
from shared.schemas.evaluation import PER_IMAGE_FILE, PerImageEval, RunInfo

log = logging.getLogger(__name__)
FAMILY = "faster-rcnn"
LAST_STATE = "last_state.pt"
# ultralytics ``freeze`` (first N layers of YOLOv8) -> frozen ResNet stages (-1: none,
# 0: the stem, k: the stem and stages 1..k); the inverse of params.FROZEN_STAGE_LAYERS.
FROZEN_STAGES = {0: -1, 1: 0, 3: 1, 5: 2, 7: 3, 10: 4}
_SKIPPED_LISTED = 50  # skipped tensors named in a transfer summary


class FasterRcnnBackend:
    """``DetectorBackend`` for torchvision's Faster R-CNN on the suite's ResNet."""

    def prepare(self, settings: FinetuneSettings) -> None:
        """The device checked.

        Raises:
            UnavailableError: FINETUNE_DEVICE names a device this machine lacks.
        """
        try:
            resolve_device(settings.device)
        except RuntimeError as exc:
            raise UnavailableError(str(exc), code="device_unavailable") from exc

    def train(self, request: TrainRequest) -> TrainedRun:
        """Resume the job's run from its last epoch, or start from ``request.init``; train."""
        config, hooks = request.config, request.hooks
        arch = architecture(config)
        classes = list(request.data.classes)
        backbone = _backbone(config)
        resume: Resume | None = None
        transfer: dict[str, Any] | None = None
        if hooks.resume_state and hooks.resume_state.get("path"):
            log.info("resuming from %s", hooks.resume_state["path"])
            model, resume = _resumed(Path(hooks.resume_state["path"]))
        else:
            model, transfer = _started(request, arch, classes, backbone)
            request.on_transfer(transfer)
        request.work.mkdir(parents=True, exist_ok=True)
        samples = read_yolo_split(request.data.root, "train")
        state_path = request.work / LAST_STATE
        history: list[dict[str, float]] = []
        stopped = [False]

        def on_epoch(epoch: EpochLog) -> bool:
            history.append({"epoch": float(epoch.epoch), **epoch.losses})
            snapshot = checkpoint_of(model, classes, backbone, arch, _train_doc(config))
            _save_state(state_path, snapshot, epoch)
            meta = {"epochs": arch.epochs}
            hooks.on_checkpoint({"path": str(state_path), "epoch": epoch.epoch, "config": meta})
            message = f"epoch {epoch.epoch}/{arch.epochs} loss {epoch.losses.get('loss', 0):.3f}"
            hooks.on_progress(100.0 * epoch.epoch / arch.epochs, message, epoch.losses)
            return not stop_now()

        def stop_now() -> bool:
            stopped[0] = stopped[0] or hooks.should_stop()
            return stopped[0]

        device = resolve_device(config.device)
        logs = train_faster_rcnn(
            model, samples, arch, on_epoch=on_epoch, should_stop=stop_now, device=device,
            resume=resume,
        )  # fmt: skip
        done = logs[-1].epoch if logs else (resume.epochs_done if resume else 0)
        checkpoint = checkpoint_of(model, classes, backbone, arch, _train_doc(config))
        weights = checkpoint.to_bytes()
        pt_file = request.work / WEIGHTS_FILE
        pt_file.write_bytes(weights)
        return TrainedRun(
            weights=weights,
            pt_file=pt_file,
            classes=classes,
            epochs_completed=done,
            canceled=stopped[0] and done < arch.epochs,
            history=history,
            transfer=transfer,
            checkpoint_metrics={},
            torch_threads=torch.get_num_threads(),
        )

    def package(
        self,
        run: TrainedRun,
        val: DetectionDataset,
        images_dir: Path,
        work: Path,
        settings: FinetuneSettings,
        config: DetectorTrainConfig,
    ) -> PackagedDetector:
        """ONNX export checked against torch on val images, evaluation on ``val``, files.

        Raises:
            SuiteError: the export's boxes or mAP on val differ from torch's (code
                onnx_mismatch; see ``ml.faster_rcnn.onnx_check``).
        """
        checkpoint = FasterRcnnCheckpoint.from_bytes(run.weights, source=WEIGHTS_FILE)
        model = model_from_checkpoint(checkpoint)
        arch = checkpoint.architecture()
        work.mkdir(parents=True, exist_ok=True)
        onnx = export_onnx(model, work / ONNX_FILE, arch, metadata=_onnx_metadata(checkpoint))
        boxes = _predictions(model, arch, val, images_dir, config.device)
        result = evaluate_detections(val, boxes, max_dets=arch.max_dets)
        agreement = onnx_agreement(onnx, val, images_dir, arch.imgsz, boxes, arch.max_dets)
        if problems := agreement.problems():
            raise SuiteError(
                f"the ONNX export does not do the torch model's job on {agreement.images} val "
                f"images: {'; '.join(problems)}",
                code="onnx_mismatch",
            )
        run_info = RunInfo(
            seed=config.seed,
            deterministic=config.deterministic,
            torch_threads=run.torch_threads,
            device=str(resolve_device(config.device)),
        )
        metrics = {
            **result.summary(),
            "run": run_info.model_dump(mode="json"),
            "evaluated_on": {"split": "val", "images": len(val.images)},
            "epochs_completed": run.epochs_completed,
            "history": run.history,
            "onnx_check": agreement.as_doc(),
        }
        records = result.records or PerImageEval(classes=list(val.classes), images=[])
        config_doc = yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
        files: dict[str, bytes | Path] = {
            ONNX_FILE: onnx,
            WEIGHTS_FILE: run.weights,
            CLASSES_FILE: classes_json(run.classes),
            CONFIG_FILE: config_doc.encode(),
            METRICS_FILE: json.dumps(metrics, indent=1).encode(),
            PER_IMAGE_FILE: records.model_copy(update={"run": run_info}).to_bytes(),
        }
        kept = ValEvaluation(SplitPredictions(boxes, max_dets=arch.max_dets), result)
        return PackagedDetector(files, metrics, run.classes, kept)

    def read_weights(self, weights: bytes, source: str) -> WeightsInfo:
        checkpoint = FasterRcnnCheckpoint.from_bytes(weights, source=source)
        return WeightsInfo(list(checkpoint.classes), checkpoint.architecture().imgsz)

    def evaluate(
        self,
        weights: bytes,
        subset: DetectionDataset,
        images_dir: Path,
        imgsz: int,
        settings: FinetuneSettings,
    ) -> dict[str, Any]:
        """COCO mAP with pycocotools, the same evaluator as every family's."""
        checkpoint = FasterRcnnCheckpoint.from_bytes(weights, source=WEIGHTS_FILE)
        model = model_from_checkpoint(checkpoint)
        arch = checkpoint.architecture()
        return _evaluate(model, arch, subset, images_dir, settings.device).summary()

    def predict(
        self,
        weights: bytes,
        subset: DetectionDataset,
        images_dir: Path,
        imgsz: int,
        settings: FinetuneSettings,
    ) -> SplitPredictions:
        """The boxes ``evaluate`` scores, with the architecture's detections per image."""
        checkpoint = FasterRcnnCheckpoint.from_bytes(weights, source=WEIGHTS_FILE)
        arch = checkpoint.architecture()
        model = model_from_checkpoint(checkpoint)
        boxes = _predictions(model, arch, subset, images_dir, settings.device)
        return SplitPredictions(boxes, max_dets=arch.max_dets)

    def quantize(
        self,
        fp32: Path,
        out: Path,
        calibration: list[Path],
        imgsz: int,
        method: CalibrationMethod,
    ) -> QuantizedDetector:
        """Not offered for this family (the submission refuses it first).

        Raises:
            InvalidInputError: always (code int8_unsupported_family).
        """
        raise InvalidInputError(
            f"INT8 quantisation is not offered for {detector_family(FAMILY).label}",
            code="int8_unsupported_family",
        )

    def evaluate_onnx(
        self,
        model: Path,
        subset: DetectionDataset,
        images_dir: Path,
        imgsz: int,
        settings: FinetuneSettings,
    ) -> tuple[dict[str, Any], float]:
        """COCO mAP of the exported graph on ONNX Runtime (CPU), one image per call."""
        import onnxruntime as ort

        session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
        name, seconds = session.get_inputs()[0].name, 0.0
        predictions: dict[str, list[ScoredBox]] = {}
        for image in subset.images:
            tensor, sx, sy = onnx_input(read_rgb(images_dir / image.file_name), imgsz)
            started = time.perf_counter()
            outputs = session.run(None, {name: tensor})
            seconds += time.perf_counter() - started
            predictions[image.file_name] = decode_onnx(outputs, sx, sy)
        return evaluate_detections(subset, predictions).summary(), seconds


FASTER_RCNN = FasterRcnnBackend()


def architecture(config: DetectorTrainConfig) -> FasterRcnnConfig:
    """The ``FasterRcnnConfig`` a job config asks for (see the module docstring).

    Raises:
        InvalidInputError: ``freeze`` given as a list of layer indices, which names YOLOv8
            layers (code invalid_config).
    """
    if not isinstance(config.freeze, int):
        raise InvalidInputError(
            "a Faster R-CNN freezes whole ResNet stages: give freeze as a number of layers "
            f"({sorted(FROZEN_STAGES)}), not a list",
            code="invalid_config",
        )
    stages = max(s for layers, s in FROZEN_STAGES.items() if layers <= config.freeze)
    backbone = BACKBONES[_backbone(config)]
    return FasterRcnnConfig(
        head_dim=head_width(backbone.test_only),
        imgsz=config.imgsz,
        frozen_stages=stages,
        epochs=config.epochs,
        batch=config.batch,
        lr=config.lr0,
        momentum=config.momentum,
        weight_decay=config.weight_decay,
        hflip=config.fliplr,
        max_dets=min(config.max_det, 100),
        seed=config.seed,
    )


def _backbone(config: DetectorTrainConfig) -> str:
    backbone = config.resolved_backbone()
    if backbone is None:  # the family table gives Faster R-CNN a default backbone
        raise InvalidInputError("a Faster R-CNN needs a backbone", code="backbone_incompatible")
    return backbone


def _started(
    request: TrainRequest, arch: FasterRcnnConfig, classes: list[str], backbone: str
) -> tuple[torch.nn.Module, dict[str, Any] | None]:
    """A fresh model from the job's init, and the transfer summary (None from scratch)."""
    init, fraction = request.init, request.settings.min_transfer_fraction
    if init.kind == "scratch":
        return build_faster_rcnn(len(classes), arch, backbone=backbone), None
    if init.kind == "agbp" and init.artifact is not None:
        registry = ModelRegistry(request.store)
        tensors = backbone_tensors(registry, registry.resolve(init.artifact))
        model = build_faster_rcnn(
            len(classes), arch, backbone=backbone, weights=tensors, min_match=fraction
        )
        report = getattr(model.backbone, "body").load_report  # noqa: B009 (a Module attribute)
        return model, _backbone_summary(report, len(model.state_dict()))
    source = _start_detector(request, init)
    if source.backbone != backbone:
        raise InvalidInputError(
            f"the start detector is built on {source.backbone}, the job asks for {backbone}",
            code="backbone_incompatible",
        )
    model = build_faster_rcnn(len(classes), arch, backbone=backbone)
    return model, _detector_summary(transfer_detector(model, source.state_dict, fraction))


def _start_detector(request: TrainRequest, init: InitParams) -> FasterRcnnCheckpoint:
    if init.artifact is not None:
        registry = ModelRegistry(request.store)
        ref = registry.resolve(init.artifact)
        data = artifact_file(registry, ref, WEIGHTS_FILE)
        return FasterRcnnCheckpoint.from_bytes(data, source=f"{ref}/{WEIGHTS_FILE}")
    path = local_checkpoint_path(str(init.path), request.settings, request.local_ok)
    return FasterRcnnCheckpoint.from_bytes(path.read_bytes(), source=str(path))


def _backbone_summary(report: LoadReport | None, target_total: int) -> dict[str, Any] | None:
    if report is None:
        return None
    skipped = [(key, "missing") for key in report.missing] + [
        (key, "shape") for key in report.shape_mismatch
    ]
    return transfer_doc(
        report.matched, report.total, report.ratio, target_total, skipped, _SKIPPED_LISTED
    )


def _detector_summary(transfer: Transfer) -> dict[str, Any]:
    return transfer_doc(
        transfer.loaded, transfer.total, transfer.fraction, transfer.target_total,
        transfer.skipped, _SKIPPED_LISTED,
    )  # fmt: skip


def _train_doc(config: DetectorTrainConfig) -> dict[str, Any]:
    return config.model_dump(mode="json")


def _save_state(path: Path, snapshot: FasterRcnnCheckpoint, epoch: EpochLog) -> None:
    """The model after ``epoch`` and the optimiser's state: what a resumed run needs."""
    buffer = io.BytesIO()
    torch.save({**snapshot.payload(), "epoch": epoch.epoch, "optimiser": epoch.optimiser}, buffer)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(buffer.getvalue())
    tmp.replace(path)


def _resumed(path: Path) -> tuple[torch.nn.Module, Resume]:
    """The model and optimiser state a ``_save_state`` file holds.

    Raises:
        InvalidInputError: not such a file (code bad_weights).
    """
    raw = load_tensors(path.read_bytes(), str(path))
    checkpoint = FasterRcnnCheckpoint.from_payload(raw, source=str(path))
    try:
        resume = Resume(int(raw["epoch"]), dict(raw["optimiser"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise InvalidInputError(f"{path}: not a resumable state", code="bad_weights") from exc
    return model_from_checkpoint(checkpoint), resume


def _onnx_metadata(checkpoint: FasterRcnnCheckpoint) -> dict[str, str]:
    """What inference reads from the graph: layout, classes and input size."""
    family = detector_family(FAMILY)
    return {
        OUTPUT_LAYOUT_KEY: family.output_layout,
        "family": family.name,
        # ultralytics' spelling (Python literals), so one reader parses every family's export
        "names": repr(dict(enumerate(checkpoint.classes))),
        "imgsz": repr([checkpoint.architecture().imgsz] * 2),
    }


def _evaluate(
    model: torch.nn.Module,
    arch: FasterRcnnConfig,
    subset: DetectionDataset,
    images_dir: Path,
    device: str,
) -> EvalResult:
    boxes = _predictions(model, arch, subset, images_dir, device)
    return evaluate_detections(subset, boxes, max_dets=arch.max_dets)


def _predictions(
    model: torch.nn.Module,
    arch: FasterRcnnConfig,
    subset: DetectionDataset,
    images_dir: Path,
    device: str,
) -> dict[str, list[ScoredBox]]:
    target = resolve_device(device)
    return {
        image.file_name: predict(
            model, [read_rgb(images_dir / image.file_name)], arch, device=target
        )[0]
        for image in subset.images
    }
