"""COCO mAP wrapper against hand-computed cases."""

from __future__ import annotations

import pytest

from services.finetune.ml.dataset import Box, DetectionDataset, ImageRecord, ScoredBox
from services.finetune.ml.evaluate import evaluate_detections
from shared.errors import InvalidInputError


def _gt(boxes: list[Box], classes: tuple[str, ...] = ("a",)) -> DetectionDataset:
    image = ImageRecord(file_name="im.jpg", width=100, height=100, boxes=boxes)
    return DetectionDataset(classes=list(classes), images=[image])


def _pred(x1: float, y1: float, x2: float, y2: float, score: float, c: int = 0) -> ScoredBox:
    return ScoredBox(x1=x1, y1=y1, x2=x2, y2=y2, score=score, class_id=c)


GT_BOX = Box(x1=10, y1=10, x2=20, y2=20, class_id=0)


def test_perfect_box_scores_one() -> None:
    # when
    result = evaluate_detections(_gt([GT_BOX]), {"im.jpg": [_pred(10, 10, 20, 20, 0.9)]})
    # then
    assert result.map50 == pytest.approx(1.0)
    assert result.map50_95 == pytest.approx(1.0)


def test_iou_058_passes_two_of_ten_thresholds() -> None:
    # given a prediction covering 58 % of the ground truth box: IoU 0.58 (>= .5, .55; < .6)
    prediction = _pred(10, 10, 20, 15.8, 0.9)
    # when
    result = evaluate_detections(_gt([GT_BOX]), {"im.jpg": [prediction]})
    # then
    assert result.map50 == pytest.approx(1.0)
    assert result.map50_95 == pytest.approx(0.2)


def test_false_positive_ranked_above_true_positive_halves_ap() -> None:
    # given: FP (0.9) then TP (0.8): precision at full recall is 1/2 everywhere
    predictions = {"im.jpg": [_pred(60, 60, 70, 70, 0.9), _pred(10, 10, 20, 20, 0.8)]}
    # when
    result = evaluate_detections(_gt([GT_BOX]), predictions)
    # then
    assert result.map50 == pytest.approx(0.5)


def test_false_positive_ranked_below_true_positive_costs_nothing() -> None:
    # given
    predictions = {"im.jpg": [_pred(60, 60, 70, 70, 0.1), _pred(10, 10, 20, 20, 0.8)]}
    # when / then
    assert evaluate_detections(_gt([GT_BOX]), predictions).map50 == pytest.approx(1.0)


def test_half_recall_gives_51_of_101_recall_points() -> None:
    # given two GT boxes, one found: precision 1 for recall thresholds 0.00..0.50
    second = Box(x1=50, y1=50, x2=60, y2=60, class_id=0)
    # when
    result = evaluate_detections(_gt([GT_BOX, second]), {"im.jpg": [_pred(10, 10, 20, 20, 0.9)]})
    # then
    assert result.map50 == pytest.approx(51 / 101)


def test_per_class_figures_and_classes_without_ground_truth() -> None:
    # given class a found perfectly, class b missed, class c has no GT but a detection
    gt = _gt([GT_BOX, Box(x1=50, y1=50, x2=60, y2=60, class_id=1)], ("a", "b", "c"))
    predictions = {"im.jpg": [_pred(10, 10, 20, 20, 0.9, 0), _pred(0, 0, 5, 5, 0.9, 2)]}
    # when
    result = evaluate_detections(gt, predictions)
    # then c is left out of the mean: (1 + 0) / 2
    assert result.per_class["a"].map50 == pytest.approx(1.0)
    assert result.per_class["b"].map50 == pytest.approx(0.0)
    assert result.per_class["c"].map50 is None
    assert result.per_class["c"].num_gt == 0
    assert result.map50 == pytest.approx(0.5)
    assert result.as_metrics()["map50/a"] == pytest.approx(1.0)


def test_wrong_class_does_not_match() -> None:
    # given the right place but the wrong label
    gt = _gt([GT_BOX], ("a", "b"))
    # when
    result = evaluate_detections(gt, {"im.jpg": [_pred(10, 10, 20, 20, 0.9, 1)]})
    # then
    assert result.map50 == pytest.approx(0.0)


def test_no_predictions_scores_zero() -> None:
    # when / then
    assert evaluate_detections(_gt([GT_BOX]), {}).map50 == 0.0


def test_ignore_difficult_removes_the_box_from_the_count() -> None:
    # given a difficult GT box that is missed and a normal one that is found
    hard = Box(x1=50, y1=50, x2=60, y2=60, class_id=0, difficult=True)
    predictions = {"im.jpg": [_pred(10, 10, 20, 20, 0.9)]}
    # when
    counted = evaluate_detections(_gt([GT_BOX, hard]), predictions)
    ignored = evaluate_detections(_gt([GT_BOX, hard]), predictions, ignore_difficult=True)
    # then
    assert counted.map50 == pytest.approx(51 / 101)
    assert ignored.map50 == pytest.approx(1.0)


def test_prediction_for_unknown_image_is_refused() -> None:
    # when / then
    with pytest.raises(InvalidInputError, match="unknown image"):
        evaluate_detections(_gt([GT_BOX]), {"other.jpg": [_pred(0, 0, 1, 1, 0.5)]})
