"""Use cases of the pretrain service: the AGBP job and the pseudo-label job (framework-free).

Workers call ``run_agbp_job`` / ``run_pseudo_label_job`` with a ``JobContext``; everything
they need (settings, store through the context) comes in as arguments.
"""

from __future__ import annotations

import io
import json
import logging
import shutil
from pathlib import Path
from typing import Any

import torch

from services.pretrain.config import PretrainSettings
from services.pretrain.data_store import CachedPairSource, prefetch
from services.pretrain.ddp import train_agbp_ddp
from services.pretrain.job_config import agbp_config
from services.pretrain.ml.agbp_config import AgbpConfig
from services.pretrain.ml.train import AgbpResult, train_agbp
from services.pretrain.params import AgbpJobParams, StartWeights
from services.pretrain.pseudo_labels import run_pseudo_labels
from services.pretrain.reports import config_yaml, loss_curve_csv, loss_curve_png
from services.pretrain.sources import PairingResult, collect_pairs
from services.pretrain.submission import resolve_artifact
from shared.errors import InvalidInputError, JobCanceledError, UnavailableError
from shared.imaging.intake import ImageLimits
from shared.jobs.context import JobContext
from shared.ml.device import resolve_device
from shared.ml.hooks import TrainHooks
from shared.schemas.artifacts import ArtifactRef
from shared.storage.artifacts import ArtifactStore
from shared.storage.base import ObjectNotFoundError, ObjectStore
from shared.storage.filesystem import write_atomically

log = logging.getLogger(__name__)

CHECKPOINT_NAME = "agbp.pt"
PAIRING_NAME = "pairing.json"
WEIGHTS_FILE = "backbone.pt"

__all__ = ["run_agbp_job", "run_pseudo_label_job"]


def image_limits(settings: PretrainSettings) -> ImageLimits:
    """Caps for images read from the store (bytes from PRETRAIN_MAX_IMAGE_MB)."""
    return ImageLimits(
        max_bytes=int(settings.max_image_mb * 2**20),
        max_pixels=settings.common.http.max_image_pixels,
    )


def run_pseudo_label_job(ctx: JobContext, settings: PretrainSettings) -> list[str]:
    """Pseudo-defect boxes for one category; see ``services.pretrain.pseudo_labels``."""
    return run_pseudo_labels(ctx, limits=image_limits(settings), examples=settings.overlay_examples)


def run_agbp_job(ctx: JobContext, settings: PretrainSettings) -> list[str]:
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
    artifacts = ArtifactStore(ctx.store)
    if ctx.store.exists(ref.manifest_key):  # an earlier delivery published, then died
        ctx.set_outputs(artifact=str(ref))
        return [str(ref)]
    workdir = settings.cache_root() / ctx.job_id
    try:
        pairing = _pairing(ctx, params)
        data = _cached_data(ctx, pairing, workdir, settings)
        weights = _start_weights(ctx.store, params.start_weights, settings, workdir)
        result = _train(cfg, data, _hooks(ctx), weights, settings)
        if result.stopped:
            raise JobCanceledError(f"job {ctx.job_id} was canceled at step {result.steps}")
        files = _artifact_files(result, ref)
        artifacts.publish(
            ref.name, files, version=ref.version, metadata=_lineage(ctx, params, result, pairing)
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
        threads=settings.prefetch_threads,
        on_progress=lambda done, total: ctx.progress(
            ctx.record.progress, f"caching data {done}/{total} files"
        ),
        should_stop=ctx.should_stop,
    )
    return data


def _hooks(ctx: JobContext) -> TrainHooks:
    def on_progress(percent: float, message: str, metrics: Any) -> None:
        ctx.progress(percent, message, force=True, metrics=dict(metrics))

    def on_checkpoint(state: dict[str, Any]) -> None:
        buffer = io.BytesIO()
        torch.save(state, buffer)
        ctx.save_checkpoint(buffer.getvalue(), CHECKPOINT_NAME)
        ctx.progress(ctx.record.progress, force=True, metrics={"checkpoint_step": state["step"]})

    return TrainHooks(
        on_progress=on_progress,
        should_stop=ctx.should_stop,
        on_checkpoint=on_checkpoint,
        resume_state=_resume_state(ctx),
    )


def _resume_state(ctx: JobContext) -> dict[str, Any] | None:
    raw = ctx.load_checkpoint(CHECKPOINT_NAME)
    if raw is None:
        return None
    try:
        # Our own checkpoint in our job prefix; it holds tensors and plain types only.
        state: dict[str, Any] = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
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
        ref = resolve_artifact(store, weights.artifact)
        path = workdir / "start_weights.pt"
        write_atomically(path, [ArtifactStore(store).get_file_bytes(ref, WEIGHTS_FILE)])
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


def _train(
    cfg: AgbpConfig,
    data: CachedPairSource,
    hooks: TrainHooks,
    weights: Path | None,
    settings: PretrainSettings,
) -> AgbpResult:
    try:
        device = resolve_device(settings.device)
    except RuntimeError as exc:
        raise UnavailableError(str(exc), code="device_unavailable") from exc
    gpus = torch.cuda.device_count() if device.type == "cuda" and device.index is None else 0
    if settings.ddp and gpus > 1:
        log.info("AGBP with DDP on %d GPUs", gpus)
        return train_agbp_ddp(cfg, data, hooks=hooks, world=gpus, weights=weights)
    return train_agbp(cfg, data, hooks=hooks, device=device, weights=weights)


def _artifact_files(result: AgbpResult, ref: ArtifactRef) -> dict[str, bytes | Path]:
    buffer = io.BytesIO()
    torch.save(result.state_dict, buffer)
    metrics = {
        "steps": result.steps,
        "epochs": result.config.epochs,
        "final": result.history[-1] if result.history else {},
        "history": result.history,
    }
    title = f"AGBP {result.config.backbone} ({result.config.objective}) {ref.version}"
    return {
        WEIGHTS_FILE: buffer.getvalue(),
        "config.yaml": config_yaml(result.config.model_dump(mode="json")),
        "metrics.json": _json(metrics),
        "loss_curve.csv": loss_curve_csv(result.history),
        "loss_curve.png": loss_curve_png(result.history, title),
    }


def _lineage(
    ctx: JobContext, params: AgbpJobParams, result: AgbpResult, pairing: PairingResult
) -> dict[str, Any]:
    cfg = result.config
    weights = params.start_weights
    return {
        "job_id": ctx.job_id,
        "kind": "agbp",
        "backbone": cfg.backbone,
        "objective": cfg.objective,
        # CSPDarknet weights use the ultralytics detector's keys (model.<i>.…).
        "key_names": "ultralytics-detector" if cfg.backbone.startswith("yolov8") else "timm",
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
