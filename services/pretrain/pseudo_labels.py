"""Pseudo-defect boxes of one category from its anomaly maps (agssp-spec §3), for AGDP.

Output under ``<out>/`` (default ``pseudo/<category>/<job id>/``), read by the finetune
service's AGDP job::

    labels/<image stem>.txt  YOLO lines ``0 xc yc w h``, normalised by the ORIGINAL (upright,
                             EXIF-rotated) image size, 6 decimals; every paired image has a
                             file, empty = background image
    classes.txt              ``anomaly`` (class 0)
    annotations.json         COCO; one category (id 0, "anomaly"); each image has
                             ``file_name`` (key relative to the images prefix), ``width``,
                             ``height`` and ``image_key`` (full store key); boxes
                             ``[x, y, w, h]`` in pixels with their ``score``
    summary.json             threshold T, parameters, share of images with boxes, boxes per
                             image, box-area ratios
    examples/<stem>.png      a few images with their boxes drawn
    manifest.json            written LAST, so its presence marks a complete output: job id,
                             category, prefixes, map job id, threshold, counts, files,
                             ``images`` (stem -> image key)
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import PurePosixPath
from typing import Any, TypeVar

import cv2
import numpy as np
from numpy.typing import NDArray

from services.pretrain.data_store import load_map, read_image_size
from services.pretrain.ml.pseudo_boxes import (
    ImageBoxes,
    build_coco,
    category_threshold,
    extract_boxes,
    render_overlay,
    summarize,
    yolo_lines,
)
from services.pretrain.params import PseudoLabelParams
from services.pretrain.sources import Pair, SourceReport, collect_pairs, load_scores, score_of
from shared.errors import ConflictError, InvalidInputError, JobCanceledError
from shared.imaging.intake import ImageLimits, decode_image
from shared.imaging.render import encode_png
from shared.jobs.context import JobContext

MANIFEST = "manifest.json"
CLASS_NAMES = ("anomaly",)
OVERLAY_MAX_SIDE = 1024
_BATCH = 64
_THREADS = 8
T = TypeVar("T")
R = TypeVar("R")


def run_pseudo_labels(ctx: JobContext, *, limits: ImageLimits, examples: int) -> list[str]:
    """Threshold, boxes, YOLO/COCO files, summary, overlays; returns the manifest key.

    Raises:
        InvalidInputError: unpaired data, unreadable maps/images, duplicate stems, or a
            score gate without ``scores.csv``.
        ConflictError: ``out_prefix`` holds another job's finished output.
        JobCanceledError: canceled; partial output under the default prefix is removed
            (under a caller's ``out_prefix`` it stays, without ``manifest.json``).
    """
    params = PseudoLabelParams.model_validate(ctx.params)
    out = params.output_prefix(ctx.job_id)
    _check_output(ctx, out)
    pairing = collect_pairs(ctx.store, [params.source()])
    pairs, report = pairing.pairs, pairing.reports[0]
    _check_unique_stems(pairs)
    ctx.set_outputs(out_prefix=out, pairing=report.summary())
    try:
        items, threshold = _label_all(ctx, params, pairs, out, limits)
        shown = _write_examples(ctx, items, pairs, out, limits, examples)
    except JobCanceledError:
        if params.out_prefix is None:  # our own job prefix; a caller's prefix is left alone
            ctx.store.delete_prefix(out)
        raise
    summary = _summary(params, items, threshold, ctx.job_id)
    _write_json(ctx, out + "summary.json", summary)
    ctx.store.put_bytes(out + "classes.txt", "\n".join(CLASS_NAMES).encode() + b"\n")
    _write_json(ctx, out + "annotations.json", _coco(items, pairs))
    _write_json(ctx, out + MANIFEST, _manifest(ctx, params, report, pairs, summary, shown))
    ctx.set_outputs(
        threshold=threshold,
        images=len(items),
        images_with_boxes=summary["images_with_boxes"],
        boxes=sum(len(i.boxes) for i in items),
        annotations=out + "annotations.json",
        summary=out + "summary.json",
        examples=shown,
    )
    return [out + MANIFEST]


def _check_output(ctx: JobContext, out: str) -> None:
    try:
        existing = json.loads(ctx.store.get_bytes(out + MANIFEST))
    except Exception:  # absent (or unreadable): nothing finished there
        return
    if existing.get("job_id") != ctx.job_id:
        raise ConflictError(
            f"{out} holds the output of job {existing.get('job_id')}", code="output_exists"
        )


def _check_unique_stems(pairs: Sequence[Pair]) -> None:
    counts = Counter(PurePosixPath(p.image_key).stem for p in pairs)
    duplicates = sorted(stem for stem, n in counts.items() if n > 1)
    if duplicates:
        raise InvalidInputError(
            f"label files are named by image stem; these stems repeat: {duplicates[:5]}",
            code="duplicate_stems",
        )


def _label_all(
    ctx: JobContext, params: PseudoLabelParams, pairs: Sequence[Pair], out: str, limits: ImageLimits
) -> tuple[list[ImageBoxes], float]:
    maps = _parallel(
        ctx, pairs, lambda p: load_map(ctx.store.get_bytes(p.map_key), p.map_key), (0, 30), "maps"
    )
    # agssp-spec §3 step 1: T_c = mean over the category's maps of each map's max, minus c.
    threshold = category_threshold(maps, c=params.c)
    scores = _scores(ctx, params)
    rel = len(params.images_prefix)

    def label(item: tuple[Pair, NDArray[np.float32]]) -> ImageBoxes:
        pair, amap = item
        width, height = read_image_size(ctx.store, pair.image_key, limits)
        boxes = extract_boxes(
            amap,
            width,
            height,
            threshold,
            regions=params.regions,
            top_k=params.top_k,
            iou_threshold=params.nms,
            min_area=params.min_area,
            image_score=None if scores is None else score_of(scores, pair.image_key),
            score_gate=params.score_gate,
        )
        lines = yolo_lines(boxes, width, height)
        text = "".join(line + "\n" for line in lines)
        stem = PurePosixPath(pair.image_key).stem
        ctx.store.put_bytes(f"{out}labels/{stem}.txt", text.encode(), content_type="text/plain")
        return ImageBoxes(pair.image_key[rel:], width, height, tuple(boxes), params.category)

    items = _parallel(ctx, list(zip(pairs, maps, strict=True)), label, (30, 90), "images")
    return items, threshold


def _scores(ctx: JobContext, params: PseudoLabelParams) -> dict[str, float] | None:
    if params.score_gate is None:
        return None
    scores = load_scores(ctx.store, params.maps_prefix)
    if scores is None:
        raise InvalidInputError(
            f"score_gate needs image scores, but there is no scores.csv at {params.maps_prefix}",
            code="scores_missing",
        )
    return scores


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
    items: Sequence[ImageBoxes],
    pairs: Sequence[Pair],
    out: str,
    limits: ImageLimits,
    count: int,
) -> list[str]:
    """Overlays of the images with the strongest boxes first; returns their keys."""

    def rank(i: int) -> tuple[bool, float]:
        return not items[i].boxes, -max((b.score for b in items[i].boxes), default=0.0)

    ranked = sorted(range(len(items)), key=rank)
    keys = []
    for index in ranked[:count]:
        ctx.check_cancel()
        image = decode_image(ctx.store.get_bytes(pairs[index].image_key), limits).array
        canvas = _fit(render_overlay(image, items[index].boxes))
        key = f"{out}examples/{PurePosixPath(pairs[index].image_key).stem}.png"
        ctx.store.put_bytes(key, encode_png(canvas), content_type="image/png")
        keys.append(key)
    return keys


def _fit(image: NDArray[np.uint8]) -> NDArray[np.uint8]:
    scale = OVERLAY_MAX_SIDE / max(image.shape[:2])
    if scale >= 1:
        return image
    size = (max(round(image.shape[1] * scale), 1), max(round(image.shape[0] * scale), 1))
    return np.asarray(cv2.resize(image, size, interpolation=cv2.INTER_AREA), dtype=np.uint8)


def _summary(
    params: PseudoLabelParams, items: Sequence[ImageBoxes], threshold: float, job_id: str
) -> dict[str, Any]:
    stats = summarize(items)[params.category]
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
        **asdict(stats),
    }


def _coco(items: Sequence[ImageBoxes], pairs: Sequence[Pair]) -> dict[str, Any]:
    coco = build_coco(items)
    for entry, pair in zip(coco["images"], pairs, strict=True):
        entry["image_key"] = pair.image_key
    return coco


def _manifest(
    ctx: JobContext,
    params: PseudoLabelParams,
    report: SourceReport,
    pairs: Sequence[Pair],
    summary: Mapping[str, Any],
    examples: Sequence[str],
) -> dict[str, Any]:
    return {
        "kind": "pseudo-labels",
        "format": 1,
        "job_id": ctx.job_id,
        "category": params.category,
        "images_prefix": params.images_prefix,
        "maps_prefix": params.maps_prefix,
        "map_job_id": report.map_job_id,
        "classes": list(CLASS_NAMES),
        "threshold": summary["threshold"],
        "count": len(pairs),
        "images_with_boxes": summary["images_with_boxes"],
        "files": {
            "labels": "labels/",
            "classes": "classes.txt",
            "annotations": "annotations.json",
            "summary": "summary.json",
            "examples": [k.rpartition("/")[2] for k in examples],
        },
        "images": {PurePosixPath(p.image_key).stem: p.image_key for p in pairs},
    }


def _write_json(ctx: JobContext, key: str, value: Any) -> None:
    ctx.store.put_bytes(key, json.dumps(value, indent=1).encode(), content_type="application/json")
