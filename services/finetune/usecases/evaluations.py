"""Evaluation jobs: COCO mAP of a registered model on a stored split, saved with the model.

The saved document also says where the model fails (``ml.error_analysis``): per-image
misses and false alarms at the job's ``conf``, with the boxes, the confusion matrix with a
background row and column, and PR curves per class (``ml.pr_curves``), all from the same
predictions and the same IoU-0.5 matching as the mAP. The job's outputs carry the mAP
figures and the error totals; the per-image records stay in the document. A finetune job
saves the same document for the version it publishes (``save_evaluation``, on its val split
at ``DEFAULT_CONF``), from the val boxes its mAP was computed from.

The in-process comparison of start weights (the CLI's ``finetune compare``) lives in
:mod:`services.finetune.usecases.comparisons`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from services.finetune.config import FinetuneSettings
from services.finetune.ml.backend import Backends, SplitPredictions, model_family
from services.finetune.ml.dataset import DetectionDataset
from services.finetune.ml.error_analysis import analyse_errors
from services.finetune.ml.evaluate import EvalResult, evaluate_detections
from services.finetune.ml.pr_curves import pr_curves
from services.finetune.params import EvaluationParams
from services.finetune.stores.datasets import DatasetCatalog, load_split
from services.finetune.stores.models import ModelRegistry
from services.finetune.usecases.common import detector_ref, submit, workspace
from shared.errors import InvalidInputError
from shared.jobs.context import JobContext
from shared.jobs.producer import TaskSender
from shared.jobs.store import JobStore
from shared.schemas.artifacts import ArtifactRef
from shared.schemas.detector_artifact import WEIGHTS_FILE
from shared.schemas.jobs import JobRecord, TaskName
from shared.storage.base import ObjectStore

EVALUATION_KIND = "evaluation"
# Parts of the saved document too large for a job record (its outputs keep the totals).
DETAIL_KEYS = ("pr_curves", "errors")
# The score the misses and false alarms count from when a job does not say (the API's).
DEFAULT_CONF: float = EvaluationParams.model_fields["conf"].default


def submit_evaluation(sender: TaskSender, jobs: JobStore, params: EvaluationParams) -> JobRecord:
    """Queue an evaluation; model and dataset must exist and share their classes.

    Raises:
        InvalidInputError: unknown split, no weights, class mismatch.
        NotFoundError: unknown model or dataset.
    """
    registry, catalog = ModelRegistry(jobs.store), DatasetCatalog(jobs.store)
    model = detector_ref(registry, params.model)
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
    task = TaskName.FINETUNE_EVALUATE
    return submit(sender, jobs, EVALUATION_KIND, task, stored.model_dump(mode="json"))


def run_evaluation_job(
    ctx: JobContext, settings: FinetuneSettings, backends: Backends
) -> list[str]:
    """Evaluate a registered model on a stored split; saved with the model and in outputs."""
    params = EvaluationParams.model_validate(ctx.params)
    with workspace(settings, ctx.job_id) as work:
        ctx.progress(5, "downloading the split and the model", force=True)
        doc, key = evaluate_model(ctx.store, params, settings, work, backends)
    outputs = {k: v for k, v in doc.items() if k not in DETAIL_KEYS}
    ctx.set_outputs(**outputs, error_totals=doc["errors"]["totals"], saved_to=key)
    return [key]


def evaluate_model(
    store: ObjectStore,
    params: EvaluationParams,
    settings: FinetuneSettings,
    work: Path,
    backends: Backends,
) -> tuple[dict[str, Any], str]:
    """COCO mAP of ``params.model`` on a dataset split, with PR curves and the misses,
    false alarms and confusions at ``params.conf``; returns the document and its key.

    Raises:
        InvalidInputError: the model's classes differ from the dataset's (class_mismatch).
    """
    registry = ModelRegistry(store)
    model = registry.resolve(params.model)
    backend = backends(model_family(registry.artifacts.manifest(model).metadata))
    backend.prepare(settings)
    weights = registry.artifacts.get_file_bytes(model, WEIGHTS_FILE)
    info = backend.read_weights(weights, source=f"{model}/{WEIGHTS_FILE}")
    dataset = DatasetCatalog(store).resolve(params.dataset)
    subset, images = load_split(store, dataset, params.split, work / "data")
    if info.classes != subset.classes:
        raise InvalidInputError(
            f"model classes {info.classes} differ from dataset classes {subset.classes}",
            code="class_mismatch",
        )
    predicted = backend.predict(weights, subset, images, info.imgsz, settings)
    saved = SavedEvaluation(model, str(dataset), params.split, info.imgsz, params.conf)
    return save_evaluation(registry, saved, subset, predicted)


@dataclass(frozen=True)
class SavedEvaluation:
    """Which evaluation a document is: model version, dataset 'name:version', split, the
    input size the predictions were made at and the ``conf`` of its error analysis."""

    model: ArtifactRef
    dataset: str
    split: str
    imgsz: int
    conf: float = DEFAULT_CONF


def save_evaluation(
    registry: ModelRegistry,
    saved: SavedEvaluation,
    subset: DetectionDataset,
    predicted: SplitPredictions,
    result: EvalResult | None = None,
) -> tuple[dict[str, Any], str]:
    """Save the evaluation document of ``predicted`` (the boxes on ``subset``) beside the
    model version, under ``evaluation_name``; returns the document and its key.

    ``result``: the COCO evaluation of exactly these boxes, when the caller has it.
    """
    doc = {
        "model": str(saved.model),
        "dataset": saved.dataset,
        "split": saved.split,
        "images": len(subset.images),
        "imgsz": saved.imgsz,
        **evaluation_details(subset, predicted, saved.conf, result),
        "evaluated_at": datetime.now(UTC).isoformat(),
    }
    name = evaluation_name(saved.dataset, saved.split)
    return doc, registry.save_evaluation(saved.model, name, doc)


def evaluation_name(dataset: str, split: str) -> str:
    """The file name (no suffix) of an evaluation on ``dataset`` ('name:version')."""
    name, _, version = dataset.partition(":")
    return f"{name}-{version}-{split}"


def evaluation_details(
    subset: DetectionDataset,
    predicted: SplitPredictions,
    conf: float,
    result: EvalResult | None = None,
) -> dict[str, Any]:
    """mAP figures, PR curves and the error analysis of one set of predictions (their COCO
    evaluation is computed unless ``result`` already is it)."""
    if result is None:
        result = evaluate_detections(subset, predicted.boxes, max_dets=predicted.max_dets)
    errors = analyse_errors(subset, predicted.boxes, conf, max_dets=predicted.max_dets)
    return {
        **result.summary(),
        "conf": conf,
        "pr_curves": pr_curves(result, list(subset.classes)).model_dump(mode="json"),
        "errors": errors.model_dump(mode="json"),
    }
