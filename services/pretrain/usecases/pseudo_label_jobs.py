"""Pseudo-label jobs: pseudo-defect boxes of one category from its anomaly maps (agssp-spec §3).

Submission (enqueue, refuse a finished ``out_prefix``) and the worker's run. The output is the
seam ``shared.schemas.pseudo_labels`` (finetune's AGDP job reads it); its manifest is written
last. An image-level gate (``gate``: off, fixed or auto, ``services.pretrain.ml.gate``) decides
which images may get boxes; its ``gate_*`` fields go on the record and into ``summary.json``.
cv2-free, so the API imports it: the worker hands ``run_pseudo_label_job`` a ``Labeler``
(``services.pretrain.ml.labeler.BoxLabeler``).
"""

from __future__ import annotations

import json
import math
import threading
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any, Protocol, TypeVar

import numpy as np
from numpy.typing import NDArray

from services.pretrain.config import PretrainSettings
from services.pretrain.params import PseudoLabelParams
from services.pretrain.stores.maps import Pair, SourceReport, collect_pairs, load_scores, score_of
from services.pretrain.stores.pairs import load_map, read_image_size
from shared.errors import ConflictError, InvalidInputError, JobCanceledError
from shared.imaging.intake import ImageLimits, decode_object, image_limits
from shared.jobs.context import JobContext
from shared.jobs.producer import TaskSender, submit_job
from shared.jobs.store import JobStore
from shared.schemas.jobs import JobRecord, Queue, TaskName
from shared.schemas.pseudo_labels import (
    CLASSES_FILE,
    COCO_FILE,
    SUMMARY_FILE,
    PseudoLabelFiles,
    PseudoLabelManifest,
    classes_text,
    example_key,
    file_key,
    label_key,
    manifest_key,
)

PSEUDO_LABELS_KIND = "pseudo_labels"
_BATCH = 64
_THREADS = 8
# Maps kept between the two passes over the pool (agssp-spec §3 needs every map's maximum
# before the first box): 1,000 maps of 128 x 128; past it, a map is read again.
MAP_MEMORY = 64 * 2**20
T = TypeVar("T")
R = TypeVar("R")


class ScoredBox(Protocol):
    @property
    def score(self) -> float: ...


class LabeledImage(Protocol):
    @property
    def boxes(self) -> Sequence[ScoredBox]: ...


Item = TypeVar("Item", bound=LabeledImage)


class Gate(Protocol):
    """An image-level gate (``services.pretrain.ml.gate.GateDecision``)."""

    @property
    def threshold(self) -> float | None: ...
    def passes(self, score: float | None) -> bool: ...
    def outputs(self) -> dict[str, Any]: ...


class Labeler(Protocol[Item]):
    """The cv2 side of the job (``BoxLabeler``): thresholds, boxes, overlays, COCO, summary."""

    def threshold(self, maxima: Sequence[float], c: float) -> float: ...
    def gate(
        self, scores: Sequence[float | None], source: str, params: PseudoLabelParams
    ) -> Gate: ...
    def label(
        self,
        amap: NDArray[np.float32],
        size: tuple[int, int],
        threshold: float,
        params: PseudoLabelParams,
        image_score: float | None,
        file_name: str,
        score_gate: float | None = None,
    ) -> tuple[Item, str]: ...
    def overlay_png(self, image: NDArray[np.uint8], item: Item) -> bytes: ...
    def coco(self, items: Sequence[Item]) -> dict[str, Any]: ...
    def summary(self, items: Sequence[Item], category: str) -> dict[str, Any]: ...


def submit_pseudo_label_job(
    sender: TaskSender, jobs: JobStore, params: PseudoLabelParams
) -> JobRecord:
    """Enqueue a pseudo-label job; a custom ``out_prefix`` must not hold finished output."""
    if params.out_prefix is not None and jobs.store.exists(manifest_key(params.out_prefix)):
        raise ConflictError(
            f"{params.out_prefix} already holds pseudo labels; choose another out_prefix",
            code="output_exists",
        )
    return submit_job(
        sender,
        jobs,
        kind=PSEUDO_LABELS_KIND,
        task_name=TaskName.PRETRAIN_PSEUDO_LABELS,
        queue=Queue.PRETRAIN,
        params=params.model_dump(mode="json"),
    )


def run_pseudo_label_job(
    ctx: JobContext, settings: PretrainSettings, labeler: Labeler[Any]
) -> list[str]:
    """Threshold, boxes, YOLO/COCO files, summary, overlays; returns the manifest key.

    Raises:
        InvalidInputError: unpaired data, unreadable maps/images, duplicate stems, or a
            score gate without image scores.
        ConflictError: ``out_prefix`` holds another job's finished output.
        JobCanceledError: canceled; partial output under the default prefix is removed
            (under a caller's ``out_prefix`` it stays, without a manifest).
    """
    params = PseudoLabelParams.model_validate(ctx.params)
    limits = image_limits(settings)
    out = params.output_prefix(ctx.job_id)
    _check_output(ctx, out)
    pairing = collect_pairs(ctx.store, [params.source()])
    pairs, report = pairing.pairs, pairing.reports[0]
    _check_unique_stems(pairs)
    ctx.set_outputs(out_prefix=out, pairing=report.summary())
    try:
        items, threshold, gate = _label_all(ctx, params, pairs, out, limits, labeler)
        shown = _write_examples(ctx, items, pairs, out, limits, settings.overlay_examples, labeler)
    except JobCanceledError:
        if params.out_prefix is None:  # our own job prefix; a caller's prefix is left alone
            ctx.store.delete_prefix(out)
        raise
    stats = labeler.summary(items, params.category) | gate
    summary = _summary(params, threshold, ctx.job_id, stats)
    _write_json(ctx, file_key(out, SUMMARY_FILE), summary)
    ctx.store.put_bytes(file_key(out, CLASSES_FILE), classes_text())
    _write_json(ctx, file_key(out, COCO_FILE), _coco(labeler.coco(items), pairs))
    manifest = _manifest(ctx, params, report, pairs, summary, shown)
    ctx.store.put_bytes(manifest_key(out), manifest.to_bytes(), content_type="application/json")
    ctx.set_outputs(
        threshold=threshold,
        images=len(items),
        images_with_boxes=summary["images_with_boxes"],
        share_with_boxes=summary["share_with_boxes"],
        boxes_per_image=summary["boxes_per_image"],
        boxes=sum(len(i.boxes) for i in items),
        annotations=file_key(out, COCO_FILE),
        summary=file_key(out, SUMMARY_FILE),
        examples=shown,
    )
    return [manifest_key(out)]


def _check_output(ctx: JobContext, out: str) -> None:
    try:
        existing = json.loads(ctx.store.get_bytes(manifest_key(out)))
    except Exception:  # absent (or unreadable): nothing finished there
        return
    if existing.get("job_id") != ctx.job_id:
        raise ConflictError(
            f"{out} holds the output of job {existing.get('job_id')}", code="output_exists"
        )


def _stem(key: str) -> str:
    return PurePosixPath(key).stem


def _check_unique_stems(pairs: Sequence[Pair]) -> None:
    counts = Counter(_stem(p.image_key) for p in pairs)
    duplicates = sorted(stem for stem, n in counts.items() if n > 1)
    if duplicates:
        raise InvalidInputError(
            f"label files are named by image stem; these stems repeat: {duplicates[:5]}",
            code="duplicate_stems",
        )


class _MapMemory:
    """Maps kept from the first pass for the second, up to ``budget`` bytes in all."""

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.used = 0
        self._lock = threading.Lock()

    def keep(self, amap: NDArray[np.float32]) -> NDArray[np.float32] | None:
        with self._lock:
            if self.used + amap.nbytes > self.budget:
                return None
            self.used += amap.nbytes
            return amap


@dataclass(frozen=True)
class _Seen:
    """What the first pass keeps of one map: its maximum, and the map while memory lasts."""

    maximum: float
    amap: NDArray[np.float32] | None


def _read_map(ctx: JobContext, pair: Pair) -> NDArray[np.float32]:
    return load_map(ctx.store.get_bytes(pair.map_key), pair.map_key)


def _label_all(
    ctx: JobContext,
    params: PseudoLabelParams,
    pairs: Sequence[Pair],
    out: str,
    limits: ImageLimits,
    labeler: Labeler[Item],
) -> tuple[list[Item], float, dict[str, Any]]:
    """Boxes of every image; returns them, T_c and the gate's outputs (also on the record).

    Two passes: T_c and the gate need every map's maximum before any image is labelled,
    so the first pass keeps only the maxima and as many maps as ``MAP_MEMORY`` holds, and
    the second reads the others again. Memory stays bounded however large the pool.
    """
    memory = _MapMemory(MAP_MEMORY)

    def first(pair: Pair) -> _Seen:
        amap = _read_map(ctx, pair)
        return _Seen(float(np.max(amap)), memory.keep(amap))

    seen = _parallel(ctx, pairs, first, (0, 30), "maps")
    maxima = [s.maximum for s in seen]
    threshold = labeler.threshold(maxima, params.c)
    scores, source, note = _image_scores(ctx, params, pairs, maxima)
    gate = labeler.gate(scores, source, params)
    passed = sum(1 for s in scores if gate.passes(s))
    gate_outputs = gate.outputs() | {"gate_score_note": note, "gate_passed_images": passed}
    ctx.set_outputs(**gate_outputs, maps_kept_in_memory=sum(s.amap is not None for s in seen))
    rel = len(params.images_prefix)

    def label(item: tuple[Pair, _Seen, float | None]) -> Item:
        pair, kept, score = item
        amap = kept.amap if kept.amap is not None else _read_map(ctx, pair)
        size = read_image_size(ctx.store, pair.image_key, limits)
        boxes, text = labeler.label(
            amap, size, threshold, params, score, pair.image_key[rel:], gate.threshold
        )
        key = label_key(out, _stem(pair.image_key))
        ctx.store.put_bytes(key, text.encode(), content_type="text/plain")
        return boxes

    work = list(zip(pairs, seen, scores, strict=True))
    items = _parallel(ctx, work, label, (30, 90), "images")
    return items, threshold, gate_outputs


def _image_scores(
    ctx: JobContext,
    params: PseudoLabelParams,
    pairs: Sequence[Pair],
    maxima: Sequence[float],
) -> tuple[list[float | None], str, str]:
    """One image score per pair, their source ("scores", "map_max", "none") and a note.

    A fixed gate is in the units of the dataset-map scores, so it needs them. The auto gate
    takes them when every pool image has a finite one, else each map's maximum for every
    image: one scale for the whole fit, never a mix of the two.
    """
    if params.gate == "off":
        return [None] * len(pairs), "none", "gate off: no image scores read"
    scores = load_scores(ctx.store, params.maps_prefix)
    if scores is None and params.gate == "fixed":
        raise InvalidInputError(
            f"score_gate needs image scores, but {params.maps_prefix} has none",
            code="scores_missing",
        )
    listed = [None if scores is None else score_of(scores, p.image_key) for p in pairs]
    missing = sum(1 for s in listed if s is None or not math.isfinite(s))
    if params.gate == "fixed" or missing == 0:
        return listed, "scores", f"scores.csv: {len(pairs) - missing}/{len(pairs)} images"
    why = "no scores.csv" if scores is None else f"scores.csv: {missing}/{len(pairs)} unscored"
    return list(maxima), "map_max", f"{why}: each map's maximum instead"


def _parallel(
    ctx: JobContext,
    items: Sequence[T],
    work: Callable[[T], R],
    span: tuple[float, float],
    what: str,
) -> list[R]:
    """``work`` over ``items`` on threads (store I/O), in order; cancel checked per batch."""
    results: list[R] = []
    with ThreadPoolExecutor(max_workers=_THREADS) as pool:
        for start in range(0, len(items), _BATCH):
            ctx.check_cancel()
            results.extend(pool.map(work, items[start : start + _BATCH]))
            done = len(results) / max(len(items), 1)
            ctx.progress(
                span[0] + done * (span[1] - span[0]), f"{what} {len(results)}/{len(items)}"
            )
    return results


def _write_examples(
    ctx: JobContext,
    items: Sequence[Item],
    pairs: Sequence[Pair],
    out: str,
    limits: ImageLimits,
    count: int,
    labeler: Labeler[Item],
) -> list[str]:
    """Overlays of the images with the strongest boxes first; returns their keys."""

    def rank(i: int) -> tuple[bool, float]:
        return not items[i].boxes, -max((b.score for b in items[i].boxes), default=0.0)

    keys = []
    for index in sorted(range(len(items)), key=rank)[:count]:
        ctx.check_cancel()
        image_key = pairs[index].image_key
        image = decode_object(ctx.store.get_bytes(image_key), limits, image_key).array
        key = example_key(out, _stem(pairs[index].image_key))
        ctx.store.put_bytes(key, labeler.overlay_png(image, items[index]), content_type="image/png")
        keys.append(key)
    return keys


def _summary(
    params: PseudoLabelParams, threshold: float, job_id: str, stats: dict[str, Any]
) -> dict[str, Any]:
    return {
        "category": params.category,
        "job_id": job_id,
        "threshold": threshold,
        "mean_map_max": threshold + params.c,
        "c": params.c,
        "regions": params.regions,
        "top_k": params.top_k,
        "nms": params.nms,
        "score_gate": params.score_gate,
        "min_area": params.min_area,
        **stats,
    }


def _coco(coco: dict[str, Any], pairs: Sequence[Pair]) -> dict[str, Any]:
    for entry, pair in zip(coco["images"], pairs, strict=True):
        entry["image_key"] = pair.image_key
    return coco


def _manifest(
    ctx: JobContext,
    params: PseudoLabelParams,
    report: SourceReport,
    pairs: Sequence[Pair],
    summary: dict[str, Any],
    examples: Sequence[str],
) -> PseudoLabelManifest:
    return PseudoLabelManifest(
        job_id=ctx.job_id,
        category=params.category,
        images_prefix=params.images_prefix,
        maps_prefix=params.maps_prefix,
        map_job_id=report.map_job_id,
        threshold=summary["threshold"],
        count=len(pairs),
        images_with_boxes=summary["images_with_boxes"],
        files=PseudoLabelFiles(examples=[k.rpartition("/")[2] for k in examples]),
        images={_stem(p.image_key): p.image_key for p in pairs},
    )


def _write_json(ctx: JobContext, key: str, value: Any) -> None:
    ctx.store.put_bytes(key, json.dumps(value, indent=1).encode(), content_type="application/json")
