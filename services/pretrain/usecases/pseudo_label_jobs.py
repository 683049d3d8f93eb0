"""Pseudo-label jobs: pseudo-defect boxes of one category from its anomaly maps (agssp-spec §3).

Submission (enqueue, refuse a finished ``out_prefix``) and the worker's run. The output is the
seam ``shared.schemas.pseudo_labels`` (finetune's AGDP job reads it); its manifest is written
last. An image-level gate (``gate``: off, fixed or auto, ``services.pretrain.ml.gate``) decides
which images may get boxes; its ``gate_*`` fields go on the record and into ``summary.json``,
with the gate's labelled defects, whether the fit never saw them (``label_reference``).
Memory stays bounded however large the pool: each map is read from the store and kept for
the second pass in memory (``MAP_MEMORY``); past it, in a scratch file (``label_maps``); each
image's boxes go to its label file, the streamed COCO document and the running summary
(``label_outputs``) as they come, never into a list of the pool. Store reads and writes run
on threads a bounded window ahead of the pool's order (``_parallel``).
cv2-free, so the API imports it: the worker hands ``run_pseudo_label_job`` a ``Labeler``
(``services.pretrain.ml.labeler.BoxLabeler``).
"""

from __future__ import annotations

import json
import math
from collections import Counter, deque
from collections.abc import Callable, Generator, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

import numpy as np
from numpy.typing import NDArray

from services.pretrain.config import PretrainSettings
from services.pretrain.params import PseudoLabelParams
from services.pretrain.stores.maps import (
    Pair,
    SourceReport,
    collect_pairs,
    load_scores,
    reference_scores,
    score_of,
)
from services.pretrain.stores.pairs import load_map, read_image_size
from services.pretrain.usecases.label_maps import MapShelf, Shelved
from services.pretrain.usecases.label_outputs import (
    AreaRatios,
    BoxTally,
    CocoStream,
    TopExamples,
    job_scratch,
)
from services.pretrain.usecases.label_reference import reference_lineage
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
_BATCH = 64  # store calls in flight ahead of the pool's order; cancel checked as often
# Maps kept in memory between the two passes over the pool (agssp-spec §3 needs every map's
# maximum before the first box): 1,000 maps of 128 x 128; past it, in a scratch file.
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
    """The cv2 side of the job (``BoxLabeler``): thresholds, boxes, overlays, COCO entries."""

    def threshold(self, maxima: Sequence[float], c: float) -> float: ...
    def gate(
        self,
        scores: Sequence[float | None],
        source: str,
        params: PseudoLabelParams,
        reference: Sequence[float | None] | None = None,
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
    def coco_categories(self) -> list[dict[str, Any]]: ...
    def coco_entries(
        self, item: Item, image_id: int, first_annotation_id: int
    ) -> tuple[dict[str, Any], list[dict[str, Any]]]: ...
    def area_ratios(self, item: Item) -> list[float]: ...


@dataclass(frozen=True)
class _Labelled:
    """What the labelling pass leaves: T_c, the gate's and box statistics, COCO, examples."""

    threshold: float
    gate: dict[str, Any]
    stats: dict[str, Any]
    boxes: int
    coco: Path
    examples: list[tuple[int, Any]]


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
    with job_scratch(settings.cache_root(), ctx.job_id) as scratch:
        try:
            done = _label_all(ctx, params, pairs, out, labeler, scratch, settings)
            shown = _write_examples(ctx, done.examples, pairs, out, limits, labeler)
        except JobCanceledError:
            if params.out_prefix is None:  # our own job prefix; a caller's prefix is left alone
                ctx.store.delete_prefix(out)
            raise
        summary = _summary(params, done.threshold, ctx.job_id, done.stats | done.gate)
        _write_json(ctx, file_key(out, SUMMARY_FILE), summary)
        ctx.store.put_bytes(file_key(out, CLASSES_FILE), classes_text())
        _put_file(ctx, file_key(out, COCO_FILE), done.coco)
    manifest = _manifest(ctx, params, report, pairs, summary, shown)
    ctx.store.put_bytes(manifest_key(out), manifest.to_bytes(), content_type="application/json")
    _record(ctx, out, done, summary, shown)
    return [manifest_key(out)]


def _record(
    ctx: JobContext, out: str, done: _Labelled, summary: dict[str, Any], shown: list[str]
) -> None:
    ctx.set_outputs(
        threshold=done.threshold,
        images=summary["images"],
        images_with_boxes=summary["images_with_boxes"],
        share_with_boxes=summary["share_with_boxes"],
        boxes_per_image=summary["boxes_per_image"],
        boxes=done.boxes,
        annotations=file_key(out, COCO_FILE),
        summary=file_key(out, SUMMARY_FILE),
        examples=shown,
    )


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
    """``PurePosixPath(key).stem`` of an object key, without building a path (three an image)."""
    name = key.rpartition("/")[2]
    dot = name.rfind(".")
    return name[:dot] if 0 < dot < len(name) - 1 else name


def _check_unique_stems(pairs: Sequence[Pair]) -> None:
    counts = Counter(_stem(p.image_key) for p in pairs)
    duplicates = sorted(stem for stem, n in counts.items() if n > 1)
    if duplicates:
        raise InvalidInputError(
            f"label files are named by image stem; these stems repeat: {duplicates[:5]}",
            code="duplicate_stems",
        )


def _read_map(ctx: JobContext, pair: Pair) -> NDArray[np.float32]:
    return load_map(ctx.store.get_bytes(pair.map_key), pair.map_key)


@dataclass(frozen=True)
class _Plan:
    """What the first pass decides before any image is labelled."""

    seen: list[Shelved]
    threshold: float
    scores: list[float | None]
    gate: Gate
    outputs: dict[str, Any]


def _first_pass(
    ctx: JobContext,
    params: PseudoLabelParams,
    pairs: Sequence[Pair],
    labeler: Labeler[Item],
    shelf: MapShelf,
    threads: int,
) -> _Plan:
    """Every map read once and shelved for the second pass; then T_c and the gate.

    T_c and the gate need every map's maximum before any image is labelled (agssp-spec §3
    step 1).
    """
    read = _parallel(ctx, pairs, lambda pair: _read_map(ctx, pair), (0, 30), "maps", threads)
    with closing(read) as maps:
        seen = [shelf.shelve(amap) for amap in maps]
    shelf.seal()
    maxima = [s.maximum for s in seen]
    threshold = labeler.threshold(maxima, params.c)
    scores, source, note = _image_scores(ctx, params, pairs, maxima)
    reference = None  # scores of labelled defect images, on the scale the pool's are read in
    lineage: dict[str, Any] = {}  # were they held out of the fit that made their maps?
    if params.reference_maps_prefix is not None:
        reference = reference_scores(ctx.store, params.reference_maps_prefix, source)
        lineage = reference_lineage(ctx.store, ctx.jobs, params.reference_maps_prefix)
    gate = labeler.gate(scores, source, params, reference)
    passed = sum(1 for s in scores if gate.passes(s))
    outputs = gate.outputs() | {"gate_score_note": note, "gate_passed_images": passed} | lineage
    ctx.set_outputs(**outputs, maps_kept_in_memory=shelf.kept)
    return _Plan(seen, threshold, scores, gate, outputs)


def _label_all(
    ctx: JobContext,
    params: PseudoLabelParams,
    pairs: Sequence[Pair],
    out: str,
    labeler: Labeler[Item],
    scratch: Path,
    settings: PretrainSettings,
) -> _Labelled:
    """Boxes of every image after ``_first_pass``: label files, COCO, statistics, examples.

    Each image's boxes are written and counted as they come (``_collect``), so memory stays
    bounded however large the pool.
    """
    rel, limits, threads = (
        len(params.images_prefix),
        image_limits(settings),
        settings.label_threads(),
    )
    with MapShelf(scratch / "maps.f32", MAP_MEMORY) as shelf:
        plan = _first_pass(ctx, params, pairs, labeler, shelf, threads)

        def label(index: int) -> Item:
            pair, shelved = pairs[index], plan.seen[index]
            amap = shelf.take(shelved)
            size = read_image_size(ctx.store, pair.image_key, limits)
            name, score = pair.image_key[rel:], plan.scores[index]
            item, text = labeler.label(
                amap, size, plan.threshold, params, score, name, plan.gate.threshold
            )
            key = label_key(out, _stem(pair.image_key))
            ctx.store.put_bytes(key, text.encode(), content_type="text/plain")
            return item

        indices = range(len(pairs))
        with closing(_parallel(ctx, indices, label, (30, 90), "images", threads)) as items:
            return _collect(items, pairs, labeler, scratch, settings.overlay_examples, plan)


def _collect(
    items: Iterator[Item],
    pairs: Sequence[Pair],
    labeler: Labeler[Item],
    scratch: Path,
    examples: int,
    plan: _Plan,
) -> _Labelled:
    """Stream the pool's labelled images, in pool order, into COCO, statistics and examples."""
    best = TopExamples[Item](examples, _rank)
    categories = labeler.coco_categories()
    with CocoStream(scratch, categories) as coco, AreaRatios(scratch / "ratios.f64") as ratios:
        tally = BoxTally(ratios)
        for index, item in enumerate(items):
            image, boxes = labeler.coco_entries(item, index + 1, coco.annotations + 1)
            coco.add(image | {"image_key": pairs[index].image_key}, boxes)
            tally.add(labeler.area_ratios(item))
            best.offer(index, item)
        stats = tally.summary()
        return _Labelled(
            plan.threshold, plan.outputs, stats, ratios.count, coco.finish(), best.best()
        )


def _rank(item: LabeledImage) -> tuple[bool, float]:
    """Images with boxes first, then by their strongest box (the examples' order)."""
    return not item.boxes, -max((b.score for b in item.boxes), default=0.0)


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
    threads: int,
) -> Generator[R, None, None]:
    """``work`` over ``items``, yielded in order: on ``threads`` threads, or inline for one.

    No more than ``_BATCH`` items are in flight ahead of the one yielded, so no more than that
    many results are alive at once; a slow store call holds up only its own place, not a
    whole batch. Cancel and progress are checked every ``_BATCH`` items. Closing the
    iterator early (an error, a cancel) drops the calls not yet started and waits for the
    running ones, so none writes after the job has left.
    """
    if threads <= 1:
        for index, item in enumerate(items):
            if index % _BATCH == 0:
                ctx.check_cancel()
                _progress(ctx, index, len(items), span, what)
            yield work(item)
        _progress(ctx, len(items), len(items), span, what)
        return
    pending: deque[Future[R]] = deque()
    pool = ThreadPoolExecutor(max_workers=threads)
    try:
        for index, item in enumerate(items):
            if index % _BATCH == 0:
                ctx.check_cancel()
            if len(pending) == _BATCH:
                yield pending.popleft().result()
                _progress(ctx, index - _BATCH + 1, len(items), span, what)
            pending.append(pool.submit(work, item))
        while pending:
            yield pending.popleft().result()
        _progress(ctx, len(items), len(items), span, what)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _progress(ctx: JobContext, done: int, total: int, span: tuple[float, float], what: str) -> None:
    if done % _BATCH == 0 or done == total:  # the record is written at most once a second
        fraction = done / max(total, 1)
        ctx.progress(span[0] + fraction * (span[1] - span[0]), f"{what} {done}/{total}")


def _write_examples(
    ctx: JobContext,
    examples: Sequence[tuple[int, Item]],
    pairs: Sequence[Pair],
    out: str,
    limits: ImageLimits,
    labeler: Labeler[Item],
) -> list[str]:
    """Overlays of the example images (pool index, boxes), in order; returns their keys."""
    keys = []
    for index, item in examples:
        ctx.check_cancel()
        image_key = pairs[index].image_key
        image = decode_object(ctx.store.get_bytes(image_key), limits, image_key).array
        key = example_key(out, _stem(image_key))
        ctx.store.put_bytes(key, labeler.overlay_png(image, item), content_type="image/png")
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
        "reference_maps_prefix": params.reference_maps_prefix,
        "min_area": params.min_area,
        **stats,
    }


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


def _put_file(ctx: JobContext, key: str, path: Path) -> None:
    with open(path, "rb") as handle:
        ctx.store.put_stream(
            key, handle, length=path.stat().st_size, content_type="application/json"
        )
