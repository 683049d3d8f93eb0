"""Steps shared by the job kinds of the finetune service; torch-free, so the API submits jobs.

The torch side is a ``usecases.backend.DetectorBackend`` that the worker passes in: each job
kind's module reads top-down from submission to published artifact, and the API that
imports it for the submission never loads torch. Every job publishes with its job id as version and
first checks whether that version exists, so a redelivered job never trains twice.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any, TypeVar

from pydantic import ValidationError

from services.finetune.config import FinetuneSettings
from services.finetune.ml.backend import (
    DetectorBackend,
    PackagedDetector,
    TrainedRun,
    TrainRequest,
)
from services.finetune.ml.materialize import YoloDataFolder
from services.finetune.params import InitParams
from services.finetune.stores.models import ModelRegistry
from shared.errors import InvalidInputError, JobCanceledError
from shared.jobs.context import JobContext
from shared.jobs.producer import TaskSender, submit_job
from shared.jobs.store import JobStore
from shared.jobs.train_hooks import job_train_hooks
from shared.ml.hooks import TrainHooks
from shared.schemas.artifacts import ArtifactRef
from shared.schemas.backbones import BACKBONE_FILE, BACKBONES
from shared.schemas.detector import AgdpConfig, DetectorTrainConfig, FinetuneConfig
from shared.schemas.detector_artifact import WEIGHTS_FILE, DetectorMetadata
from shared.schemas.detector_families import DEFAULT_FAMILY, check_backbone, detector_family
from shared.schemas.evaluation import PER_IMAGE_FILE
from shared.schemas.jobs import JobRecord, Queue
from shared.storage.artifacts import ArtifactStore
from shared.storage.base import ObjectStore

log = logging.getLogger(__name__)
TrainConfig = TypeVar("TrainConfig", AgdpConfig, FinetuneConfig)

LAST_PT = "last.pt"
LAST_META = "last.json"
# A finished run (weights, the trainer's .pt, the rest as JSON), kept until the job publishes.
TRAINED_WEIGHTS, TRAINED_PT, TRAINED_META = "trained_weights.pt", "trained.pt", "trained.json"
TRAIN_SPAN = (5.0, 90.0)  # share of job progress the training epochs take


def submit(
    sender: TaskSender,
    jobs: JobStore,
    kind: str,
    task: str,
    params: dict[str, Any],
    queue: Queue = Queue.FINETUNE,
) -> JobRecord:
    """Enqueue a job on one of this service's queues (training by default)."""
    return submit_job(sender, jobs, kind=kind, task_name=task, queue=queue, params=params)


def backbone_ref(
    registry: ModelRegistry,
    spec: str,
    scale: str,
    family: str = DEFAULT_FAMILY,
    backbone: str | None = None,
) -> ArtifactRef:
    """A pinned AGBP artifact whose backbone a ``family`` detector of ``scale`` builds on.

    ``backbone`` is the one the job's config resolves to (None: the family's scale decides,
    as YOLOv8's does); an artifact of another backbone is refused, never half-loaded.

    Raises:
        InvalidInputError: no backbone file, a backbone the family does not take, another
            backbone than the config's, or one of another scale.
    """
    ref = registry.resolve(spec)
    manifest = registry.artifacts.manifest(ref)
    if BACKBONE_FILE not in manifest.files:
        raise InvalidInputError(f"{ref} has no {BACKBONE_FILE}", code="not_a_backbone")
    row = detector_family(family)
    have = str(manifest.metadata.get("backbone") or "")
    if have and (not row.takes(have) or backbone not in (None, have)):
        wanted = backbone or f"one of {list(row.backbone_names())}"
        raise InvalidInputError(
            f"{ref} is a {have} backbone; this {row.label} job builds on {wanted}",
            code="backbone_incompatible",
        )
    spec_of = BACKBONES.get(have)
    have_scale = spec_of.detector_scale if spec_of is not None else None
    if have_scale is not None and have_scale != scale:
        raise InvalidInputError(
            f"{ref} is a {row.label}-{have_scale} backbone, the job asks for scale {scale!r}",
            code="scale_mismatch",
        )
    return ref


def detector_ref(
    registry: ModelRegistry, spec: str, scale: str | None = None, family: str | None = None
) -> ArtifactRef:
    """A pinned detector artifact (with tensors to start from), of the given scale and family."""
    ref = registry.resolve(spec)
    manifest = registry.artifacts.manifest(ref)
    if WEIGHTS_FILE not in manifest.files:
        raise InvalidInputError(
            f"{ref} is not a detector (no {WEIGHTS_FILE})", code="not_a_detector"
        )
    have_family = str(manifest.metadata.get("family") or DEFAULT_FAMILY)
    if family is not None and have_family != family:
        raise InvalidInputError(
            f"{ref} is a {have_family} detector, the job trains a {family}",
            code="family_mismatch",
        )
    have = manifest.metadata.get("scale")
    if scale is not None and have is not None and have != scale:
        raise InvalidInputError(
            f"{ref} is a {have_family}-{have} detector, the job asks for scale {scale!r}",
            code="scale_mismatch",
        )
    return ref


def pinned_init(
    registry: ModelRegistry, init: InitParams, scale: str, config: Mapping[str, Any] | None = None
) -> InitParams:
    """``init`` with its artifact pinned to the version that exists now, checked against the
    family and backbone the job's ``config`` names (default: YOLOv8)."""
    if init.artifact is None:
        return init
    family = str((config or {}).get("family") or DEFAULT_FAMILY)
    if init.kind == "agbp":
        backbone = check_backbone(family, (config or {}).get("backbone"))
        ref = backbone_ref(registry, init.artifact, scale, family, backbone)
    else:
        ref = detector_ref(registry, init.artifact, scale, family)
    return init.model_copy(update={"artifact": str(ref)})


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


def train_config(
    cls: type[TrainConfig], raw: dict[str, Any], scale: str, settings: FinetuneSettings
) -> TrainConfig:
    """The job's config with the worker's device and data loader settings."""
    values = {**raw, "scale": scale, "device": settings.device, "workers": settings.workers}
    try:
        return cls.model_validate(values)
    except ValidationError as exc:
        raise InvalidInputError(f"invalid training config: {exc}", code="invalid_config") from exc


def fitted_epochs(ctx: JobContext, config: TrainConfig, train_images: int) -> TrainConfig:
    """``config`` with its epochs raised to reach ``min_steps`` on ``train_images`` images
    (``DetectorTrainConfig.for_train_images``); the epochs it trains go on the record."""
    fitted = config.for_train_images(train_images)
    if fitted.epochs != config.epochs:
        log.info("job %s: %d epochs for min_steps %d", ctx.job_id, fitted.epochs, config.min_steps)
    ctx.set_outputs(epochs_planned=fitted.epochs, train_images=train_images)
    return fitted


def published(ctx: JobContext, ref: ArtifactRef) -> bool:
    """True (and the outputs say so) when an earlier delivery published ``ref``, then died."""
    if ctx.store.exists(ref.manifest_key):
        log.info("job %s: %s is already published", ctx.job_id, ref)
        ctx.set_outputs(artifact=str(ref))
        return True
    return False


def train_request(
    ctx: JobContext,
    init: InitParams,
    data: YoloDataFolder,
    work: Path,
    config: DetectorTrainConfig,
    settings: FinetuneSettings,
) -> TrainRequest:
    """A run of a job: hooks on its record, the transfer summary saved in its outputs."""

    def record(summary: dict[str, Any] | None) -> None:
        ctx.set_outputs(transfer=summary)

    hooks = job_hooks(ctx, work)
    return TrainRequest(ctx.store, init, data, work / "train", config, hooks, settings, record)


def check_canceled(ctx: JobContext, run: TrainedRun) -> None:
    """Raises JobCanceledError when the run stopped on the job's cancel flag."""
    if run.canceled:
        raise JobCanceledError(f"job {ctx.job_id} was canceled; nothing was published")


def train_once(ctx: JobContext, backend: DetectorBackend, request: TrainRequest) -> TrainedRun:
    """The job's finished run: trained now, or kept from an earlier delivery of the job.

    A finished run is saved with the job's checkpoints before packaging (export, the final
    evaluation, publishing), so a worker killed there costs the next delivery the packaging
    only, never the training again.

    Raises:
        JobCanceledError: the run stopped on the job's cancel flag.
    """
    kept = _kept_run(ctx, request.work)
    if kept is not None:
        ctx.progress(TRAIN_SPAN[1], "training finished in an earlier delivery", force=True)
        return kept
    run = backend.train(request)
    check_canceled(ctx, run)
    _keep_run(ctx, run)
    return run


def _keep_run(ctx: JobContext, run: TrainedRun) -> None:
    ctx.save_checkpoint(run.weights, TRAINED_WEIGHTS)
    ctx.store.put_file(ctx.jobs.checkpoint_key(ctx.job_id, TRAINED_PT), run.pt_file)
    meta = {k: v for k, v in asdict(run).items() if k not in ("weights", "pt_file")}
    meta["pt_name"] = run.pt_file.name
    ctx.save_checkpoint(json.dumps(meta).encode(), TRAINED_META)  # last: it marks them whole


def _kept_run(ctx: JobContext, work: Path) -> TrainedRun | None:
    raw = ctx.load_checkpoint(TRAINED_META)
    weights = ctx.load_checkpoint(TRAINED_WEIGHTS) if raw is not None else None
    if raw is None or weights is None:
        return None
    meta = json.loads(raw)
    pt_file = work / "kept" / meta.pop("pt_name")
    pt_file.parent.mkdir(parents=True, exist_ok=True)
    ctx.store.get_file(ctx.jobs.checkpoint_key(ctx.job_id, TRAINED_PT), pt_file)
    log.info("job %s: packaging the run an earlier delivery trained", ctx.job_id)
    return TrainedRun(weights=weights, pt_file=pt_file, **meta)


def lineage(ctx: JobContext, kind: str, init: InitParams, **inputs: Any) -> dict[str, Any]:
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


def publish_detector(
    store: ObjectStore,
    ref: ArtifactRef,
    packaged: PackagedDetector,
    kind: str,
    config: DetectorTrainConfig,
    lineage: dict[str, Any],
) -> ArtifactRef:
    """Publish the files as ``ref`` with kind, metrics summary and lineage in the manifest."""
    metadata = DetectorMetadata(
        kind=kind,
        job_id=lineage.get("job_id"),
        family=config.family,
        backbone=config.resolved_backbone(),
        scale=config.scale if detector_family(config.family).uses_scale else None,
        imgsz=config.imgsz,
        classes=packaged.classes,
        metrics={k: packaged.metrics[k] for k in ("map50", "map50_95")},
        lineage=lineage,
    )
    return ArtifactStore(store).publish(
        ref.name, packaged.files, version=ref.version, metadata=metadata.model_dump(mode="json")
    )


def finish(ctx: JobContext, ref: ArtifactRef, packaged: PackagedDetector, run: TrainedRun) -> None:
    """Final progress and the outputs of a published detector job.

    ``run`` holds the seed, thread count and device of the training (same machine, same
    ``run``: same weights); ``eval_per_image`` the key of the per-image validation records
    (``shared.schemas.evaluation``) that a lift's bootstrap interval is computed from.
    """
    ctx.progress(100, f"published {ref}", metrics={"map50": packaged.metrics["map50"]})
    extra = {}
    if PER_IMAGE_FILE in packaged.files:
        extra["eval_per_image"] = ref.key(PER_IMAGE_FILE)
    ctx.set_outputs(
        artifact=str(ref),
        metrics={k: packaged.metrics[k] for k in ("map50", "map50_95", "per_class")},
        epochs_completed=run.epochs_completed,
        history=run.history,
        run=packaged.metrics.get("run"),
        **extra,
    )


def job_hooks(ctx: JobContext, work: Path, span: tuple[float, float] = TRAIN_SPAN) -> TrainHooks:
    """TrainHooks writing progress and metrics to the job record and ``last.pt`` to the store."""

    def on_checkpoint(state: dict[str, Any]) -> None:
        ctx.store.put_file(ctx.jobs.checkpoint_key(ctx.job_id, LAST_PT), Path(state["path"]))
        meta = {"epoch": state["epoch"], "epochs": state["config"]["epochs"]}
        ctx.save_checkpoint(json.dumps(meta).encode(), LAST_META)

    resume = _resume_state(ctx, work)
    return job_train_hooks(ctx, on_checkpoint=on_checkpoint, resume_state=resume, span=span)


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
