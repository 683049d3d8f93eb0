"""Evaluation jobs: COCO mAP of a registered model on a stored split, saved with the model.

The in-process comparison of start weights (the CLI's ``finetune compare``) lives in
:mod:`services.finetune.usecases.comparisons`.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from services.finetune.config import FinetuneSettings
from services.finetune.ml.backend import Backends, model_family
from services.finetune.params import EvaluationParams
from services.finetune.stores.datasets import DatasetCatalog, load_split
from services.finetune.stores.models import ModelRegistry
from services.finetune.usecases.common import detector_ref, submit, workspace
from shared.errors import InvalidInputError
from shared.jobs.context import JobContext
from shared.jobs.producer import TaskSender
from shared.jobs.store import JobStore
from shared.schemas.detector_artifact import WEIGHTS_FILE
from shared.schemas.jobs import JobRecord, TaskName
from shared.storage.base import ObjectStore

EVALUATION_KIND = "evaluation"


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
    ctx.set_outputs(**doc, saved_to=key)
    return [key]


def evaluate_model(
    store: ObjectStore,
    params: EvaluationParams,
    settings: FinetuneSettings,
    work: Path,
    backends: Backends,
) -> tuple[dict[str, Any], str]:
    """COCO mAP of ``params.model`` on a dataset split; returns the document and its key.

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
    doc = {
        "model": str(model),
        "dataset": str(dataset),
        "split": params.split,
        "images": len(subset.images),
        "imgsz": info.imgsz,
        **backend.evaluate(weights, subset, images, info.imgsz, settings),
        "evaluated_at": datetime.now(UTC).isoformat(),
    }
    name = f"{dataset.name}-{dataset.version}-{params.split}"
    return doc, registry.save_evaluation(model, name, doc)
