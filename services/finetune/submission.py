"""Submitting finetune-service jobs: validate against the store, pin versions, enqueue.

Torch-free: the API uses this module, never ``service.py``. References given as ``name``
or ``name:latest`` are pinned to the version that exists now, so a job's record (and the
lineage of what it publishes) names exact versions.
"""

from __future__ import annotations

import re
from typing import Any

from services.finetune.datasets_store import DatasetCatalog, DatasetRef
from services.finetune.params import (
    AgdpJobParams,
    DatasetImportParams,
    EvaluationParams,
    FinetuneJobParams,
    InitParams,
    QuantizeParams,
    check_train_config,
)
from services.finetune.registry import BACKBONE_FILE, WEIGHTS_FILE, ModelRegistry
from shared.errors import InvalidInputError
from shared.jobs.producer import TaskSender, submit_job
from shared.jobs.store import JobStore
from shared.schemas.artifacts import ArtifactRef
from shared.schemas.jobs import JobRecord, Queue, TaskName

IMPORT_KIND = "dataset-import"
AGDP_KIND = "agdp"
FINETUNE_KIND = "finetune"
EVALUATION_KIND = "evaluation"
QUANTIZE_KIND = "quantize-int8"
_YOLO_BACKBONE = re.compile(r"^yolov8([nsm])$")


def submit_import(sender: TaskSender, jobs: JobStore, params: DatasetImportParams) -> JobRecord:
    """Queue a dataset import; the prefix must hold something.

    Raises:
        InvalidInputError: nothing under ``prefix`` (code source_empty).
    """
    if not jobs.store.list(params.prefix):
        raise InvalidInputError(f"nothing is stored under {params.prefix!r}", code="source_empty")
    return _submit(
        sender, jobs, IMPORT_KIND, TaskName.FINETUNE_IMPORT_DATASET, params.model_dump(mode="json")
    )


def submit_agdp(sender: TaskSender, jobs: JobStore, params: AgdpJobParams) -> JobRecord:
    """Queue an AGDP job after checking config, labels, images and the AGBP backbone.

    Raises:
        InvalidInputError: bad config, no labels or images, an unusable backbone artifact.
        NotFoundError: the backbone artifact does not exist.
    """
    config = check_train_config("agdp", params.scale, params.config)
    for prefix, what in ((params.labels_prefix, "labels"), (params.images_prefix, "images")):
        if not jobs.store.list(prefix):
            raise InvalidInputError(f"no {what} under {prefix!r}", code=f"{what}_missing")
    backbone = None
    if params.backbone_artifact is not None:
        ref = _backbone(ModelRegistry(jobs.store), params.backbone_artifact, params.scale)
        backbone = str(ref)
    stored = params.model_copy(
        update={
            "config": config,
            "backbone_artifact": backbone,
            "artifact_name": params.output_name(),
        }
    )
    return _submit(sender, jobs, AGDP_KIND, TaskName.FINETUNE_AGDP, stored.model_dump(mode="json"))


def submit_finetune(sender: TaskSender, jobs: JobStore, params: FinetuneJobParams) -> JobRecord:
    """Queue a finetuning job on a stored dataset from a checked, pinned init.

    Raises:
        InvalidInputError: bad config, splits, init or scale mismatch.
        NotFoundError: unknown dataset or init artifact.
    """
    config = check_train_config("finetune", params.scale, params.config)
    catalog = DatasetCatalog(jobs.store)
    dataset = catalog.resolve(params.dataset)
    _check_splits(catalog, dataset, params)
    init = _pinned_init(ModelRegistry(jobs.store), params.init, params.scale)
    stored = params.model_copy(update={"config": config, "dataset": str(dataset), "init": init})
    return _submit(
        sender, jobs, FINETUNE_KIND, TaskName.FINETUNE_TRAIN, stored.model_dump(mode="json")
    )


def submit_evaluation(sender: TaskSender, jobs: JobStore, params: EvaluationParams) -> JobRecord:
    """Queue an evaluation; model and dataset must exist and share their classes.

    Raises:
        InvalidInputError: unknown split, no weights, class mismatch.
        NotFoundError: unknown model or dataset.
    """
    registry, catalog = ModelRegistry(jobs.store), DatasetCatalog(jobs.store)
    model = _detector(registry, params.model)
    dataset = catalog.resolve(params.dataset)
    catalog.check_split(dataset, params.split)
    model_classes = registry.classes(model)
    dataset_classes = catalog.manifest(dataset).get("classes")
    if model_classes != dataset_classes:
        raise InvalidInputError(
            f"model {model} predicts {model_classes}, dataset {dataset} has {dataset_classes}",
            code="class_mismatch",
        )
    stored = params.model_copy(update={"model": str(model), "dataset": str(dataset)})
    return _submit(
        sender, jobs, EVALUATION_KIND, TaskName.FINETUNE_EVALUATE, stored.model_dump(mode="json")
    )


def submit_quantization(sender: TaskSender, jobs: JobStore, params: QuantizeParams) -> JobRecord:
    """Queue INT8 quantisation of a detector; model, dataset and both splits must exist.

    Raises:
        InvalidInputError: unknown split, class mismatch, or the version is not a detector.
        NotFoundError: unknown model or dataset.
    """
    registry, catalog = ModelRegistry(jobs.store), DatasetCatalog(jobs.store)
    model = _detector(registry, params.model)
    dataset = catalog.resolve(params.dataset)
    for split in (params.calibration_split, params.eval_split):
        catalog.check_split(dataset, split)
    if registry.classes(model) != catalog.manifest(dataset).get("classes"):
        raise InvalidInputError(
            f"model {model} and dataset {dataset} have different classes", code="class_mismatch"
        )
    stored = params.model_copy(update={"model": str(model), "dataset": str(dataset)})
    return _submit(
        sender, jobs, QUANTIZE_KIND, TaskName.FINETUNE_QUANTIZE, stored.model_dump(mode="json")
    )


def _submit(
    sender: TaskSender, jobs: JobStore, kind: str, task: str, params: dict[str, Any]
) -> JobRecord:
    return submit_job(sender, jobs, kind=kind, task_name=task, queue=Queue.FINETUNE, params=params)


def _check_splits(catalog: DatasetCatalog, ref: DatasetRef, params: FinetuneJobParams) -> None:
    if params.mini is not None and params.split != "train":
        raise InvalidInputError("mini-N subsets are drawn from 'train' only", code="invalid_split")
    split = f"mini-{params.mini}" if params.mini else params.split
    if split == params.val_split:
        raise InvalidInputError(
            f"training and validation split are both {split!r}", code="invalid_split"
        )
    catalog.check_split(ref, split)
    catalog.check_split(ref, params.val_split, allow_mini=False)


def _backbone(registry: ModelRegistry, spec: str, scale: str) -> ArtifactRef:
    """A pinned AGBP artifact whose backbone fits a YOLOv8-``scale`` detector."""
    ref = registry.resolve(spec)
    manifest = registry.artifacts.manifest(ref)
    if BACKBONE_FILE not in manifest.files:
        raise InvalidInputError(f"{ref} has no {BACKBONE_FILE}", code="not_a_backbone")
    meta = manifest.metadata
    if meta.get("key_names") not in (None, "ultralytics-detector"):
        raise InvalidInputError(
            f"{ref} is a {meta.get('backbone')} backbone; YOLOv8 needs a CSPDarknet (yolov8*) one",
            code="backbone_incompatible",
        )
    match = _YOLO_BACKBONE.match(str(meta.get("backbone", "")))
    if match and match.group(1) != scale:
        raise InvalidInputError(
            f"{ref} is a YOLOv8-{match.group(1)} backbone, the job asks for scale {scale!r}",
            code="scale_mismatch",
        )
    return ref


def _detector(registry: ModelRegistry, spec: str, scale: str | None = None) -> ArtifactRef:
    """A pinned detector artifact (with ``weights.pt``), optionally of a given scale."""
    ref = registry.resolve(spec)
    manifest = registry.artifacts.manifest(ref)
    if WEIGHTS_FILE not in manifest.files:
        raise InvalidInputError(
            f"{ref} is not a detector (no {WEIGHTS_FILE})", code="not_a_detector"
        )
    have = manifest.metadata.get("scale")
    if scale is not None and have is not None and have != scale:
        raise InvalidInputError(
            f"{ref} is a YOLOv8-{have} detector, the job asks for scale {scale!r}",
            code="scale_mismatch",
        )
    return ref


def _pinned_init(registry: ModelRegistry, init: InitParams, scale: str) -> InitParams:
    if init.artifact is None:
        return init
    if init.kind == "agbp":
        ref = _backbone(registry, init.artifact, scale)
    else:
        ref = _detector(registry, init.artifact, scale)
    return init.model_copy(update={"artifact": str(ref)})
