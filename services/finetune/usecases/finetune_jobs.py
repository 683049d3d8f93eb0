"""Finetune jobs: YOLOv8 on a stored dataset from scratch, AGBP, AGDP or a checkpoint (§5.3-5.4).

Submission (the API) checks the config, the splits and the start weights and pins every
reference to the version that exists now, so the job's record and the lineage of what it
publishes name exact versions. The run (the worker) trains, exports and publishes
``model_name:<job id>``, then saves the version's evaluation on the val split from the val
boxes its mAP was computed from (what an evaluation job at the default ``conf`` saves).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from services.finetune.config import FinetuneSettings
from services.finetune.ml.backend import Backends
from services.finetune.ml.materialize import materialize_yolo
from services.finetune.params import EvaluationParams, FinetuneJobParams, check_train_config
from services.finetune.stores.datasets import DatasetCatalog, DatasetRef, load_split
from services.finetune.stores.models import ModelRegistry
from services.finetune.usecases.common import (
    finish,
    fitted_epochs,
    lineage,
    pinned_init,
    publish_detector,
    published,
    submit,
    train_config,
    train_once,
    train_request,
    workspace,
)
from services.finetune.usecases.evaluations import (
    SavedEvaluation,
    evaluate_model,
    evaluation_name,
    save_evaluation,
)
from shared.errors import InvalidInputError
from shared.jobs.context import JobContext
from shared.jobs.producer import TaskSender
from shared.jobs.store import JobStore
from shared.schemas.artifacts import ArtifactRef
from shared.schemas.detector import FinetuneConfig
from shared.schemas.jobs import JobRecord, TaskName

log = logging.getLogger(__name__)
FINETUNE_KIND = "finetune"
EVALUATION_PROGRESS = 95.0
Evaluate = Callable[[], tuple[dict[str, Any], str]]


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
    _check_batch(catalog, dataset, _train_split(params), config.get("batch"))
    init = pinned_init(ModelRegistry(jobs.store), params.init, params.scale, config)
    stored = params.model_copy(update={"config": config, "dataset": str(dataset), "init": init})
    return submit(
        sender, jobs, FINETUNE_KIND, TaskName.FINETUNE_TRAIN, stored.model_dump(mode="json")
    )


def run_finetune_job(ctx: JobContext, settings: FinetuneSettings, backends: Backends) -> list[str]:
    """Train on the job's split, validate on its val split, publish ``model_name:<job id>``."""
    params = FinetuneJobParams.model_validate(ctx.params)
    config = train_config(FinetuneConfig, params.config, params.scale, settings)
    ref = ArtifactRef(name=params.model_name, version=ctx.job_id)
    if published(ctx, ref):
        # a worker lost between publishing and the evaluation: evaluate now, never retrain
        _record_evaluation(ctx, ref, lambda: _saved_or_new(ctx, settings, backends, ref, params))
        return [str(ref)]
    backend = backends(config.family)
    backend.prepare(settings)
    dataset = DatasetCatalog(ctx.store).resolve(params.dataset)
    split = _train_split(params)
    with workspace(settings, ctx.job_id) as work:
        ctx.progress(1, f"downloading {dataset}", force=True)
        train, images = load_split(ctx.store, dataset, split, work / "data")
        val, _ = load_split(ctx.store, dataset, params.val_split, work / "data")
        folder = materialize_yolo(train, val, images, work / "yolo")
        config = fitted_epochs(ctx, config, folder.num_train)
        ctx.check_cancel()
        run = train_once(
            ctx, backend, train_request(ctx, params.init, folder, work, config, settings)
        )
        packaged = backend.package(run, val, images, work / "export", settings, config)
        inputs = {"dataset": str(dataset), "split": split, "val_split": params.val_split}
        made_of = lineage(ctx, FINETUNE_KIND, params.init, **inputs)
        publish_detector(ctx.store, ref, packaged, FINETUNE_KIND, config, made_of)
        saved = SavedEvaluation(ref, str(dataset), params.val_split, config.imgsz)
        ctx.progress(EVALUATION_PROGRESS, f"saving the evaluation of {ref}", force=True)

        def evaluate() -> tuple[dict[str, Any], str]:
            registry = ModelRegistry(ctx.store)
            if packaged.val is not None:  # the boxes and evaluation its metrics came from
                kept = packaged.val
                return save_evaluation(registry, saved, val, kept.predictions, kept.result)
            boxes = backend.predict(run.weights, val, images, config.imgsz, settings)
            return save_evaluation(registry, saved, val, boxes)

        _record_evaluation(ctx, ref, evaluate)
    finish(ctx, ref, packaged, run)
    return [str(ref)]


def _saved_or_new(
    ctx: JobContext,
    settings: FinetuneSettings,
    backends: Backends,
    ref: ArtifactRef,
    params: FinetuneJobParams,
) -> tuple[dict[str, Any], str]:
    """The version's evaluation on its val split: the one saved, or a new one from the
    registered weights (as an evaluation job makes it)."""
    registry = ModelRegistry(ctx.store)
    dataset = str(DatasetCatalog(ctx.store).resolve(params.dataset))
    name = evaluation_name(dataset, params.val_split)
    found = registry.evaluation(ref, name)
    if found is not None:
        return found, registry.evaluation_key(ref, name)
    wanted = EvaluationParams(model=str(ref), dataset=dataset, split=params.val_split)
    ctx.progress(EVALUATION_PROGRESS, f"evaluating {ref} on {params.val_split!r}", force=True)
    with workspace(settings, ctx.job_id) as work:
        return evaluate_model(ctx.store, wanted, settings, work, backends)


def _record_evaluation(ctx: JobContext, ref: ArtifactRef, evaluate: Evaluate) -> None:
    """Run ``evaluate`` and put its key and error totals in the job's outputs.

    The version is registered by now, so a failure is a warning in the outputs
    (``evaluation_error``), not a failed job: an evaluation job can save it later.
    """
    try:
        doc, key = evaluate()
    except Exception as exc:  # whatever broke, the registered model stands
        log.exception("job %s: the evaluation of %s was not saved", ctx.job_id, ref)
        reason = f"{type(exc).__name__}: {exc} (queue the evaluation with POST /v1/evaluations)"
        ctx.set_outputs(evaluation_error=reason)
        return
    ctx.record.outputs.pop("evaluation_error", None)  # an earlier delivery's warning
    totals = (doc.get("errors") or {}).get("totals")
    ctx.set_outputs(evaluation_key=key, **({"error_totals": totals} if totals else {}))


def _train_split(params: FinetuneJobParams) -> str:
    return f"mini-{params.mini}" if params.mini else params.split


def _check_splits(catalog: DatasetCatalog, ref: DatasetRef, params: FinetuneJobParams) -> None:
    if params.mini is not None and params.split != "train":
        raise InvalidInputError("mini-N subsets are drawn from 'train' only", code="invalid_split")
    split = _train_split(params)
    if split == params.val_split:
        raise InvalidInputError(
            f"training and validation split are both {split!r}", code="invalid_split"
        )
    catalog.check_split(ref, split)
    catalog.check_split(ref, params.val_split, allow_mini=False)


def _check_batch(catalog: DatasetCatalog, ref: DatasetRef, split: str, batch: Any) -> None:
    """Refuse, before the job queues, a batch that the training split cannot fill.

    Only a stored split's size is known at submission; a ``mini-N`` drawn at training time
    and the default batch (not resolved here) are left to the worker.
    """
    size = catalog.manifest(ref).get("splits", {}).get(split)
    if isinstance(batch, int) and isinstance(size, int) and batch > size:
        raise InvalidInputError(
            f"batch {batch} is larger than split {split!r} of {ref} ({size} images); "
            f"use a batch of at most {size}",
            code="batch_too_large",
        )
