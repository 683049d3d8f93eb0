"""Dataset map jobs (``anomaly_map_dataset``): submission and the run, one raw map per image
under a prefix, written in the layout of the seam ``shared.schemas.dataset_maps``. Resumable:
a small checkpoint segment lists the maps and scores of the batches since the last one, the
union of the segments is the set of done maps, so checkpoint I/O stays linear in the dataset
size. A segment is saved at most every ``checkpoint_every_s`` (``AnomalyMapSettings``, default
``CHECKPOINT_EVERY_S``; each makes the store durable
first, ``shared.jobs.store``: one sync per batch cost as much as the maps' own writes), at a
cancel and at the end; a lost worker redoes at most that much work.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from services.anomaly_map.config import AnomalyMapSettings
from services.anomaly_map.params import DatasetMapParams, Method
from services.anomaly_map.runtime.engine import MapEngine, resolve_mode
from services.anomaly_map.runtime.methods import method_for
from services.anomaly_map.stores.categories import CategoryStore
from services.anomaly_map.stores.labelled_defects import defect_image_keys, select_defects
from services.anomaly_map.stores.maps import encode_npy
from shared.errors import InvalidInputError, JobCanceledError, SuiteError
from shared.imaging.intake import decode_image
from shared.jobs.context import JobContext
from shared.jobs.producer import TaskSender, submit_job
from shared.jobs.store import JobStore
from shared.schemas.dataset_maps import (
    DatasetMapManifest,
    ScoreRow,
    is_image_key,
    manifest_key,
    map_keys,
    scores_csv,
    scores_key,
)
from shared.schemas.jobs import JobRecord, Queue, TaskName, utcnow
from shared.storage.base import listing_prefix, validate_key

log = logging.getLogger(__name__)
SEGMENTS = "batches/"
CHECKPOINT_EVERY_S = 2.0


def submit_dataset_maps(
    sender: TaskSender, jobs: JobStore, categories: CategoryStore, params: DatasetMapParams
) -> JobRecord:
    """Validate and enqueue a dataset map job; the category version is pinned now."""
    record = categories.get(params.category, params.category_version)
    payload = params.model_copy(
        update={
            "category_version": record.version,
            "mode": resolve_mode(params.mode, record),
            "prefix": listing_prefix(params.prefix) if params.prefix is not None else None,
            "output_prefix": listing_prefix(params.output_prefix) if params.output_prefix else None,
        }
    )
    return submit_job(
        sender,
        jobs,
        kind="anomaly_map_dataset",
        task_name=TaskName.ANOMALY_MAP_DATASET,
        queue=Queue.MAPS,
        params=payload.model_dump(mode="json"),
    )


def default_output_prefix(category: str, job_id: str) -> str:
    return f"maps/{category}/{job_id}/"


def _load_done(ctx: JobContext) -> tuple[dict[str, ScoreRow], dict[str, str]]:
    rows: dict[str, ScoreRow] = {}
    skipped: dict[str, str] = {}
    base = f"{ctx.prefix}checkpoints/{SEGMENTS}"
    for key in ctx.store.list(base):
        segment = json.loads(ctx.store.get_bytes(key))
        for row in segment["rows"]:
            rows[row[0]] = ScoreRow(row[0], row[1], row[2], row[3])
        skipped.update(segment["skipped"])
    return rows, skipped


def _decode_batch(
    engine: MapEngine, ctx: JobContext, keys: list[str]
) -> tuple[list[str], list[Any], dict[str, str]]:
    good_keys, images, skipped = [], [], {}
    for key in keys:
        try:
            images.append(decode_image(ctx.store.get_bytes(key), engine.limits).array)
            good_keys.append(key)
        except SuiteError as exc:  # one bad file must not sink a 100k-image job
            log.warning("job %s: skipping %s: %s", ctx.job_id, key, exc.message)
            skipped[key] = f"{exc.code}: {exc.message}"
    return good_keys, images, skipped


def _process_batch(
    engine: MapEngine, ctx: JobContext, params: _Plan, keys: list[str]
) -> tuple[list[ScoreRow], dict[str, str]]:
    good_keys, images, skipped = _decode_batch(engine, ctx, keys)
    rows = []
    if images:
        scores = engine.score(images, params.record, params.mode)
        zero = scores.zero_shot_scores
        for i, key in enumerate(good_keys):
            amap = scores.maps[i]
            ctx.store.put_bytes(params.targets[key], encode_npy(amap))
            s0 = float("nan") if zero is None else float(zero[i])  # ToCoAD has no text score
            rows.append(ScoreRow(key, float(scores.image_scores[i]), s0, float(amap.max())))
    return rows, skipped


class _Segment:
    """The rows of the batches since the last checkpoint segment, named by the first one's
    position in the sorted keys (a resumed run starts past every saved one)."""

    def __init__(self, ctx: JobContext, every_s: float) -> None:
        self.ctx, self.every_s, self.saved_at = ctx, every_s, time.monotonic()
        self.first: int | None = None
        self.rows: list[ScoreRow] = []
        self.skipped: dict[str, str] = {}

    def add(self, position: int, rows: list[ScoreRow], skipped: dict[str, str]) -> None:
        self.first = position if self.first is None else self.first
        self.rows += rows
        self.skipped.update(skipped)
        if time.monotonic() - self.saved_at >= self.every_s:
            self.save()

    def save(self) -> None:
        if self.first is not None:
            segment = {
                "rows": [
                    [r.image_key, r.image_score, r.zero_shot_score, r.map_max] for r in self.rows
                ],
                "skipped": self.skipped,
            }
            self.ctx.save_checkpoint(
                json.dumps(segment).encode(), f"{SEGMENTS}{self.first:08d}.json"
            )
        self.first, self.rows, self.skipped = None, [], {}
        self.saved_at = time.monotonic()

    def check_cancel(self) -> None:
        """``ctx.check_cancel``, saving what is done first: a later run need not redo it."""
        try:
            self.ctx.check_cancel()
        except JobCanceledError:
            self.save()
            raise


class _Plan:
    def __init__(self, ctx: JobContext, engine: MapEngine) -> None:
        params = DatasetMapParams.model_validate(ctx.params)
        self.record = engine.categories.get(params.category, params.category_version)
        self.mode: Method = resolve_mode(params.mode, self.record)
        self.output = params.output_prefix or default_output_prefix(self.record.name, ctx.job_id)
        validate_key(self.output, prefix=True)
        self.prefix, self.keys, self.notes = _images(ctx, params)
        self.targets = map_keys(self.keys, self.prefix, self.output)
        self.position = {key: i for i, key in enumerate(self.keys)}


def _images(ctx: JobContext, params: DatasetMapParams) -> tuple[str, list[str], dict[str, Any]]:
    """The images' prefix, sorted keys and what the record says about them: every image under
    ``prefix``, or one side of the labelled defect images of ``defects`` (the reference side
    holds the images a ToCoAD fit asking for the paste side never saw)."""
    notes: dict[str, Any] = {}
    if params.defects is not None:
        d = params.defects
        selection = select_defects(ctx.store, d)
        prefix, keys = defect_image_keys(selection)
        where = f"{d.dataset} split {d.split!r} (images with boxes, side {d.side!r})"
        notes["defect_images"] = selection.outputs()
        warning = selection.warning()
        if warning is not None:
            notes["warnings"] = [*ctx.record.outputs.get("warnings", []), warning]
    else:
        assert params.prefix is not None  # checked by DatasetMapParams
        prefix = validate_key(params.prefix, prefix=True)
        keys = [k for k in ctx.store.list(prefix) if is_image_key(k)]
        where = repr(prefix)
    if not keys:
        raise InvalidInputError(f"no images under {where}", code="no_images")
    return prefix, sorted(keys), notes


def run(
    ctx: JobContext,
    engine: MapEngine,
    *,
    batch_size: int,
    checkpoint_every_s: float = CHECKPOINT_EVERY_S,
) -> list[str]:
    """Write a map per image, resuming from the checkpoint segments of an earlier attempt."""
    plan = _Plan(ctx, engine)
    rows, skipped = _load_done(ctx)
    resumed_from = len(rows) + len(skipped)
    todo = [k for k in plan.keys if k not in rows and k not in skipped]
    total = len(plan.keys)
    ctx.set_outputs(output_prefix=plan.output, total=total, resumed_from=resumed_from, **plan.notes)
    started, computed = time.monotonic(), 0
    segment = _Segment(ctx, checkpoint_every_s)
    for start in range(0, len(todo), batch_size):
        segment.check_cancel()
        batch = todo[start : start + batch_size]
        new_rows, new_skipped = _process_batch(engine, ctx, plan, batch)
        segment.add(plan.position[batch[0]], new_rows, new_skipped)
        rows.update((r.image_key, r) for r in new_rows)
        skipped.update(new_skipped)
        computed += len(batch)
        done = len(rows) + len(skipped)
        rate = computed / max(time.monotonic() - started, 1e-9)
        ctx.progress(
            100.0 * done / total * 0.99,
            f"{done}/{total} images",
            metrics={"done": done, "total": total, "images_per_s": round(rate, 3)},
        )
    segment.save()
    return _finish(ctx, engine, plan, rows, skipped, computed)


def run_dataset_maps(ctx: JobContext, engine: MapEngine, settings: AnomalyMapSettings) -> list[str]:
    """Worker entry point of ``anomaly_map.dataset_maps``."""
    return run(
        ctx,
        engine,
        batch_size=settings.max_batch_size,
        checkpoint_every_s=settings.checkpoint_every_s,
    )


def _lineage(engine: MapEngine, plan: _Plan) -> dict[str, Any] | None:
    """Which fitted model made the maps, for methods that declare one."""
    if not method_for(plan.mode).needs.fitted_model:
        return None
    info = engine.tocoad_info(plan.record)
    return {k: info.get(k) for k in ("model_version", "fit_job", "preset", "config")}


def _finish(
    ctx: JobContext,
    engine: MapEngine,
    plan: _Plan,
    rows: dict[str, ScoreRow],
    skipped: dict[str, str],
    computed: int,
) -> list[str]:
    scores = scores_key(plan.output)
    ctx.store.put_bytes(scores, scores_csv(rows.values()), "text/csv")
    manifest = DatasetMapManifest(
        category=plan.record.name,
        category_version=plan.record.version,
        model=engine.model_for(plan.record, plan.mode),
        mode=plan.mode,
        grid=engine.map_side(plan.record, plan.mode),
        map_format="npy float32 (grid, grid), raw map (agssp-spec §1.9 for kead)",
        tocoad=_lineage(engine, plan),
        count=len(rows),
        job_id=ctx.job_id,
        created_at=utcnow().isoformat(),
        scores=scores,
        maps={key: plan.targets[key] for key in sorted(rows)},
        skipped=skipped,
    )
    key = manifest_key(plan.output)
    ctx.store.put_bytes(key, manifest.to_bytes(), "application/json")
    ctx.set_outputs(
        output_prefix=plan.output,
        count=len(rows),
        skipped=len(skipped),
        computed=computed,  # images scored by this attempt; the rest came from the checkpoint
        manifest=key,
    )
    return [key]
