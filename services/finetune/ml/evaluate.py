"""COCO-style box mAP@0.5 and mAP@0.5:0.95, overall and per class, via pycocotools' COCOeval.

Both numbers follow COCOeval: 101-point interpolated precision, area range "all", up to
``max_dets`` detections per image. A class with no ground truth has no AP (None) and is
left out of the means; detections of such a class therefore cost nothing.

The result also carries the per-image records of the match at IoU 0.5
(``shared.schemas.evaluation``), read back from COCOeval's own per-image matching, so that
mAP@0.5 can be recomputed, and bootstrapped, on any resample of the images.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from services.finetune.ml.coco import export_coco
from services.finetune.ml.dataset import DetectionDataset, ScoredBox
from shared.errors import InvalidInputError
from shared.schemas.evaluation import ImageEval, PerImageEval, prune_detections


@dataclass(frozen=True)
class ClassAP:
    """AP of one class; None when the class has no ground-truth box."""

    map50: float | None
    map50_95: float | None
    num_gt: int


@dataclass(frozen=True)
class PrAt50:
    """COCOeval's precision-recall samples at IoU 0.5: at each of its 101 recall thresholds
    (``shared.schemas.evaluation.RECALL_THRESHOLDS``) the interpolated precision and the
    score of the detection where that recall is first reached (both 0 where it never is).
    AP@0.5 of a class is the mean of its precision column.

    Attributes:
        precision: (101, K), classes in dataset order.
        scores: (101, K).
    """

    precision: np.ndarray
    scores: np.ndarray


@dataclass(frozen=True)
class EvalResult:
    """Mean over classes with ground truth, the per-class figures by class name, the
    per-image records at IoU 0.5 and the precision-recall samples at IoU 0.5 (each None only
    where a caller built the result itself)."""

    map50: float
    map50_95: float
    per_class: dict[str, ClassAP]
    records: PerImageEval | None = None
    pr50: PrAt50 | None = None

    def summary(self) -> dict[str, Any]:
        """COCO mAP@0.5 and mAP@0.5:0.95, overall and per class (agssp-spec §5.4): the
        document evaluations, job outputs and ``metrics.json`` carry."""
        return {
            "map50": self.map50,
            "map50_95": self.map50_95,
            "per_class": {
                name: {"map50": ap.map50, "map50_95": ap.map50_95, "num_gt": ap.num_gt}
                for name, ap in self.per_class.items()
            },
        }

    def as_metrics(self) -> dict[str, float]:
        """Flat ``{"map50": .., "map50_95": .., "map50/<class>": ..}`` for logs and job records."""
        flat = {"map50": self.map50, "map50_95": self.map50_95}
        for name, ap in self.per_class.items():
            if ap.map50 is not None and ap.map50_95 is not None:
                flat[f"map50/{name}"], flat[f"map50_95/{name}"] = ap.map50, ap.map50_95
        return flat


def evaluate_detections(
    ground_truth: DetectionDataset,
    predictions: Mapping[str, Sequence[ScoredBox]],
    max_dets: int = 100,
    ignore_difficult: bool = False,
) -> EvalResult:
    """Score ``predictions`` (by image file name) against ``ground_truth``.

    Args:
        ground_truth: the labelled images; predictions for other file names are refused.
        predictions: boxes with scores in the same pixel coordinates as the ground truth.
        max_dets: detections kept per image, highest scores first (COCO: 100).
        ignore_difficult: treat ``difficult`` ground truth as COCO "crowd" regions, so
            matching them neither helps nor hurts (VOC practice); default counts them.

    Raises:
        InvalidInputError: a prediction names an unknown image or class.
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gt_doc = export_coco(ground_truth)
    if ignore_difficult:
        for ann in gt_doc["annotations"]:
            ann["iscrowd"] = ann["difficult"]
    detections = _detections(ground_truth, predictions)
    num_gt = np.bincount(
        [a["category_id"] - 1 for a in gt_doc["annotations"] if not a["iscrowd"]],
        minlength=len(ground_truth.classes),
    )
    gt_per_image = _gt_per_image(gt_doc, ground_truth)
    if not detections or not gt_doc["annotations"]:
        # nothing can match: AP is 0 and no detection is a true positive (none need keeping)
        records = _records(ground_truth, gt_per_image, [[] for _ in gt_per_image], max_dets)
        zeros = np.zeros((10, 101, len(ground_truth.classes)))
        return _result(zeros, num_gt, ground_truth, records, zeros[0])
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        coco_gt = COCO()
        coco_gt.dataset = gt_doc
        coco_gt.createIndex()
        evaluator = COCOeval(coco_gt, coco_gt.loadRes(detections), iouType="bbox")
        evaluator.params.maxDets = [1, 10, max_dets]
        evaluator.evaluate()
        evaluator.accumulate()
    records = _records(ground_truth, gt_per_image, _matches_at_50(evaluator), max_dets)
    # precision, scores: [iou thresholds 10, recall points 101, classes K, area ranges 4,
    # maxDets 3]
    precision = evaluator.eval["precision"][:, :, :, 0, -1]
    scores = evaluator.eval["scores"][0, :, :, 0, -1]
    return _result(precision, num_gt, ground_truth, records, scores)


def _gt_per_image(gt_doc: dict[str, Any], dataset: DetectionDataset) -> list[list[int]]:
    """Ground-truth boxes that count (not crowd), per image and class id."""
    counts = [[0] * len(dataset.classes) for _ in dataset.images]
    for ann in gt_doc["annotations"]:
        if not ann["iscrowd"]:
            counts[ann["image_id"] - 1][ann["category_id"] - 1] += 1
    return counts


def _matches_at_50(evaluator: Any) -> list[list[tuple[int, float, bool]]]:
    """(class id, score, matched) per image from COCOeval's per-image matching at IoU 0.5.

    ``evalImgs`` is ordered category, area range, image (pycocotools' ``evaluate``); area
    range 0 is "all", and each entry keeps the image's top ``maxDets[-1]`` detections of the
    class by score. Detections matched to an ignored (crowd) box count for nothing and are
    left out, as ``accumulate`` does.
    """
    params = evaluator.params
    if not np.isclose(params.iouThrs[0], 0.5):
        raise AssertionError(f"COCOeval's first IoU threshold is {params.iouThrs[0]}, not 0.5")
    n_img, n_area = len(params.imgIds), len(params.areaRng)
    per_image: list[list[tuple[int, float, bool]]] = [[] for _ in range(n_img)]
    for k in range(len(params.catIds)):
        for i in range(n_img):
            entry = evaluator.evalImgs[k * n_area * n_img + i]
            if entry is None:
                continue
            for score, match, ignore in zip(
                entry["dtScores"], entry["dtMatches"][0], entry["dtIgnore"][0], strict=True
            ):
                if not ignore:
                    per_image[i].append((k, _compact(score), bool(match > 0)))
    return per_image


def _compact(score: float) -> float:
    # Scores are float32 from the network: their shortest float32 spelling keeps every
    # order and tie while the file holds "0.9" instead of "0.8999999761581421".
    return float(str(np.float32(score)))


def _records(
    dataset: DetectionDataset,
    gt: list[list[int]],
    dets: list[list[tuple[int, float, bool]]],
    max_dets: int,
) -> PerImageEval:
    images = [
        ImageEval(file_name=im.file_name, gt=counts, dets=found)
        for im, counts, found in zip(dataset.images, gt, dets, strict=True)
    ]
    return PerImageEval(
        classes=list(dataset.classes),
        max_dets=max_dets,
        images=prune_detections(images, len(dataset.classes)),
    )


def _detections(
    ground_truth: DetectionDataset, predictions: Mapping[str, Sequence[ScoredBox]]
) -> list[dict[str, Any]]:
    image_ids = {im.file_name: i for i, im in enumerate(ground_truth.images, start=1)}
    detections = []
    for file_name, boxes in predictions.items():
        if file_name not in image_ids:
            raise InvalidInputError(f"prediction for unknown image {file_name!r}")
        for box in boxes:
            if box.class_id >= len(ground_truth.classes):
                raise InvalidInputError(f"{file_name}: predicted class id {box.class_id} unknown")
            detections.append(
                {
                    "image_id": image_ids[file_name],
                    "category_id": box.class_id + 1,
                    "bbox": [box.x1, box.y1, box.x2 - box.x1, box.y2 - box.y1],
                    "score": box.score,
                }
            )
    return detections


def _result(
    precision: np.ndarray,
    num_gt: np.ndarray,
    dataset: DetectionDataset,
    records: PerImageEval,
    scores: np.ndarray,
) -> EvalResult:
    per_class: dict[str, ClassAP] = {}
    for k, name in enumerate(dataset.classes):
        if num_gt[k] == 0:
            per_class[name] = ClassAP(None, None, 0)
            continue
        p = np.clip(precision[:, :, k], 0.0, None)  # -1 marks "no data"; with GT it cannot occur
        per_class[name] = ClassAP(float(p[0].mean()), float(p.mean()), int(num_gt[k]))
    scored = [ap for ap in per_class.values() if ap.map50 is not None]
    return EvalResult(
        map50=float(np.mean([ap.map50 for ap in scored])) if scored else 0.0,
        map50_95=float(np.mean([ap.map50_95 for ap in scored])) if scored else 0.0,
        per_class=per_class,
        records=records,
        pr50=PrAt50(np.clip(precision[0], 0.0, None), np.clip(scores, 0.0, None)),
    )
