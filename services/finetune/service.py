"""Use cases of the finetune service (framework-free): dataset import, AGDP, finetuning and
evaluation jobs, each a function of a ``JobContext`` and the settings.

Every job publishes with its job id as version and first checks whether that version
exists, so a redelivered job never trains or publishes twice.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from pydantic import ValidationError

from services.finetune.agdp_data import load_pseudo_labels
from services.finetune.config import FinetuneSettings
from services.finetune.dataset_io import download_prefix, import_dataset, load_split
from services.finetune.datasets_store import MANIFEST_FILE, DatasetCatalog, DatasetRef
from services.finetune.ml.checkpoint import DetectorCheckpoint
from services.finetune.ml.config import AgdpConfig, FinetuneConfig
from services.finetune.ml.dataset import DetectionDataset
from services.finetune.ml.detector import TransferReport, detector_from_checkpoint
from services.finetune.ml.image_files import content_hash
from services.finetune.ml.materialize import materialize_yolo
from services.finetune.ml.predict import evaluate_detector
from services.finetune.ml.splits import split_train_val
from services.finetune.params import (
    AgdpJobParams,
    DatasetImportParams,
    EvaluationParams,
    FinetuneJobParams,
    InitParams,
    frozen_layers,
)
from services.finetune.registry import WEIGHTS_FILE, ModelRegistry
from services.finetune.start_weights import resolve_init
from services.finetune.training import (
    PackagedDetector,
    evaluation_doc,
    image_limits,
    job_hooks,
    package_detector,
    prepare_runtime,
    publish_detector,
    train_detector,
    transfer_summary,
    workspace,
)
from shared.errors import InvalidInputError, JobCanceledError
from shared.jobs.context import JobContext
from shared.schemas.artifacts import ArtifactRef
from shared.storage.base import ObjectStore

log = logging.getLogger(__name__)
TrainConfig = TypeVar("TrainConfig", AgdpConfig, FinetuneConfig)


def run_import_job(ctx: JobContext, settings: FinetuneSettings) -> list[str]:
    """Download a VOC/COCO/YOLO folder from the store and publish it as ``name:<job id>``."""
    params = DatasetImportParams.model_validate(ctx.params)
    ref = DatasetRef(params.name, ctx.job_id)
    if not ctx.store.exists(ref.key(MANIFEST_FILE)):
        with workspace(settings, ctx.job_id) as work:
            ctx.progress(5, f"downloading {params.prefix}", force=True)
            source = work / "source"
            max_bytes = int(settings.max_image_mb * 2**20)
            download_prefix(ctx.store, params.prefix, source, max_bytes, settings.download_threads)
            ctx.check_cancel()
            ctx.progress(50, "parsing annotations, checking images", force=True)
            import_dataset(
                ctx.store, source, params, ctx.job_id, image_limits(settings), params.prefix
            )
    manifest = DatasetCatalog(ctx.store).manifest(ref)
    ctx.set_outputs(
        dataset=str(ref),
        classes=manifest["classes"],
        images=manifest["images"],
        boxes=manifest["boxes"],
        splits=manifest["splits"],
    )
    return [ref.key(MANIFEST_FILE)]


def run_agdp_job(ctx: JobContext, settings: FinetuneSettings) -> list[str]:
    """AGDP (agssp-spec §5.2): one-class detector on pseudo boxes, backbone frozen."""
    params = AgdpJobParams.model_validate(ctx.params)
    extra = {} if params.frozen is None else {"freeze": frozen_layers(params.frozen)}
    config = _config(AgdpConfig, {**params.config, **extra}, params.scale, settings)
    ref = ArtifactRef(name=params.output_name(), version=ctx.job_id)
    if _published(ctx, ref):
        return [str(ref)]
    prepare_runtime(settings)
    backbone = InitParams(kind="agbp", artifact=params.backbone_artifact)
    init = resolve_init(ctx.store, backbone, settings) if params.backbone_artifact else None
    with workspace(settings, ctx.job_id) as work:
        ctx.progress(1, "downloading images and pseudo labels", force=True)
        data = load_pseudo_labels(
            ctx.store,
            params.images_prefix,
            params.labels_prefix,
            work / "data",
            image_limits(settings),
            settings.download_threads,
        )
        train, val = split_train_val(
            data.dataset, params.val_fraction, config.seed, _hashes(data.dataset, data.images_dir)
        )
        folder = materialize_yolo(train, val, data.images_dir, work / "yolo")
        ctx.set_outputs(pseudo_labels=data.source, train_images=len(train.images))
        ctx.check_cancel()
        result = train_detector(
            init, folder, work / "train", config, job_hooks(ctx, work), _record_transfer(ctx)
        )
        _check_canceled(ctx, result.canceled)
        packaged = package_detector(result, val, data.images_dir, work / "export", config, settings)
        start = backbone if params.backbone_artifact else InitParams()
        lineage = _lineage(ctx, "agdp", start, pseudo_labels=data.source)
        publish_detector(ctx.store, ref, packaged, "agdp", config, lineage)
    _finish(ctx, ref, packaged, result.epochs_completed, result.history)
    return [str(ref)]


def run_finetune_job(ctx: JobContext, settings: FinetuneSettings) -> list[str]:
    """Finetune YOLOv8 on a stored dataset from scratch, AGBP, AGDP or a checkpoint (§5.3-5.4)."""
    params = FinetuneJobParams.model_validate(ctx.params)
    config = _config(FinetuneConfig, params.config, params.scale, settings)
    ref = ArtifactRef(name=params.model_name, version=ctx.job_id)
    if _published(ctx, ref):
        return [str(ref)]
    prepare_runtime(settings)
    dataset = DatasetCatalog(ctx.store).resolve(params.dataset)
    split = f"mini-{params.mini}" if params.mini else params.split
    init = resolve_init(ctx.store, params.init, settings)
    with workspace(settings, ctx.job_id) as work:
        ctx.progress(1, f"downloading {dataset}", force=True)
        train, images = load_split(ctx.store, dataset, split, work / "data")
        val, _ = load_split(ctx.store, dataset, params.val_split, work / "data")
        folder = materialize_yolo(train, val, images, work / "yolo")
        ctx.check_cancel()
        result = train_detector(
            init, folder, work / "train", config, job_hooks(ctx, work), _record_transfer(ctx)
        )
        _check_canceled(ctx, result.canceled)
        packaged = package_detector(result, val, images, work / "export", config, settings)
        lineage = _lineage(
            ctx,
            "finetune",
            params.init,
            dataset=str(dataset),
            split=split,
            val_split=params.val_split,
        )
        publish_detector(ctx.store, ref, packaged, "finetune", config, lineage)
    _finish(ctx, ref, packaged, result.epochs_completed, result.history)
    return [str(ref)]


def run_evaluation_job(ctx: JobContext, settings: FinetuneSettings) -> list[str]:
    """Evaluate a registered model on a stored split; saved with the model and in outputs."""
    params = EvaluationParams.model_validate(ctx.params)
    with workspace(settings, ctx.job_id) as work:
        ctx.progress(5, "downloading the split and the model", force=True)
        doc, key = evaluate_model(ctx.store, params, settings, work)
    ctx.set_outputs(**doc, saved_to=key)
    return [key]


def evaluate_model(
    store: ObjectStore, params: EvaluationParams, settings: FinetuneSettings, work: Path
) -> tuple[dict[str, Any], str]:
    """COCO mAP of ``params.model`` on a dataset split; returns the document and its key.

    Raises:
        InvalidInputError: the model's classes differ from the dataset's (class_mismatch).
    """
    prepare_runtime(settings)
    registry = ModelRegistry(store)
    model = registry.resolve(params.model)
    raw = registry.artifacts.get_file_bytes(model, WEIGHTS_FILE)
    checkpoint = DetectorCheckpoint.from_bytes(raw, source=f"{model}/{WEIGHTS_FILE}")
    dataset = DatasetCatalog(store).resolve(params.dataset)
    subset, images = load_split(store, dataset, params.split, work / "data")
    if list(checkpoint.classes) != subset.classes:
        raise InvalidInputError(
            f"model classes {list(checkpoint.classes)} differ from dataset classes "
            f"{subset.classes}",
            code="class_mismatch",
        )
    imgsz = int(checkpoint.config.get("imgsz", 640))
    detector = detector_from_checkpoint(checkpoint)
    result = evaluate_detector(
        detector, subset, images, imgsz, settings.eval_batch, settings.device
    )
    doc = {
        "model": str(model),
        "dataset": str(dataset),
        "split": params.split,
        "images": len(subset.images),
        "imgsz": imgsz,
        **evaluation_doc(result),
        "evaluated_at": datetime.now(UTC).isoformat(),
    }
    name = f"{dataset.name}-{dataset.version}-{params.split}"
    return doc, registry.save_evaluation(model, name, doc)


def import_local_dataset(
    store: ObjectStore,
    root: Path,
    params: DatasetImportParams,
    version: str,
    settings: FinetuneSettings,
) -> tuple[DatasetRef, dict[str, Any]]:
    """The CLI's import: a local folder straight into a stored version."""
    return import_dataset(store, root, params, version, image_limits(settings), str(root))


def _config(
    cls: type[TrainConfig], raw: dict[str, Any], scale: str, settings: FinetuneSettings
) -> TrainConfig:
    """The job's config with the worker's device and data loader settings."""
    values = {**raw, "scale": scale, "device": settings.device, "workers": settings.workers}
    try:
        return cls.model_validate(values)
    except ValidationError as exc:
        raise InvalidInputError(f"invalid training config: {exc}", code="invalid_config") from exc


def _published(ctx: JobContext, ref: ArtifactRef) -> bool:
    if ctx.store.exists(ref.manifest_key):  # an earlier delivery published, then died
        log.info("job %s: %s is already published", ctx.job_id, ref)
        ctx.set_outputs(artifact=str(ref))
        return True
    return False


def _record_transfer(ctx: JobContext) -> Any:
    def record(report: TransferReport | None) -> None:
        ctx.set_outputs(transfer=transfer_summary(report))

    return record


def _check_canceled(ctx: JobContext, canceled: bool) -> None:
    if canceled:
        raise JobCanceledError(f"job {ctx.job_id} was canceled; nothing was published")


def _hashes(dataset: DetectionDataset, images_dir: Path) -> dict[str, str]:
    return {
        im.file_name: content_hash((images_dir / im.file_name).read_bytes())
        for im in dataset.images
    }


def _lineage(ctx: JobContext, kind: str, init: InitParams, **inputs: Any) -> dict[str, Any]:
    """What a detector was made from: inputs, start weights with their own chain, transfer."""
    registry = ModelRegistry(ctx.store)
    chain = registry.chain_entry(registry.resolve(init.artifact)) if init.artifact else []
    return {
        "kind": kind,
        "job_id": ctx.job_id,
        **inputs,
        "init": init.model_dump(mode="json"),
        "transfer": ctx.record.outputs.get("transfer"),
        "chain": chain,
    }


def _finish(
    ctx: JobContext,
    ref: ArtifactRef,
    packaged: PackagedDetector,
    epochs: int,
    history: list[dict[str, float]],
) -> None:
    ctx.progress(100, f"published {ref}", metrics={"map50": packaged.metrics["map50"]})
    ctx.set_outputs(
        artifact=str(ref),
        metrics={k: packaged.metrics[k] for k in ("map50", "map50_95", "per_class")},
        epochs_completed=epochs,
        history=history,
    )
