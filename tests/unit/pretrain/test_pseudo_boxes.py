"""Pseudo-defect boxes from synthetic maps with known blobs (agssp-spec §3)."""

from __future__ import annotations

import numpy as np
import pytest

from services.pretrain.ml.pseudo_boxes import (
    Box,
    ImageBoxes,
    box_iou,
    build_coco,
    category_threshold,
    extract_boxes,
    min_box_area,
    nms,
    render_overlay,
    summarize,
    yolo_lines,
)


def _map(size: int = 100) -> np.ndarray:
    # Map at image resolution: the resize is then the identity and blobs stay exact.
    return np.zeros((size, size), dtype=np.float32)


def test_threshold_is_mean_of_maxima_minus_c() -> None:
    # given
    maps = [np.array([[0.2, 0.9]]), np.array([[1.1, 0.0]])]
    # when / then
    assert category_threshold(maps) == pytest.approx(0.9)
    assert category_threshold(maps, c=0.3) == pytest.approx(0.7)


def test_minimum_area_rule() -> None:
    assert min_box_area(100, 100) == 10
    assert min_box_area(1200, 900) == 108


def test_one_blob_gives_its_bounding_box_and_peak_score() -> None:
    # given: a 10 x 15 blob with peak 1.4
    amap = _map()
    amap[10:20, 30:45] = 1.0
    amap[12, 33] = 1.4
    # when
    boxes = extract_boxes(amap, 100, 100, threshold=0.5)
    # then
    assert [(b.x1, b.y1, b.x2, b.y2) for b in boxes] == [(30, 10, 45, 20)]
    assert boxes[0].score == pytest.approx(1.4)


def test_pixels_at_the_threshold_are_background() -> None:
    # given: binarisation is strictly greater than T
    amap = _map()
    amap[10:20, 10:20] = 0.5
    # when / then
    assert extract_boxes(amap, 100, 100, threshold=0.5) == []


def test_minimum_area_drops_a_small_blob() -> None:
    # given: 3x3 blob has contour area 4 < 10, 5x5 blob has 16
    amap = _map()
    amap[10:13, 10:13] = 1.0
    amap[50:55, 50:55] = 1.0
    # when
    boxes = extract_boxes(amap, 100, 100, threshold=0.5)
    # then
    assert [(b.x1, b.y1, b.x2, b.y2) for b in boxes] == [(50, 50, 55, 55)]


def test_top_k_keeps_the_ten_highest_of_twelve_blobs() -> None:
    # given: 12 separated 5x5 blobs with scores 0.60, 0.65, ..., 1.15
    amap = _map(120)
    scores = [0.6 + 0.05 * i for i in range(12)]
    for i, score in enumerate(scores):
        row, col = divmod(i, 4)
        amap[10 + 30 * row : 15 + 30 * row, 10 + 25 * col : 15 + 25 * col] = score
    # when
    boxes = extract_boxes(amap, 120, 120, threshold=0.5)
    # then
    assert [b.score for b in boxes] == pytest.approx(sorted(scores, reverse=True)[:10])


def test_low_res_map_is_resized_to_the_image_size() -> None:
    # given: 2x2 map with one hot cell, image 200 (W) x 100 (H)
    amap = np.array([[1.0, 0.0], [0.0, 0.0]], dtype=np.float32)
    # when
    boxes = extract_boxes(amap, 200, 100, threshold=0.5)
    # then: bilinear with half-pixel centres is > 0.5 up to the cell's middle (x < 100, y < 50)
    assert [(b.x1, b.y1, b.x2, b.y2) for b in boxes] == [(0, 0, 100, 50)]
    assert boxes[0].score == pytest.approx(1.0)


def test_connected_components_option_finds_the_same_blob() -> None:
    # given
    amap = _map()
    amap[10:20, 30:45] = 1.0
    # when
    boxes = extract_boxes(amap, 100, 100, threshold=0.5, regions="components")
    # then
    assert [(b.x1, b.y1, b.x2, b.y2) for b in boxes] == [(30, 10, 45, 20)]


def test_image_score_gate_suppresses_boxes_below_it() -> None:
    # given
    amap = _map()
    amap[10:20, 10:20] = 1.0
    # when
    gated = extract_boxes(amap, 100, 100, threshold=0.5, image_score=0.3, score_gate=0.4)
    passed = extract_boxes(amap, 100, 100, threshold=0.5, image_score=0.5, score_gate=0.4)
    # then
    assert gated == []
    assert len(passed) == 1


def test_iou_of_hand_made_boxes() -> None:
    assert box_iou(Box(0, 0, 10, 10, 1), Box(5, 0, 15, 10, 1)) == pytest.approx(50 / 150)
    assert box_iou(Box(0, 0, 10, 10, 1), Box(10, 0, 20, 10, 1)) == 0.0


def test_nms_drops_boxes_at_or_above_the_iou_threshold() -> None:
    # given: IoUs with the best box: 0.9, 0.8 (dropped, >= 0.8), 0.33 (kept)
    best = Box(0, 0, 10, 10, 0.9)
    boxes = [Box(0, 0, 10, 8, 0.7), best, Box(0, 0, 10, 9, 0.8), Box(5, 0, 15, 10, 0.6)]
    # when
    kept = nms(boxes, 0.8)
    # then
    assert kept == [best, Box(5, 0, 15, 10, 0.6)]


def test_yolo_lines_are_normalised_centre_and_size() -> None:
    # when
    lines = yolo_lines([Box(30, 10, 45, 20, 1.0)], width=100, height=50)
    # then
    assert lines == ["0 0.375000 0.300000 0.150000 0.200000"]


def test_coco_dict_keeps_background_images_and_uses_category_zero() -> None:
    # given
    images = [
        ImageBoxes("a.jpg", 100, 50, (Box(30, 10, 45, 20, 0.9),)),
        ImageBoxes("b.jpg", 100, 50, ()),
    ]
    # when
    coco = build_coco(images)
    # then
    assert [i["file_name"] for i in coco["images"]] == ["a.jpg", "b.jpg"]
    assert coco["categories"][0]["id"] == 0
    assert coco["categories"][0]["name"] == "anomaly"
    (annotation,) = coco["annotations"]
    assert annotation["bbox"] == [30, 10, 15, 10]
    assert annotation["area"] == 150
    assert annotation["image_id"] == 1
    assert annotation["category_id"] == 0


def test_summary_per_category() -> None:
    # given: category "a": 2 images, one with two boxes; category "b": one empty image
    images = [
        ImageBoxes("1.jpg", 10, 10, (Box(0, 0, 5, 5, 1.0), Box(0, 0, 10, 10, 1.0)), "a"),
        ImageBoxes("2.jpg", 10, 10, (), "a"),
        ImageBoxes("3.jpg", 10, 10, (), "b"),
    ]
    # when
    summary = summarize(images)
    # then
    a, b = summary["a"], summary["b"]
    assert (a.images, a.images_with_boxes, a.share_with_boxes) == (2, 1, 0.5)
    assert a.boxes_per_image == 1.0
    assert (a.min_area_ratio, a.max_area_ratio, a.mean_area_ratio) == (0.25, 1.0, 0.625)
    assert (b.share_with_boxes, b.boxes_per_image) == (0.0, 0.0)


def test_overlay_draws_the_box_outline_on_a_copy() -> None:
    # given
    image = np.zeros((20, 20, 3), dtype=np.uint8)
    # when
    out = render_overlay(image, [Box(5, 5, 15, 15, 0.5)], thickness=1, show_scores=False)
    # then
    assert out.dtype == np.uint8
    assert image.max() == 0
    assert out[5, 5].tolist() == [255, 0, 0]
    assert out[14, 14].tolist() == [255, 0, 0]
    assert out[10, 10].tolist() == [0, 0, 0]
