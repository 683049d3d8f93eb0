"""COCO-style box mAP@0.5 and mAP@0.5:0.95, overall and per class, via pycocotools' COCOeval.

Both numbers follow COCOeval: 101-point interpolated precision, area range "all", up to
``max_dets`` detections per image. A class with no ground truth has no AP (None) and is
left out of the means; detections of such a class therefore cost nothing.
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


@dataclass(frozen=True)
class ClassAP:
    """AP of one class; None when the class has no ground-truth box."""

    map50: float | None
    map50_95: float | None
    num_gt: int


@dataclass(frozen=True)
class EvalResult:
    """Mean over classes with ground truth, and the per-class figures by class name."""

    map50: float
    map50_95: float
    per_class: dict[str, ClassAP]

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
    if not detections or not gt_doc["annotations"]:
        return _result(np.zeros((10, 101, len(ground_truth.classes))), num_gt, ground_truth)
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        coco_gt = COCO()
        coco_gt.dataset = gt_doc
        coco_gt.createIndex()
        evaluator = COCOeval(coco_gt, coco_gt.loadRes(detections), iouType="bbox")
        evaluator.params.maxDets = [1, 10, max_dets]
        evaluator.evaluate()
        evaluator.accumulate()
    # precision: [iou thresholds 10, recall points 101, classes K, area ranges 4, maxDets 3]
    return _result(evaluator.eval["precision"][:, :, :, 0, -1], num_gt, ground_truth)


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


def _result(precision: np.ndarray, num_gt: np.ndarray, dataset: DetectionDataset) -> EvalResult:
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
    )
