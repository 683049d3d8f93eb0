"""Finetune jobs: YOLOv8 on a stored dataset from scratch, AGBP, AGDP or a checkpoint (§5.3-5.4).

Submission (the API) checks the config, the splits and the start weights and pins every
reference to the version that exists now, so the job's record and the lineage of what it
publishes name exact versions. The run (the worker) trains, exports and publishes
``model_name:<job id>``.
"""

from __future__ import annotations

from typing import Any

from services.finetune.config import FinetuneSettings
from services.finetune.ml.backend import Backends
from services.finetune.ml.materialize import materialize_yolo
from services.finetune.params import FinetuneJobParams, check_train_config
from services.finetune.stores.datasets import DatasetCatalog, DatasetRef, load_split
from services.finetune.stores.models import ModelRegistry
from services.finetune.usecases.common import (
    finish,
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
from shared.errors import InvalidInputError
from shared.jobs.context import JobContext
from shared.jobs.producer import TaskSender
from shared.jobs.store import JobStore
from shared.schemas.artifacts import ArtifactRef
from shared.schemas.detector import FinetuneConfig
from shared.schemas.jobs import JobRecord, TaskName

FINETUNE_KIND = "finetune"


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
        ctx.check_cancel()
        run = train_once(
            ctx, backend, train_request(ctx, params.init, folder, work, config, settings)
        )
        packaged = backend.package(run, val, images, work / "export", settings, config)
        inputs = {"dataset": str(dataset), "split": split, "val_split": params.val_split}
        made_of = lineage(ctx, FINETUNE_KIND, params.init, **inputs)
        publish_detector(ctx.store, ref, packaged, FINETUNE_KIND, config, made_of)
    finish(ctx, ref, packaged, run)
    return [str(ref)]


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
