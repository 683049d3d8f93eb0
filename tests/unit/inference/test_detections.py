"""The value types: validation, immutability, normalised boxes, image checks."""

from __future__ import annotations

import numpy as np
import pytest

from services.inference.ml.detections import Detections, DetectParams, as_rgb, params_per_image
from shared.errors import InvalidInputError


def test_detections_are_read_only_copies() -> None:
    # given a caller's arrays
    boxes = np.array([[1, 2, 3, 4]], dtype=np.float32)
    dets = Detections(boxes, np.array([0.5], np.float32), np.array([2], np.int64), (10, 20))

    # when the caller changes its own array later
    boxes[0, 0] = 99

    # then the detections are unaffected, typed as promised, and cannot be written
    assert dets.boxes[0, 0] == 1
    assert dets.boxes.dtype == dets.scores.dtype == np.dtype(np.float32)
    assert dets.class_ids.dtype == np.dtype(np.int64)
    with pytest.raises(ValueError, match="read-only"):
        dets.boxes[0, 0] = 5


def test_normalized_boxes_divide_by_width_and_height() -> None:
    # given
    dets = Detections(
        np.array([[10, 5, 20, 10]], np.float32),
        np.array([0.9], np.float32),
        np.array([0], np.int64),
        (10, 40),
    )

    # when
    norm = dets.normalized_boxes()

    # then
    np.testing.assert_allclose(norm, [[0.25, 0.5, 0.5, 1.0]])


def test_detections_reject_mismatched_lengths() -> None:
    with pytest.raises(ValueError, match="disagree"):
        Detections(
            np.zeros((2, 4), np.float32), np.zeros(1, np.float32), np.zeros(2, np.int64), (5, 5)
        )


def test_empty_detections_have_zero_rows() -> None:
    dets = Detections.empty((7, 9))
    assert len(dets) == 0
    assert dets.boxes.shape == (0, 4)
    assert dets.normalized_boxes().shape == (0, 4)


@pytest.mark.parametrize(
    "kwargs", [{"conf": 1.5}, {"iou": -0.1}, {"max_det": 0}, {"max_nms": 0}, {"classes": (-1,)}]
)
def test_detect_params_reject_out_of_range_values(kwargs: dict[str, object]) -> None:
    with pytest.raises(InvalidInputError):
        DetectParams(**kwargs)  # type: ignore[arg-type]


def test_params_per_image_expands_one_and_checks_a_list() -> None:
    p = DetectParams(conf=0.4)
    assert params_per_image(p, 3) == [p, p, p]
    with pytest.raises(InvalidInputError, match="2 DetectParams for 3 images"):
        params_per_image([p, p], 3)


def test_grey_images_are_replicated_to_three_channels() -> None:
    # given
    grey = np.arange(12, dtype=np.uint8).reshape(3, 4)

    # when
    rgb = as_rgb(grey)

    # then
    assert rgb.shape == (3, 4, 3)
    np.testing.assert_array_equal(rgb[..., 2], grey)


@pytest.mark.parametrize(
    "bad",
    [np.zeros((4, 4, 3), np.float32), np.zeros((4, 4, 4), np.uint8), np.zeros((0, 4, 3), np.uint8)],
)
def test_as_rgb_rejects_what_is_not_an_rgb_uint8_image(bad: np.ndarray) -> None:
    with pytest.raises(InvalidInputError):
        as_rgb(bad)
