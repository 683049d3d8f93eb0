"""COCO mAP wrapper against hand-computed cases."""

from __future__ import annotations

import numpy as np
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


def _random_case(rng: np.random.Generator) -> tuple[DetectionDataset, dict[str, list[ScoredBox]]]:
    """A few images, 1-3 classes, jittered true boxes, stray boxes, some difficult GT."""
    k, images, predictions = int(rng.integers(1, 4)), [], {}
    for i in range(int(rng.integers(1, 10))):
        boxes = []
        for _ in range(int(rng.integers(0, 4))):
            x, y, w, h = (float(v) for v in (*rng.uniform(0, 80, 2), *rng.uniform(5, 20, 2)))
            c, hard = int(rng.integers(0, k)), bool(rng.random() < 0.15)
            boxes.append(Box(x1=x, y1=y, x2=x + w, y2=y + h, class_id=c, difficult=hard))
        found = [
            _pred(b.x1 + j[0], b.y1 + j[1], b.x2 + 4 + j[2], b.y2 + 4 + j[3], _score(rng),
                  b.class_id if rng.random() < 0.8 else int(rng.integers(0, k)))
            for b in boxes if rng.random() < 0.7 for j in [rng.normal(0, 3, 4)]
        ]  # fmt: skip
        for x, y in rng.uniform(0, 80, (int(rng.integers(0, 5)), 2)):
            found.append(_pred(x, y, x + 10, y + 10, _score(rng), int(rng.integers(0, k))))
        images.append(ImageRecord(file_name=f"i{i}.png", width=100, height=100, boxes=boxes))
        predictions[f"i{i}.png"] = found
    return DetectionDataset(classes=[f"c{c}" for c in range(k)], images=images), predictions


def _score(rng: np.random.Generator) -> float:
    return float(np.float32(rng.random()))  # network scores are float32


@pytest.mark.parametrize("ignore_difficult", [False, True])
def test_per_image_records_give_cocoevals_map50_exactly(ignore_difficult: bool) -> None:
    # given random cases (COCOeval's own matching is what the records keep)
    rng = np.random.default_rng(11)
    for _ in range(15):
        dataset, predictions = _random_case(rng)
        max_dets = int(rng.choice([2, 100]))
        # when
        result = evaluate_detections(dataset, predictions, max_dets, ignore_difficult)
        # then: one record per image, in order, and the same mAP@0.5 (issue 21, item 5)
        assert result.records is not None
        assert [r.file_name for r in result.records.images] == [
            im.file_name for im in dataset.images
        ]
        assert result.records.map50() == pytest.approx(result.map50, abs=1e-12)


def test_records_count_ground_truth_and_flag_matches() -> None:
    # given a TP, an FP above it and a missed difficult box (ignored)
    hard = Box(x1=50, y1=50, x2=60, y2=60, class_id=0, difficult=True)
    predictions = {"im.jpg": [_pred(10, 10, 20, 20, 0.8), _pred(70, 70, 80, 80, 0.9)]}
    # when
    result = evaluate_detections(_gt([GT_BOX, hard]), predictions, ignore_difficult=True)
    # then
    assert result.records is not None
    (image,) = result.records.images
    assert image.gt == [1]
    assert image.dets == [(0, 0.9, False), (0, 0.8, True)]
