"""Misses, false alarms, confusions and PR curves on hand-made boxes with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from services.finetune.ml.dataset import Box, DetectionDataset, ImageRecord, ScoredBox
from services.finetune.ml.error_analysis import analyse_errors, iou_matrix, match_image
from services.finetune.ml.evaluate import evaluate_detections
from services.finetune.ml.pr_curves import pr_curves

CLASSES = ["scratch", "pit"]


def _box(x1: float, y1: float, x2: float, y2: float, c: int = 0) -> Box:
    return Box(x1=x1, y1=y1, x2=x2, y2=y2, class_id=c)


def _det(x1: float, y1: float, x2: float, y2: float, score: float, c: int = 0) -> ScoredBox:
    return ScoredBox(x1=x1, y1=y1, x2=x2, y2=y2, score=score, class_id=c)


def _set(*images: list[Box], classes: list[str] = CLASSES) -> DetectionDataset:
    records = [
        ImageRecord(file_name=f"im{i}.png", width=100, height=80, boxes=boxes)
        for i, boxes in enumerate(images)
    ]
    return DetectionDataset(classes=classes, images=records)


def test_iou_of_half_overlapping_squares_is_one_third() -> None:
    # given two 10x10 squares sharing a 10x5 strip: 50 / (100 + 100 - 50)
    a, b = np.array([[0, 0, 10, 10]], float), np.array([[0, 5, 10, 15]], float)
    # then
    assert iou_matrix(a, b)[0, 0] == pytest.approx(1 / 3)
    assert iou_matrix(a, np.zeros((0, 4))).shape == (1, 0)


def test_one_image_with_a_hit_a_miss_a_false_alarm_and_a_confusion() -> None:
    # given four boxes: a scratch found, a scratch missed, a pit found as a scratch, a
    # pit found; and a stray scratch detection on nothing, plus one below the threshold
    gt = _set(
        [
            _box(0, 0, 10, 10, 0),
            _box(50, 50, 60, 60, 0),
            _box(20, 20, 30, 30, 1),
            _box(70, 0, 90, 20, 1),
        ]
    )
    dets = [
        _det(0, 0, 10, 10, 0.9, 0),
        _det(20, 20, 30, 31, 0.8, 0),
        _det(70, 0, 90, 20, 0.7, 1),
        _det(40, 0, 45, 5, 0.6, 0),
        _det(50, 50, 60, 60, 0.2, 0),  # would hit, but is under the threshold
    ]
    # when
    analysis = analyse_errors(gt, {"im0.png": dets}, conf=0.25)
    # then
    image = analysis.images[0]
    assert (image.misses, image.false_alarms, image.confused) == (2, 2, 1)
    assert [g.found for g in image.gt] == [True, False, False, True]
    assert image.gt[2].confused_with == 0
    assert [d.tp for d in image.dets] == [True, False, True, False]
    assert image.dets[1].confused_with == 1
    assert len(image.dets) == 4
    # rows: ground truth scratch, pit, background; columns: predicted scratch, pit, background
    assert analysis.confusion.labels == ["scratch", "pit", "background"]
    assert analysis.confusion.matrix == [[1, 0, 1], [1, 1, 0], [1, 0, 0]]
    totals = analysis.totals
    assert (totals.gt, totals.detections, totals.true_positives) == (4, 4, 2)
    assert (totals.misses, totals.false_alarms, totals.confused) == (2, 2, 1)


def test_a_second_detection_on_a_found_box_is_a_false_alarm() -> None:
    # given one box and two detections on it
    gt = _set([_box(0, 0, 10, 10)])
    dets = [_det(0, 0, 10, 10, 0.6), _det(0, 0, 10, 11, 0.9)]
    # when
    image = analyse_errors(gt, {"im0.png": dets}, conf=0.5).images[0]
    # then the higher score took the box (listed first), the other is a duplicate
    assert [(d.score, d.tp) for d in image.dets] == [(0.9, True), (0.6, False)]
    assert (image.misses, image.false_alarms) == (0, 1)


def test_iou_just_under_half_does_not_match() -> None:
    # given a detection covering 49 % of the box: IoU 0.49
    gt = _set([_box(0, 0, 10, 10)])
    # when
    image = analyse_errors(gt, {"im0.png": [_det(0, 0, 10, 4.9, 0.9)]}, conf=0.1).images[0]
    # then
    assert (image.misses, image.false_alarms) == (1, 1)


def test_the_threshold_keeps_a_detection_scoring_exactly_it() -> None:
    gt = _set([_box(0, 0, 10, 10)])
    # when
    image = analyse_errors(gt, {"im0.png": [_det(0, 0, 10, 10, 0.25)]}, conf=0.25).images[0]
    # then
    assert image.misses == 0


def test_images_without_predictions_count_their_boxes_as_misses() -> None:
    gt = _set([_box(0, 0, 10, 10), _box(20, 20, 30, 30, 1)], [])
    # when
    analysis = analyse_errors(gt, {}, conf=0.25)
    # then
    assert [im.misses for im in analysis.images] == [2, 0]
    assert analysis.totals.images_with_misses == 1
    assert analysis.confusion.matrix == [[0, 0, 1], [0, 0, 1], [0, 0, 0]]


def test_a_tie_goes_to_the_later_box_as_in_cocoeval() -> None:
    # given a detection exactly between two boxes of its class (IoU 0.6 with both)
    gt = [_box(0, 0, 10, 10), _box(5, 0, 15, 10)]
    # when
    matched = match_image(gt, [_det(2.5, 0, 12.5, 10, 0.9)])
    # then
    assert matched.gt_same.tolist() == [-1, 0]


def _random_case(seed: int) -> tuple[DetectionDataset, dict[str, list[ScoredBox]]]:
    rng = np.random.default_rng(seed)
    images, predictions = [], {}
    for i in range(12):
        boxes = []
        for _ in range(int(rng.integers(0, 5))):
            x, y = rng.uniform(0, 70, 2)
            w, h = rng.uniform(6, 25, 2)
            boxes.append(_box(x, y, x + w, y + h, int(rng.integers(0, 2))))
        found = []
        for b in boxes:
            jitter = rng.normal(0, 2.5, 4)
            c = b.class_id if rng.random() < 0.75 else 1 - b.class_id
            score = float(np.float32(rng.random()))
            x1, y1, x2, y2 = b.x1 + jitter[0], b.y1 + jitter[1], b.x2 + jitter[2], b.y2 + jitter[3]
            found.append(_det(x1, y1, x2 + 3, y2 + 3, score, c))
        for x, y in rng.uniform(0, 70, (int(rng.integers(0, 4)), 2)):
            found.append(_det(x, y, x + 12, y + 12, float(np.float32(rng.random())), 0))
        images.append(ImageRecord(file_name=f"r{i}.png", width=100, height=100, boxes=boxes))
        predictions[f"r{i}.png"] = found
    return DetectionDataset(classes=CLASSES, images=images), predictions


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("conf", [0.0, 0.3, 0.7])
def test_true_positives_are_those_cocoeval_flags(seed: int, conf: float) -> None:
    # given a random set, scored by the mAP's evaluator (COCOeval's per-image flags)
    gt, predictions = _random_case(seed)
    records = evaluate_detections(gt, predictions).records
    assert records is not None
    # when
    analysis = analyse_errors(gt, predictions, conf=conf)
    # then every image has as many true positives at the threshold as COCOeval flagged
    for ours, theirs in zip(analysis.images, records.images, strict=True):
        assert ours.file_name == theirs.file_name
        flagged = sum(tp for _, score, tp in theirs.dets if score >= conf)
        assert sum(d.tp for d in ours.dets) == flagged
        assert len(ours.gt) - ours.misses == flagged
    # and the matrix holds every box once per row and every detection once per column
    matrix = np.asarray(analysis.confusion.matrix)
    assert matrix[:2].sum() == analysis.totals.gt
    assert matrix[:, :2].sum() == analysis.totals.detections
    assert matrix[2, 2] == 0


def test_pr_curve_points_average_to_the_ap() -> None:
    # given two boxes of one class, one found first, then a false alarm, then the second
    gt = _set([_box(0, 0, 10, 10), _box(50, 50, 60, 60)], classes=["scratch"])
    dets = [_det(0, 0, 10, 10, 0.9), _det(30, 30, 40, 40, 0.8), _det(50, 50, 60, 60, 0.7)]
    # when
    result = evaluate_detections(gt, {"im0.png": dets})
    curves = pr_curves(result, ["scratch"])
    # then precision is 1 up to recall 0.5, 2/3 after; the curve's mean is the AP
    curve = curves.classes["scratch"]
    assert len(curves.recall) == len(curve.precision) == 101
    assert curve.precision[50] == pytest.approx(1.0)
    assert curve.precision[51] == pytest.approx(2 / 3, abs=1e-6)
    assert curve.score[0] == pytest.approx(0.9)
    assert curve.score[100] == pytest.approx(0.7)
    assert curve.max_recall == 1.0
    assert np.mean(curve.precision) == pytest.approx(result.per_class["scratch"].map50, abs=1e-6)


def test_pr_curves_leave_out_classes_without_ground_truth() -> None:
    gt = _set([_box(0, 0, 10, 10)])
    # when
    curves = pr_curves(evaluate_detections(gt, {}), CLASSES)
    # then
    assert list(curves.classes) == ["scratch"]
    assert curves.classes["scratch"].max_recall == 0.0
