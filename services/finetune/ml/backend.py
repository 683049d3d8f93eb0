"""The seam between the torch-free job kinds and the torch side of the detector jobs.

A job kind's run is given ``Backends`` by the worker (``load_backend``: the detector-family
table's ``backend`` row, imported on first use) and hands the family's ``DetectorBackend``
plain data (datasets, folders, bytes of tensors), so the modules the API imports to submit
jobs never load torch or ultralytics.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from services.finetune.config import FinetuneSettings
from services.finetune.ml.dataset import DetectionDataset, ScoredBox
from services.finetune.ml.evaluate import EvalResult
from services.finetune.ml.materialize import YoloDataFolder
from services.finetune.params import CalibrationMethod, InitParams
from shared.ml.hooks import TrainHooks
from shared.schemas.detector import DetectorTrainConfig
from shared.schemas.detector_families import DEFAULT_FAMILY, detector_family
from shared.storage.base import ObjectStore


@dataclass(frozen=True)
class TrainRequest:
    """One detector run: start weights, data, scratch folder, config and the job's hooks.

    ``on_transfer`` sees the transfer summary before the first epoch (not on a resume), so
    a job records it even when its worker dies mid-run. ``local_ok`` lets a checkpoint path
    outside AGSSP_MODEL_DIR start the run (the CLI, run by the user).
    """

    store: ObjectStore
    init: InitParams
    data: YoloDataFolder
    work: Path
    config: DetectorTrainConfig
    hooks: TrainHooks
    settings: FinetuneSettings
    on_transfer: Callable[[dict[str, Any] | None], None] = lambda summary: None
    local_ok: bool = False


@dataclass(frozen=True)
class TrainedRun:
    """What a run left: its best tensors (``weights.pt`` bytes) and ultralytics ``.pt`` file."""

    weights: bytes
    pt_file: Path
    classes: list[str]
    epochs_completed: int
    canceled: bool
    history: list[dict[str, float]]
    transfer: dict[str, Any] | None
    checkpoint_metrics: dict[str, float]
    torch_threads: int = 1  # torch intra-op threads the run trained with


@dataclass(frozen=True)
class PackagedDetector:
    """Files of a detector artifact and the metrics that go into its metrics file.

    ``val`` is how ``metrics`` were computed on val (None: the backend kept nothing), so the
    job saves the version's evaluation without another pass over val.
    """

    files: dict[str, bytes | Path]
    metrics: dict[str, Any]
    classes: list[str]
    val: ValEvaluation | None = None


@dataclass(frozen=True)
class QuantizedDetector:
    """An INT8 export, its scheme, and how far it is from FP32 on the calibration images.

    ``errors`` are ``ml.quantize.int8_errors``'s measures on ``images`` calibration images;
    ``over_tolerance`` those of them above the stated tolerance (empty: within it), with the
    limits in ``tolerance``.
    """

    path: Path
    scheme: str
    errors: dict[str, float]
    tolerance: dict[str, float]
    over_tolerance: dict[str, float]
    images: int


@dataclass(frozen=True)
class SplitPredictions:
    """A detector's boxes on every image of a split at the evaluation setting, by file
    name, and how many per image and class its mAP scores (COCO: 100)."""

    boxes: dict[str, list[ScoredBox]]
    max_dets: int = 100


@dataclass(frozen=True)
class ValEvaluation:
    """A packaged detector's boxes on val and the COCO evaluation of them its metrics hold."""

    predictions: SplitPredictions
    result: EvalResult


@dataclass(frozen=True)
class WeightsInfo:
    """What a stored ``weights.pt`` says about itself."""

    classes: list[str]
    imgsz: int


class DetectorBackend(Protocol):
    """The torch side of the detector jobs; ``usecases.training`` implements it."""

    def prepare(self, settings: FinetuneSettings) -> None:
        """ultralytics offline and the device checked (UnavailableError when absent)."""

    def train(self, request: TrainRequest) -> TrainedRun:
        """Resume the job's run or start it from ``request.init``, and train."""

    def package(
        self,
        run: TrainedRun,
        val: DetectionDataset,
        images_dir: Path,
        work: Path,
        settings: FinetuneSettings,
        config: DetectorTrainConfig,
    ) -> PackagedDetector:
        """ONNX export checked against torch, evaluation on ``val``, the artifact files."""

    def read_weights(self, weights: bytes, source: str) -> WeightsInfo:
        """Classes and input size of stored tensors (InvalidInputError when unreadable)."""

    def evaluate(
        self,
        weights: bytes,
        subset: DetectionDataset,
        images_dir: Path,
        imgsz: int,
        settings: FinetuneSettings,
    ) -> dict[str, Any]:
        """COCO mAP@0.5 and mAP@0.5:0.95, overall and per class, of ``weights``."""

    def predict(
        self,
        weights: bytes,
        subset: DetectionDataset,
        images_dir: Path,
        imgsz: int,
        settings: FinetuneSettings,
    ) -> SplitPredictions:
        """The boxes ``evaluate`` scores: every image of ``subset`` at the evaluation
        setting (scores down to 0.001), in original-image pixels."""

    def quantize(
        self,
        fp32: Path,
        out: Path,
        calibration: list[Path],
        imgsz: int,
        method: CalibrationMethod,
    ) -> QuantizedDetector:
        """An INT8 (QDQ) copy of ``fp32`` calibrated on the images ``calibration``, with its
        error against ``fp32`` on those images."""

    def evaluate_onnx(
        self,
        model: Path,
        subset: DetectionDataset,
        images_dir: Path,
        imgsz: int,
        settings: FinetuneSettings,
    ) -> tuple[dict[str, Any], float]:
        """COCO mAP of an ONNX graph on ONNX Runtime (CPU) and its seconds in the model."""


# The family name -> that family's backend; the worker passes ``load_backend``.
Backends = Callable[[str], DetectorBackend]


@functools.cache
def load_backend(family: str = DEFAULT_FAMILY) -> DetectorBackend:
    """The ``DetectorBackend`` the family table names for ``family``, imported now.

    Raises:
        InvalidInputError: an unknown family (code ``unknown_detector``).
    """
    module, _, attribute = detector_family(family).backend.partition(":")
    backend: DetectorBackend = getattr(importlib.import_module(module), attribute)
    return backend


def model_family(metadata: dict[str, Any]) -> str:
    """The family a detector version's manifest metadata records (older versions: YOLOv8)."""
    return str(metadata.get("family") or DEFAULT_FAMILY)
