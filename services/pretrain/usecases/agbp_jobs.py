"""AGBP jobs: submission (validate, pin start weights, enqueue) and the worker's run.

Torch-free, so the API imports it without the training stack: the worker hands ``run_agbp_job``
a ``Trainer`` (``services.pretrain.ml.runner.AgbpTrainer``) for everything torch does.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import shutil
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

from services.pretrain.config import PretrainSettings
from services.pretrain.params import AgbpConfig, AgbpJobParams, StartWeights, agbp_config
from services.pretrain.stores.backbones import backbone_weights, resolve_backbone
from services.pretrain.stores.maps import PairingResult, collect_pairs, read_manifest
from services.pretrain.stores.pairs import CachedPairSource, prefetch
from services.pretrain.stores.reports import config_yaml, loss_curve_csv, loss_curve_png
from shared.errors import InvalidInputError, JobCanceledError
from shared.imaging.intake import image_limits
from shared.jobs.context import JobContext
from shared.jobs.producer import TaskSender, submit_job
from shared.jobs.store import JobStore
from shared.jobs.train_hooks import job_train_hooks
from shared.ml.hooks import TrainHooks
from shared.schemas.artifacts import ArtifactRef
from shared.schemas.backbones import BACKBONE_FILE, family_traits
from shared.schemas.jobs import JobRecord, Queue, TaskName
from shared.storage.artifacts import ArtifactStore
from shared.storage.base import ObjectNotFoundError, ObjectStore
from shared.storage.filesystem import write_atomically

log = logging.getLogger(__name__)

AGBP_KIND = "agbp"
CHECKPOINT_NAME = "agbp.pt"
PAIRING_NAME = "pairing.json"
# The training loop asks "canceled?" before every step; the job reads its cancel flag (one
# store request, a HEAD on S3) at most this often, and at the first step after each
# checkpoint. A cancel therefore stops training within CANCEL_CHECK_S plus one step.
CANCEL_CHECK_S = 1.0
# Raises InvalidInputError for a config the job could not train with.

__all__ = ["AGBP_KIND", "Trainer", "run_agbp_job", "submit_agbp_job"]


class TrainedBackbone(Protocol):
    """What a training run hands back (``services.pretrain.ml.train.AgbpResult``)."""

    @property
    def state_dict(self) -> Mapping[str, Any]: ...
    @property
    def history(self) -> list[dict[str, float]]: ...
    @property
    def config(self) -> AgbpConfig: ...
    @property
    def steps(self) -> int: ...
    @property
    def stopped(self) -> bool: ...


class Trainer(Protocol):
    """The torch side of the job: train, and turn states into bytes and back."""

    def train(
        self, cfg: AgbpConfig, data: CachedPairSource, hooks: TrainHooks, weights: Path | None
    ) -> TrainedBackbone: ...
    def encode(self, state: Mapping[str, Any]) -> bytes: ...
    def decode(self, raw: bytes) -> dict[str, Any]: ...


def submit_agbp_job(sender: TaskSender, jobs: JobStore, params: AgbpJobParams) -> JobRecord:
    """Enqueue an AGBP job on the ``pretrain`` queue, start weights pinned to a version.

    ``AgbpJobParams`` already refused a config that cannot train (``agbp_config``).

    Raises:
        InvalidInputError: start weights without a backbone, or a batch above the data.
        NotFoundError: the start-weights artifact does not exist.
    """
    _refuse_batch_over_data(jobs.store, params)
    weights = _pinned_start_weights(jobs.store, params.start_weights)
    name = params.artifact_name or f"agbp-{params.backbone()}"
    stored = params.model_copy(update={"artifact_name": name, "start_weights": weights})
    return submit_job(
        sender,
        jobs,
        kind=AGBP_KIND,
        task_name=TaskName.PRETRAIN_AGBP,
        queue=Queue.PRETRAIN,
        params=stored.model_dump(mode="json"),
    )


def _refuse_batch_over_data(store: ObjectStore, params: AgbpJobParams) -> None:
    """Refuse a ``batch_size`` above the maps the sources' manifests list (one GET each).

    Pairs never outnumber the maps a dataset-map manifest lists; maps a user brings without a
    manifest are counted by the worker, which refuses the same thing after pairing.
    """
    batch = params.config.batch_size
    if batch is None:
        return
    maps = 0
    for spec in params.sources:
        manifest = read_manifest(store, spec.maps_prefix)
        if manifest is None:
            return
        maps += len(manifest.maps)
    if maps < batch:
        raise InvalidInputError(
            f"batch_size {batch} is larger than the {maps} maps the sources' manifests list",
            code="invalid_config",
        )


def _pinned_start_weights(store: ObjectStore, weights: StartWeights | None) -> StartWeights | None:
    """An artifact pinned to the version that exists now; a path is checked by the worker."""
    if weights is None or weights.artifact is None:
        return weights
    return StartWeights(artifact=str(resolve_backbone(store, weights.artifact)))


def run_agbp_job(ctx: JobContext, settings: PretrainSettings, trainer: Trainer) -> list[str]:
    """Pair, cache, train (resuming from the job's checkpoint), publish once.

    Returns:
        ``['<artifact name>:<job id>']``.

    Raises:
        InvalidInputError: bad config, unpaired or unusable data, bad start weights.
        JobCanceledError: canceled; nothing is published.
    """
    params = AgbpJobParams.model_validate(ctx.params)
    cfg = agbp_config(params, num_workers=settings.num_workers)
    ref = ArtifactRef(name=params.artifact_name or f"agbp-{cfg.backbone}", version=ctx.job_id)
    if ctx.store.exists(ref.manifest_key):  # an earlier delivery published, then died
        ctx.set_outputs(artifact=str(ref))
        return [str(ref)]
    workdir = settings.cache_root() / ctx.job_id
    try:
        pairing = _pairing(ctx, params)
        data = _cached_data(ctx, pairing, workdir, settings)
        weights = _start_weights(ctx.store, params.start_weights, settings, workdir)
        result = trainer.train(cfg, data, _hooks(ctx, trainer, settings), weights)
        if result.stopped:
            raise JobCanceledError(f"job {ctx.job_id} was canceled at step {result.steps}")
        ArtifactStore(ctx.store).publish(
            ref.name,
            _artifact_files(result, ref, trainer),
            version=ref.version,
            metadata=_lineage(ctx, params, result, pairing),
        )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    ctx.set_outputs(artifact=str(ref), steps=result.steps, history=result.history)
    return [str(ref)]


def _pairing(ctx: JobContext, params: AgbpJobParams) -> PairingResult:
    """Pair once per job: a resumed run reuses the stored list, so its order is unchanged."""
    key = ctx.prefix + PAIRING_NAME
    try:
        pairing = PairingResult.from_json(ctx.store.get_bytes(key))
    except ObjectNotFoundError:
        pairing = collect_pairs(ctx.store, params.sources)
        ctx.store.put_bytes(key, pairing.to_json(), content_type="application/json")
    ctx.set_outputs(
        pairs=len(pairing.pairs),
        categories=list(pairing.categories),
        pairing=[r.summary() for r in pairing.reports],
        pairing_report=key,
    )
    return pairing


def _cached_data(
    ctx: JobContext, pairing: PairingResult, workdir: Path, settings: PretrainSettings
) -> CachedPairSource:
    """Copy every pair into the job's cache folder once; epochs then read local files."""
    data = CachedPairSource(pairing.pairs, workdir / "objects", image_limits(settings))
    prefetch(
        ctx.store,
        data,
        threads=settings.cache_threads(),
        on_progress=lambda done, total: ctx.progress(
            ctx.record.progress, f"caching data {done}/{total} files"
        ),
        should_stop=ctx.should_stop,
    )
    return data


class ThrottledCancel:
    """``should_stop`` that reads the job's cancel flag at most once per ``interval_s``.

    The first call reads it, and so does the first call after ``check_next`` (called after
    each checkpoint, so a cancel is seen at the latest one step after a saved state).
    """

    def __init__(
        self,
        read: Callable[[], bool],
        interval_s: float = CANCEL_CHECK_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._read, self._interval, self._clock = read, interval_s, clock
        self._next = -math.inf
        self._stopped = False

    def __call__(self) -> bool:
        if self._stopped:
            return True
        now = self._clock()
        if now >= self._next:
            self._stopped = bool(self._read())
            self._next = now + self._interval
        return self._stopped

    def check_next(self) -> None:
        """Read the flag at the next call whatever the time."""
        self._next = -math.inf


def _hooks(ctx: JobContext, trainer: Trainer, settings: PretrainSettings) -> TrainHooks:
    cancel = ThrottledCancel(ctx.should_stop)

    def on_checkpoint(state: dict[str, Any]) -> None:
        ctx.save_checkpoint(trainer.encode(state), CHECKPOINT_NAME)
        # Forced: watchers read checkpoint_step as "a durable checkpoint of this step exists".
        ctx.progress(ctx.record.progress, force=True, metrics={"checkpoint_step": state["step"]})
        cancel.check_next()

    resume = _resume_state(ctx, trainer)
    hooks = job_train_hooks(
        ctx,
        on_checkpoint=on_checkpoint,
        resume_state=resume,
        checkpoint_min_interval_s=settings.checkpoint_min_interval_s,
    )
    return dataclasses.replace(hooks, should_stop=cancel)


def _resume_state(ctx: JobContext, trainer: Trainer) -> dict[str, Any] | None:
    raw = ctx.load_checkpoint(CHECKPOINT_NAME)
    if raw is None:
        return None
    try:
        state = trainer.decode(raw)  # our own checkpoint in our job prefix
    except Exception:
        log.warning("job %s: unreadable checkpoint, starting over", ctx.job_id, exc_info=True)
        return None
    log.info("job %s: resuming AGBP from step %s", ctx.job_id, state.get("step"))
    return state


def _start_weights(
    store: ObjectStore, weights: StartWeights | None, settings: PretrainSettings, workdir: Path
) -> Path | None:
    if weights is None:
        return None
    if weights.artifact is not None:
        path = workdir / "start_weights.pt"
        write_atomically(path, [backbone_weights(store, resolve_backbone(store, weights.artifact))])
        return path
    # Only files under the model folder: a job request must not name arbitrary local files.
    root = settings.common.paths.resolved_model_dir()
    given = Path(str(weights.path))
    path = (given if given.is_absolute() else root / given).resolve()
    if not path.is_relative_to(root):
        raise InvalidInputError(
            f"start weights {weights.path!r} are outside AGSSP_MODEL_DIR ({root})",
            code="start_weights_outside_model_dir",
        )
    if not path.is_file():
        raise InvalidInputError(f"start weights {path} do not exist", code="start_weights_missing")
    return path


def _artifact_files(
    result: TrainedBackbone, ref: ArtifactRef, trainer: Trainer
) -> dict[str, bytes | Path]:
    metrics = {
        "steps": result.steps,
        "epochs": result.config.epochs,
        "final": result.history[-1] if result.history else {},
        "history": result.history,
    }
    title = f"AGBP {result.config.backbone} ({result.config.objective}) {ref.version}"
    return {
        BACKBONE_FILE: trainer.encode(result.state_dict),
        "config.yaml": config_yaml(result.config.model_dump(mode="json")),
        "metrics.json": _json(metrics),
        "loss_curve.csv": loss_curve_csv(result.history),
        "loss_curve.png": loss_curve_png(result.history, title),
    }


def _lineage(
    ctx: JobContext, params: AgbpJobParams, result: TrainedBackbone, pairing: PairingResult
) -> dict[str, Any]:
    cfg = result.config
    weights = params.start_weights
    return {
        "job_id": ctx.job_id,
        "kind": AGBP_KIND,
        "backbone": cfg.backbone,
        "objective": cfg.objective,
        # CSPDarknet weights use the ultralytics detector's keys (model.<i>.…).
        "key_names": family_traits(cfg.backbone).key_names,
        "steps": result.steps,
        "start_weights": None if weights is None else weights.model_dump(),
        "categories": list(pairing.categories),
        "sources": [
            {
                "category": r.category,
                "label": r.label,
                "images_prefix": r.images_prefix,
                "maps_prefix": r.maps_prefix,
                "map_job_id": r.map_job_id,
                "pairs": r.matched,
            }
            for r in pairing.reports
        ],
    }


def _json(value: Any) -> bytes:
    return json.dumps(value, indent=1).encode()
