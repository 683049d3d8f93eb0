"""Evaluation jobs (``anomaly_map_evaluation``) and local-folder evaluations: submission,
the run, and the metrics.

Image AUROC, pixel AUROC and AUPRO of maps against masks, on S x S (agssp-spec §1.9: maps
upsampled bilinearly, masks resized and binarised at 0.5). Labels: ``normal_prefixes`` when
given (anomalous images with empty masks count for image AUROC only), else the mask itself.
"""

from __future__ import annotations

import csv
import io
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from services.anomaly_map.config import AnomalyMapSettings
from services.anomaly_map.ml.clip.preprocess import upsample_maps
from services.anomaly_map.ml.metrics import aupro, image_auroc, pixel_auroc
from services.anomaly_map.params import EvaluationParams, Method
from services.anomaly_map.runtime.engine import MapEngine, resolve_mode
from services.anomaly_map.runtime.methods import BatchScores, method_for
from services.anomaly_map.stores.categories import CategoryRecord, CategoryStore
from shared.errors import InvalidInputError, SuiteError
from shared.imaging.intake import ImageLimits, decode_object
from shared.jobs.context import JobContext
from shared.jobs.producer import TaskSender, submit_job
from shared.jobs.store import JobStore
from shared.schemas.dataset_maps import SCORES_FILE, is_image_key, relative_stem
from shared.schemas.jobs import JobRecord, Queue, TaskName, utcnow
from shared.storage.base import listing_prefix, validate_key

log = logging.getLogger(__name__)
MASK_THRESHOLD = 127  # masks are 0/255 with soft edges; magnetic-tile SOURCE.md


def submit_evaluation(
    sender: TaskSender, jobs: JobStore, categories: CategoryStore, params: EvaluationParams
) -> JobRecord:
    """Validate and enqueue an evaluation job; the category version is pinned now."""
    record = categories.get(params.category, params.category_version)
    payload = params.model_copy(
        update={
            "category_version": record.version,
            "mode": resolve_mode(params.mode, record),
            "images_prefix": listing_prefix(params.images_prefix),
            "masks_prefix": listing_prefix(params.masks_prefix) if params.masks_prefix else None,
        }
    )
    return submit_job(
        sender,
        jobs,
        kind="anomaly_map_evaluation",
        task_name=TaskName.ANOMALY_MAP_EVALUATE,
        queue=Queue.MAPS,
        params=payload.model_dump(mode="json"),
    )


@dataclass(frozen=True)
class SamplePlan:
    """One image to score: its key, its mask's key (or None) and a forced label (or None)."""

    key: str
    mask_key: str | None
    label: int | None


def plan_samples(
    keys: Sequence[str],
    images_prefix: str,
    masks_prefix: str,
    mask_suffix: str,
    normal_prefixes: Sequence[str],
    existing: set[str],
) -> list[SamplePlan]:
    """Pair images with masks by relative stem; keys that are masks of others are not images."""
    candidates = sorted(k for k in keys if is_image_key(k))
    mask_of = {
        k: f"{masks_prefix}{relative_stem(k, images_prefix)}{mask_suffix}" for k in candidates
    }
    masks = {m for k, m in mask_of.items() if m != k and m in existing}
    plans = []
    for key in candidates:
        if key in masks:
            continue
        mask = mask_of[key] if mask_of[key] in existing and mask_of[key] != key else None
        label = None
        if normal_prefixes:
            label = 0 if any(key.startswith(p) for p in normal_prefixes) else 1
        plans.append(SamplePlan(key, mask, label))
    return plans


def subsample(plans: list[SamplePlan], limit: int | None) -> list[SamplePlan]:
    """An evenly spaced, deterministic subset of at most ``limit`` plans."""
    if limit is None or len(plans) <= limit:
        return plans
    picks = np.linspace(0, len(plans) - 1, limit).round().astype(int)
    return [plans[i] for i in sorted(set(picks.tolist()))]


@dataclass
class _Accumulator:
    size: int
    keys: list[str] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    zero_shot: list[float] = field(default_factory=list)
    pixel_maps: list[np.ndarray] = field(default_factory=list)
    pixel_masks: list[np.ndarray] = field(default_factory=list)
    pixel_excluded: int = 0

    def add_scores(
        self, batch: Sequence[tuple[SamplePlan, np.ndarray, np.ndarray | None]], scores: BatchScores
    ) -> None:
        zero = scores.zero_shot_scores
        for i, (plan, _, mask) in enumerate(batch):
            has_defect = mask is not None and bool(mask.any())
            label = plan.label if plan.label is not None else int(has_defect)
            self.add(plan.key, label, mask, scores.maps[i])
            self.scores.append(float(scores.image_scores[i]))
            self.zero_shot.append(float("nan") if zero is None else float(zero[i]))

    def add(self, key: str, label: int, mask: np.ndarray | None, amap: np.ndarray) -> None:
        self.keys.append(key)
        self.labels.append(label)
        if label == 1 and (mask is None or not mask.any()):
            self.pixel_excluded += 1  # a defect image without an annotated region
            return
        s = self.size
        up = upsample_maps(torch.from_numpy(amap[None]), (s, s))[0].numpy()
        self.pixel_maps.append(up.astype(np.float32))
        if mask is None or label == 0:
            self.pixel_masks.append(np.zeros((s, s), dtype=bool))
        else:
            resized = cv2.resize(mask.astype(np.float32), (s, s), interpolation=cv2.INTER_LINEAR)
            self.pixel_masks.append(resized > 0.5)


def _metric(
    name: str, fn: Callable[[], float], values: dict[str, Any], errors: dict[str, str]
) -> None:
    try:
        values[name] = round(fn(), 6)
    except InvalidInputError as exc:
        values[name] = None
        errors[name] = exc.message


def _metrics(acc: _Accumulator) -> tuple[dict[str, Any], dict[str, str]]:
    values: dict[str, Any] = {}
    errors: dict[str, str] = {}
    labels, scores = np.array(acc.labels), np.array(acc.scores)
    _metric("image_auroc", lambda: image_auroc(labels, scores), values, errors)
    if acc.pixel_maps:
        masks, maps = np.stack(acc.pixel_masks), np.stack(acc.pixel_maps)
        _metric("pixel_auroc", lambda: pixel_auroc(masks, maps), values, errors)
        _metric("aupro", lambda: aupro(masks, maps), values, errors)
    else:
        values["pixel_auroc"] = values["aupro"] = None
        errors["pixel_auroc"] = errors["aupro"] = "no image with a usable mask"
    return values, errors


@dataclass(frozen=True)
class EvaluationResult:
    """Metrics and per-image scores of one evaluation."""

    summary: dict[str, Any]
    scores_csv: bytes


def _load(
    read: Callable[[str], bytes], plan: SamplePlan, limits: ImageLimits
) -> tuple[np.ndarray, np.ndarray | None]:
    image = decode_object(read(plan.key), limits, plan.key).array
    mask = None
    if plan.mask_key is not None:
        gray = ImageLimits(limits.max_bytes, limits.max_pixels, output_mode="gray")
        mask = decode_object(read(plan.mask_key), gray, plan.mask_key).array > MASK_THRESHOLD
    return image, mask


def _load_batch(
    read: Callable[[str], bytes],
    plans: Sequence[SamplePlan],
    limits: ImageLimits,
    skipped: dict[str, str],
) -> list[tuple[SamplePlan, np.ndarray, np.ndarray | None]]:
    loaded = []
    for plan in plans:
        try:
            image, mask = _load(read, plan, limits)
        except SuiteError as exc:  # one unreadable file must not sink the evaluation
            skipped[plan.key] = f"{exc.code}: {exc.message}"
            continue
        loaded.append((plan, image, mask))
    return loaded


def evaluate(
    engine: MapEngine,
    record: CategoryRecord,
    mode: Method,
    plans: Sequence[SamplePlan],
    read: Callable[[str], bytes],
    *,
    batch_size: int,
    on_batch: Callable[[int, int], None] | None = None,
) -> EvaluationResult:
    """Score every planned image and compute the three metrics.

    Args:
        read: returns the bytes of an image or mask key.
        on_batch: called with (done, total) after every batch; may raise to stop.
    """
    acc = _Accumulator(size=engine.eval_size(record, mode))
    skipped: dict[str, str] = {}
    for start in range(0, len(plans), batch_size):
        batch = _load_batch(read, plans[start : start + batch_size], engine.limits, skipped)
        if batch:
            images = [image for _, image, _ in batch]
            acc.add_scores(batch, engine.score(images, record, mode))
        if on_batch is not None:
            on_batch(min(start + batch_size, len(plans)), len(plans))
    return _result(engine, record, mode, acc, skipped)


def _model_fields(engine: MapEngine, record: CategoryRecord, mode: Method) -> dict[str, Any]:
    """What names the model of an evaluation: CLIP id, or ToCoAD version, fit job and config."""
    fields: dict[str, Any] = {"model": engine.model_for(record, mode)}
    if method_for(mode).needs.fitted_model:
        info = engine.tocoad_info(record)
        fields["tocoad"] = {k: info.get(k) for k in ("model_version", "fit_job", "preset")}
        fields["tocoad"]["config"] = info.get("config")
    return fields


def _result(
    engine: MapEngine,
    record: CategoryRecord,
    mode: Method,
    acc: _Accumulator,
    skipped: dict[str, str],
) -> EvaluationResult:
    values, errors = _metrics(acc)
    summary = {
        "category": record.name,
        "category_version": record.version,
        **_model_fields(engine, record, mode),
        "mode": mode,
        "eval_size": acc.size,
        "counts": {
            "images": len(acc.keys),
            "normal": acc.labels.count(0),
            "anomalous": acc.labels.count(1),
            "pixel_images": len(acc.pixel_maps),
            "pixel_excluded": acc.pixel_excluded,
            "skipped": len(skipped),
        },
        "metrics": values,
        "unavailable": errors,
        "skipped": skipped,
        "created_at": utcnow().isoformat(),
    }
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["image_key", "label", "image_score", "zero_shot_score"])
    for row in zip(acc.keys, acc.labels, acc.scores, acc.zero_shot, strict=True):
        writer.writerow([row[0], row[1], f"{row[2]:.6f}", f"{row[3]:.6f}"])
    return EvaluationResult(summary=summary, scores_csv=buffer.getvalue().encode())


def _store_plans(ctx: JobContext, params: EvaluationParams) -> list[SamplePlan]:
    images_prefix = validate_key(params.images_prefix, prefix=True)
    masks_prefix = validate_key(params.masks_prefix or images_prefix, prefix=True)
    keys = ctx.store.list(images_prefix)
    existing = set(keys) | set(ctx.store.list(masks_prefix))
    return plan_samples(
        keys, images_prefix, masks_prefix, params.mask_suffix, params.normal_prefixes, existing
    )


def run_job(ctx: JobContext, engine: MapEngine, *, batch_size: int, max_images: int) -> list[str]:
    """Evaluate images under an object-store prefix; results JSON to the store and the job."""
    params = EvaluationParams.model_validate(ctx.params)
    record = engine.categories.get(params.category, params.category_version)
    plans = subsample(_store_plans(ctx, params), min(params.max_images or max_images, max_images))
    if len(plans) < 2:
        raise InvalidInputError(
            f"fewer than 2 images under {params.images_prefix!r}", code="no_images"
        )

    def on_batch(done: int, total: int) -> None:
        ctx.progress(99.0 * done / total, f"{done}/{total} images", metrics={"done": done})
        ctx.check_cancel()

    result = evaluate(
        engine,
        record,
        resolve_mode(params.mode, record),
        plans,
        ctx.store.get_bytes,
        batch_size=batch_size,
        on_batch=on_batch,
    )
    out = f"evaluations/{record.name}/{ctx.job_id}/"
    # Named like a dataset map's scores file, with the evaluation's own columns.
    ctx.store.put_bytes(f"{out}{SCORES_FILE}", result.scores_csv, "text/csv")
    results_key = f"{out}results.json"
    ctx.store.put_bytes(
        results_key, json.dumps(result.summary, indent=1).encode(), "application/json"
    )
    ctx.set_outputs(
        results=results_key, metrics=result.summary["metrics"], counts=result.summary["counts"]
    )
    ctx.progress(100.0, "done", force=True, metrics=result.summary["metrics"])
    return [results_key]


def plan_local_folder(
    root: Path, normal_dirs: Sequence[str], mask_suffix: str = ".png"
) -> list[SamplePlan]:
    """Plans for a local dataset folder such as magnetic-tile (``<class>/Imgs/<stem>.jpg|.png``)."""
    files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    prefixes = [d.rstrip("/") + "/" for d in normal_dirs]
    return plan_samples(files, "", "", mask_suffix, prefixes, set(files))


def evaluate_local_folder(
    engine: MapEngine,
    record: CategoryRecord,
    root: Path,
    *,
    normal_dirs: Sequence[str],
    mode: str | None,
    max_images: int | None,
    batch_size: int,
    on_batch: Callable[[int, int], None] | None = None,
) -> EvaluationResult:
    """Evaluate a local dataset folder (e.g. magnetic-tile: ``<class>/Imgs/<stem>.jpg|.png``)."""
    plans = subsample(plan_local_folder(root, normal_dirs), max_images)
    if len(plans) < 2:
        raise InvalidInputError(f"fewer than 2 images under {root}", code="no_images")
    return evaluate(
        engine,
        record,
        resolve_mode(mode, record),
        plans,
        lambda key: (root / key).read_bytes(),
        batch_size=batch_size,
        on_batch=on_batch,
    )


def run_evaluation(ctx: JobContext, engine: MapEngine, settings: AnomalyMapSettings) -> list[str]:
    """Worker entry point of ``anomaly_map.evaluate``."""
    return run_job(
        ctx, engine, batch_size=settings.max_batch_size, max_images=settings.evaluation_max_images
    )
