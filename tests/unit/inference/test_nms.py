"""Numpy NMS and decode against hand-made boxes, torchvision and ultralytics."""

from __future__ import annotations

import numpy as np
import pytest

from services.inference.ml.detections import DetectParams
from services.inference.ml.nms import decode_and_nms, nms


def _head_output(boxes_xywh: list[list[float]], class_scores: list[list[float]]) -> np.ndarray:
    """Build a (4 + nc, N) head output from per-box rows."""
    return np.concatenate([np.array(boxes_xywh).T, np.array(class_scores).T]).astype(np.float32)


def test_nms_drops_the_weaker_of_two_overlapping_boxes_and_keeps_a_distant_one() -> None:
    # given two boxes with IoU 0.81 and one far away
    boxes = np.array([[0, 0, 10, 10], [1, 1, 10, 10], [50, 50, 60, 60]], dtype=np.float32)
    scores = np.array([0.6, 0.9, 0.5], dtype=np.float32)

    # when
    keep = nms(boxes, scores, iou_threshold=0.5)

    # then: best first, the overlapped weaker box gone
    assert keep.tolist() == [1, 2]


def test_nms_keeps_a_box_whose_iou_equals_the_threshold() -> None:
    # given IoU exactly 0.5: [0,0,2,1] vs [0,0,1,1] -> 1 / 2
    boxes = np.array([[0, 0, 2, 1], [0, 0, 1, 1]], dtype=np.float32)
    scores = np.array([0.9, 0.8], dtype=np.float32)

    # when / then: suppression needs IoU strictly above the threshold, as in torchvision
    assert nms(boxes, scores, 0.5).tolist() == [0, 1]
    assert nms(boxes, scores, 0.49).tolist() == [0]


def test_nms_stops_at_max_keep_with_the_same_prefix() -> None:
    # given ten separate boxes
    boxes = np.array([[i * 20, 0, i * 20 + 10, 10] for i in range(10)], dtype=np.float32)
    scores = np.linspace(0.1, 1.0, 10, dtype=np.float32)

    # when
    full = nms(boxes, scores, 0.5)
    capped = nms(boxes, scores, 0.5, max_keep=3)

    # then
    assert capped.tolist() == full[:3].tolist() == [9, 8, 7]


@pytest.mark.parametrize("seed", range(5))
def test_nms_equals_torchvision_on_random_boxes_with_ties(seed: int) -> None:
    import torch
    import torchvision

    # given clustered boxes, scores rounded so that many tie, some empty boxes
    rng = np.random.default_rng(seed)
    xy = rng.uniform(0, 100, (400, 2)).astype(np.float32)
    wh = rng.uniform(0, 30, (400, 2)).astype(np.float32)
    wh[::37] = 0
    boxes = np.concatenate([xy, xy + wh], axis=1)
    scores = np.round(rng.uniform(0, 1, 400), 2).astype(np.float32)

    # when
    ours = nms(boxes, scores, 0.45)
    ref = torchvision.ops.nms(torch.from_numpy(boxes), torch.from_numpy(scores), 0.45)

    # then
    assert ours.tolist() == ref.tolist()


def test_decode_keeps_best_class_and_applies_nms_per_class() -> None:
    # given two overlapping boxes of different classes and a weaker copy of the first
    pred = _head_output(
        [[50, 50, 20, 20], [52, 50, 20, 20], [50, 51, 20, 20]],
        [[0.9, 0.1], [0.2, 0.8], [0.7, 0.3]],
    )

    # when
    boxes, scores, classes = decode_and_nms(pred, DetectParams(conf=0.25, iou=0.5))

    # then: the weak class-0 copy is suppressed, the class-1 box survives the overlap
    assert classes.tolist() == [0, 1]
    np.testing.assert_allclose(scores, [0.9, 0.8])
    np.testing.assert_allclose(boxes[0], [40, 40, 60, 60])


def test_agnostic_nms_suppresses_across_classes() -> None:
    # given the same output
    pred = _head_output(
        [[50, 50, 20, 20], [52, 50, 20, 20], [50, 51, 20, 20]],
        [[0.9, 0.1], [0.2, 0.8], [0.7, 0.3]],
    )

    # when
    _, _, classes = decode_and_nms(pred, DetectParams(conf=0.25, iou=0.5, agnostic=True))

    # then
    assert classes.tolist() == [0]


def test_conf_is_strict_and_classes_filter_uses_the_best_class() -> None:
    # given one box exactly at the threshold and one whose best class is 1
    pred = _head_output([[10, 10, 4, 4], [90, 90, 4, 4]], [[0.5, 0.1], [0.6, 0.7]])

    # when
    at_threshold = decode_and_nms(pred, DetectParams(conf=0.5))
    only_class_0 = decode_and_nms(pred, DetectParams(conf=0.3, classes=(0,)))

    # then: 0.5 is not > 0.5; the second box is class 1, not re-labelled class 0
    assert at_threshold[2].tolist() == [1]
    assert len(only_class_0[2]) == 1
    assert only_class_0[1].tolist() == [pytest.approx(0.5)]


def test_max_nms_keeps_only_the_top_candidates() -> None:
    # given five separate boxes
    pred = _head_output([[i * 50, 10, 4, 4] for i in range(5)], [[0.3 + 0.1 * i] for i in range(5)])

    # when
    _, scores, _ = decode_and_nms(pred, DetectParams(conf=0.1, max_nms=2))

    # then
    np.testing.assert_allclose(scores, [0.7, 0.6])


def test_decode_with_no_candidates_returns_empty_arrays() -> None:
    # given
    pred = _head_output([[10, 10, 4, 4]], [[0.01, 0.02]])

    # when
    boxes, scores, classes = decode_and_nms(pred, DetectParams())

    # then
    assert boxes.shape == (0, 4)
    assert scores.shape == classes.shape == (0,)


@pytest.mark.parametrize("params", [DetectParams(), DetectParams(agnostic=True, iou=0.3)])
def test_decode_equals_ultralytics_non_max_suppression(params: DetectParams) -> None:
    import torch
    from ultralytics.utils.nms import non_max_suppression

    # given a random 3-class head output with many overlapping candidates
    rng = np.random.default_rng(1)
    n = 2000
    xywh = np.concatenate([rng.uniform(0, 320, (n, 2)), rng.uniform(4, 60, (n, 2))], axis=1)
    pred = np.concatenate([xywh.T, rng.uniform(0, 0.6, (3, n))]).astype(np.float32)
    ref = non_max_suppression(
        torch.from_numpy(pred[None]), params.conf, params.iou, agnostic=params.agnostic
    )[0].numpy()

    # when
    boxes, scores, classes = decode_and_nms(pred, params)

    # then
    assert len(boxes) == len(ref) > 10
    np.testing.assert_allclose(boxes, ref[:, :4], atol=1e-4)
    np.testing.assert_array_equal(scores, ref[:, 4])
    np.testing.assert_array_equal(classes, ref[:, 5].astype(np.int64))
