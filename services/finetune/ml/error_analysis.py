"""Where a detector fails on a labelled set: misses, false alarms and class confusions.

At a stated confidence threshold, each image's detections are matched to its ground truth
the way COCOeval matches at IoU 0.5 (``ml.evaluate``): per class, detections in descending
score order (a stable sort, at most ``max_dets`` per class), each taking the unmatched box
of its class with the highest IoU >= 0.5, a later box winning a tie. So a detection here is
a true positive exactly when COCOeval flags it one in the mAP's per-image records.

What stays unmatched is then paired across classes, again in score order and by highest
IoU >= 0.5: such a pair is a *confusion* (the box was found, with the wrong class). Then

* a **miss** is a ground-truth box no detection of its class matched (confusions included),
* a **false alarm** is a detection that matched no box of its class (confusions included),
* the **confusion matrix** has a row per ground-truth class and a column per predicted
  class, plus a ``background`` row (false alarms on no box) and column (boxes nothing
  found); the background/background cell is always 0.

Pure numpy and pydantic.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel, Field

from services.finetune.ml.dataset import Box, DetectionDataset, ScoredBox

BACKGROUND = "background"
Corners = tuple[float, float, float, float]


class GtMark(BaseModel):
    """A ground-truth box; ``found`` when a detection of its class matched it."""

    box: Corners = Field(description="x1, y1, x2, y2 in pixels")
    class_id: int
    found: bool
    confused_with: int | None = Field(None, description="class of the detection it got instead")


class DetMark(BaseModel):
    """A detection at or above the threshold; ``tp`` when it matched a box of its class."""

    box: Corners = Field(description="x1, y1, x2, y2 in pixels")
    class_id: int
    score: float
    tp: bool
    confused_with: int | None = Field(None, description="class of the box it lies on instead")


class ImageErrors(BaseModel):
    """One image: its boxes, its detections at the threshold and what went wrong."""

    file_name: str
    width: int
    height: int
    gt: list[GtMark]
    dets: list[DetMark]
    misses: int
    false_alarms: int
    confused: int


class ErrorTotals(BaseModel):
    """Counts over the whole split."""

    gt: int
    detections: int
    true_positives: int
    misses: int
    false_alarms: int
    confused: int
    images_with_misses: int
    images_with_false_alarms: int


class ConfusionMatrix(BaseModel):
    """Rows: ground truth; columns: prediction; ``labels`` = classes + ``background``."""

    labels: list[str]
    matrix: list[list[int]]


class ErrorAnalysis(BaseModel):
    """The per-image records, totals and confusion matrix at one threshold."""

    conf: float = Field(description="detections scoring below this were left out")
    iou: float = Field(description="IoU a match needs")
    max_dets: int = Field(description="detections kept per image and class")
    classes: list[str]
    totals: ErrorTotals
    confusion: ConfusionMatrix
    images: list[ImageErrors]


@dataclass(frozen=True)
class _Matched:
    """One image's matching: for each box / detection the index it matched (-1: none)."""

    gt_same: np.ndarray  # (G,) detection index of the same class
    det_same: np.ndarray  # (D,) box index of the same class
    gt_cross: np.ndarray  # (G,) detection index of another class
    det_cross: np.ndarray  # (D,) box index of another class


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box in ``a`` (N, 4) with every box in ``b`` (M, 4), corners; (N, M)."""
    if a.size == 0 or b.size == 0:
        return np.zeros((len(a), len(b)))
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 2], b[None, :, 2])
    y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    out: np.ndarray = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
    return out


def kept_detections(boxes: Sequence[ScoredBox], conf: float, max_dets: int) -> list[ScoredBox]:
    """Detections scoring >= ``conf``, best first (stable), at most ``max_dets`` per class."""
    order = np.argsort([-b.score for b in boxes], kind="mergesort")
    per_class: dict[int, int] = {}
    kept = []
    for i in order:
        box = boxes[int(i)]
        if box.score < conf or per_class.get(box.class_id, 0) >= max_dets:
            continue
        per_class[box.class_id] = per_class.get(box.class_id, 0) + 1
        kept.append(box)
    return kept


def _greedy(
    ious: np.ndarray, allowed: np.ndarray, gt_taken: np.ndarray, det_taken: np.ndarray, thr: float
) -> list[tuple[int, int]]:
    """COCOeval's greedy assignment: detections in row order (best score first), each to the
    free allowed box with the highest IoU >= ``thr``; on a tie the later box wins."""
    pairs = []
    threshold = min(thr, 1 - 1e-10)
    for d in range(ious.shape[0]):
        if det_taken[d]:
            continue
        best, match = threshold, -1
        for g in range(ious.shape[1]):
            if gt_taken[g] or not allowed[d, g] or ious[d, g] < best:
                continue
            best, match = ious[d, g], g
        if match >= 0:
            gt_taken[match] = det_taken[d] = True
            pairs.append((d, match))
    return pairs


def match_image(gt: Sequence[Box], dets: Sequence[ScoredBox], iou: float = 0.5) -> _Matched:
    """Same-class matches first, then cross-class pairs among what is left.

    ``dets`` must already be in descending score order (:func:`kept_detections`).
    """
    gt_xy = np.asarray([[b.x1, b.y1, b.x2, b.y2] for b in gt], np.float64).reshape(-1, 4)
    det_xy = np.asarray([[b.x1, b.y1, b.x2, b.y2] for b in dets], np.float64).reshape(-1, 4)
    ious = iou_matrix(det_xy, gt_xy)
    same = np.asarray([[d.class_id == g.class_id for g in gt] for d in dets], bool)
    same = same.reshape(len(dets), len(gt))
    out = _Matched(*(np.full(n, -1) for n in (len(gt), len(dets), len(gt), len(dets))))
    gt_taken, det_taken = np.zeros(len(gt), bool), np.zeros(len(dets), bool)
    for d, g in _greedy(ious, same, gt_taken, det_taken, iou):
        out.gt_same[g], out.det_same[d] = d, g
    for d, g in _greedy(ious, ~same, gt_taken, det_taken, iou):
        out.gt_cross[g], out.det_cross[d] = d, g
    return out


def _corners(box: Box | ScoredBox) -> Corners:
    return (round(box.x1, 2), round(box.y1, 2), round(box.x2, 2), round(box.y2, 2))


def _image_errors(
    image_gt: Sequence[Box], dets: Sequence[ScoredBox], m: _Matched, size: tuple[str, int, int]
) -> ImageErrors:
    gt = [
        GtMark(
            box=_corners(b),
            class_id=b.class_id,
            found=bool(m.gt_same[i] >= 0),
            confused_with=dets[m.gt_cross[i]].class_id if m.gt_cross[i] >= 0 else None,
        )
        for i, b in enumerate(image_gt)
    ]
    marks = [
        DetMark(
            box=_corners(d),
            class_id=d.class_id,
            score=float(str(np.float32(d.score))),
            tp=bool(m.det_same[i] >= 0),
            confused_with=image_gt[m.det_cross[i]].class_id if m.det_cross[i] >= 0 else None,
        )
        for i, d in enumerate(dets)
    ]
    name, width, height = size
    return ImageErrors(
        file_name=name,
        width=width,
        height=height,
        gt=gt,
        dets=marks,
        misses=sum(not g.found for g in gt),
        false_alarms=sum(not d.tp for d in marks),
        confused=int((m.det_cross >= 0).sum()),
    )


def analyse_errors(
    ground_truth: DetectionDataset,
    predictions: Mapping[str, Sequence[ScoredBox]],
    conf: float,
    iou: float = 0.5,
    max_dets: int = 100,
) -> ErrorAnalysis:
    """Misses, false alarms and the confusion matrix of ``predictions`` at ``conf``.

    Args:
        ground_truth: the labelled images; every box counts (as ``evaluate_detections``
            counts them by default).
        predictions: boxes by image file name, in the ground truth's pixel coordinates;
            an image without an entry has no detection.
        conf: the confidence threshold (a detection scoring exactly ``conf`` is kept).
        iou: the IoU a match needs (COCO's mAP@0.5: 0.5).
        max_dets: detections kept per image and class, best first (COCO: 100).
    """
    k = len(ground_truth.classes)
    confusion = np.zeros((k + 1, k + 1), np.int64)  # index k: background
    images = []
    for record in ground_truth.images:
        dets = kept_detections(predictions.get(record.file_name, []), conf, max_dets)
        matched = match_image(record.boxes, dets, iou)
        size = (record.file_name, record.width, record.height)
        images.append(_image_errors(record.boxes, dets, matched, size))
        _count(confusion, record.boxes, dets, matched, k)
    return ErrorAnalysis(
        conf=conf,
        iou=iou,
        max_dets=max_dets,
        classes=list(ground_truth.classes),
        totals=_totals(images),
        confusion=ConfusionMatrix(
            labels=[*ground_truth.classes, BACKGROUND], matrix=confusion.tolist()
        ),
        images=images,
    )


def _count(
    confusion: np.ndarray, gt: Sequence[Box], dets: Sequence[ScoredBox], m: _Matched, k: int
) -> None:
    """Add one image to the matrix: a pair per box, a background cell per loner."""
    for i, box in enumerate(gt):
        if m.gt_same[i] >= 0:
            confusion[box.class_id, box.class_id] += 1
        elif m.gt_cross[i] >= 0:
            confusion[box.class_id, dets[m.gt_cross[i]].class_id] += 1
        else:
            confusion[box.class_id, k] += 1
    for d, det in enumerate(dets):
        if m.det_same[d] < 0 and m.det_cross[d] < 0:
            confusion[k, det.class_id] += 1


def _totals(images: Sequence[ImageErrors]) -> ErrorTotals:
    gt = sum(len(im.gt) for im in images)
    dets = sum(len(im.dets) for im in images)
    misses = sum(im.misses for im in images)
    return ErrorTotals(
        gt=gt,
        detections=dets,
        true_positives=gt - misses,
        misses=misses,
        false_alarms=sum(im.false_alarms for im in images),
        confused=sum(im.confused for im in images),
        images_with_misses=sum(im.misses > 0 for im in images),
        images_with_false_alarms=sum(im.false_alarms > 0 for im in images),
    )
