"""Letterbox geometry, pixels and the inverse box mapping."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from services.inference.ml.letterbox import (
    PAD_VALUE,
    letterbox,
    letterbox_geometry,
    letterbox_into,
    scale_boxes,
    to_input_tensor,
)

SHAPES = [(480, 640), (640, 480), (123, 457), (200, 200), (701, 96), (1, 3000), (33, 17)]


def test_landscape_image_is_centred_with_equal_bands_above_and_below() -> None:
    # given a 480x640 image and a 320x320 input

    # when
    geom = letterbox_geometry((480, 640), (320, 320))

    # then
    assert geom.resized_hw == (240, 320)
    assert (geom.pad_top, geom.pad_left) == (40, 0)
    assert geom.out_hw == (320, 320)
    assert geom.gain_xy == (0.5, 0.5)


def test_auto_mode_pads_only_to_the_next_stride_multiple() -> None:
    # given the same image, minimum-rectangle mode

    # when
    geom = letterbox_geometry((480, 640), (320, 320), auto=True, stride=32)

    # then: 240 rows need 16 more to reach 256, split 8 above and 8 below
    assert geom.out_hw == (256, 320)
    assert geom.pad_top == 8


def test_odd_padding_puts_the_extra_row_at_the_bottom() -> None:
    # given 123x457 scaled into 320x320: 86 rows, 234 rows of padding -> 117 each side
    geom = letterbox_geometry((123, 457), (320, 320))
    # and 33x17 scaled up: 17 columns become round(17 * 320 / 33) = 165, 155 to pad
    odd = letterbox_geometry((33, 17), (320, 320))

    # then
    assert (geom.resized_hw, geom.pad_top) == ((86, 320), 117)
    assert (odd.resized_hw[1], odd.pad_left, odd.out_hw[1]) == (165, 77, 320)


def test_canvas_holds_the_image_inside_grey_padding(make_image: Callable[..., np.ndarray]) -> None:
    # given
    image = make_image(480, 640)
    geom = letterbox_geometry(image.shape[:2], (320, 320))

    # when
    canvas = letterbox(image, geom)

    # then
    assert canvas.shape == (320, 320, 3)
    assert canvas.dtype == np.uint8
    assert (canvas[:40] == PAD_VALUE).all()
    assert (canvas[280:] == PAD_VALUE).all()
    assert not (canvas[40:280] == PAD_VALUE).all()


@pytest.mark.parametrize("auto", [False, True])
@pytest.mark.parametrize("shape", SHAPES)
def test_canvas_equals_ultralytics_letterbox(
    make_image: Callable[..., np.ndarray], shape: tuple[int, int], auto: bool
) -> None:
    from ultralytics.data.augment import LetterBox

    # given
    image = make_image(*shape)
    reference: Any = LetterBox((320, 320), auto=auto, stride=32)(image=image)

    # when
    canvas = letterbox(image, letterbox_geometry(shape, (320, 320), auto=auto, stride=32))

    # then: bit-identical pixels
    assert canvas.shape == reference.shape
    np.testing.assert_array_equal(canvas, reference)


@pytest.mark.parametrize("auto", [False, True])
@pytest.mark.parametrize("shape", SHAPES)
def test_scale_boxes_equals_ultralytics_and_clips(shape: tuple[int, int], auto: bool) -> None:
    import torch
    from ultralytics.utils.ops import scale_boxes as ultralytics_scale_boxes

    # given boxes spread over (and past the edges of) the network input
    geom = letterbox_geometry(shape, (320, 320), auto=auto)
    rng = np.random.default_rng(0)
    xy = rng.uniform(-20, 340, (50, 2)).astype(np.float32)
    boxes = np.concatenate([xy, xy + rng.uniform(0, 80, (50, 2)).astype(np.float32)], axis=1)
    reference: Any = ultralytics_scale_boxes(geom.out_hw, torch.from_numpy(boxes.copy()), shape)

    # when
    ours = scale_boxes(boxes, geom)

    # then
    np.testing.assert_allclose(ours, reference.numpy(), atol=1e-4)
    assert (ours >= 0).all()
    assert (ours[:, [0, 2]] <= shape[1]).all()
    assert (ours[:, [1, 3]] <= shape[0]).all()


def test_scale_boxes_inverts_the_letterbox_mapping() -> None:
    # given a box in a 123x457 image, mapped forward by hand into the input
    geom = letterbox_geometry((123, 457), (320, 320))
    box = np.array([[10.0, 20.0, 300.0, 100.0]], dtype=np.float32)
    gx, gy = geom.gain_xy
    forward = box * np.array([gx, gy, gx, gy], np.float32) + np.array(
        [geom.pad_left, geom.pad_top, geom.pad_left, geom.pad_top], np.float32
    )

    # when
    back = scale_boxes(forward, geom)

    # then
    np.testing.assert_allclose(back, box, atol=1e-3)


def test_input_tensor_is_nchw_in_unit_range(make_image: Callable[..., np.ndarray]) -> None:
    # given two canvases
    canvases = [make_image(64, 96), make_image(64, 96)]

    # when
    batch = to_input_tensor(canvases)

    # then: channel order kept (RGB in, RGB out), values divided by 255
    assert batch.shape == (2, 3, 64, 96)
    assert batch.dtype == np.float32
    assert batch.flags.c_contiguous
    np.testing.assert_array_equal(batch[1, 0], canvases[1][..., 0] / np.float32(255))


@pytest.mark.parametrize("auto", [False, True])
@pytest.mark.parametrize("shape", SHAPES)
def test_letterbox_into_writes_the_same_input_as_canvas_then_tensor(
    make_image: Callable[..., np.ndarray], shape: tuple[int, int], auto: bool
) -> None:
    # given an image and a slot of a reused batch buffer holding garbage from earlier calls
    image = make_image(*shape)
    geom = letterbox_geometry(shape, (320, 320), auto=auto, stride=32)
    slot = np.full((3, *geom.out_hw), np.nan, dtype=np.float32)

    # when
    letterbox_into(image, geom, slot)

    # then: every value written, bit-identical to the two-step path (ultralytics' numbers)
    np.testing.assert_array_equal(slot, to_input_tensor([letterbox(image, geom)])[0])


def test_letterbox_into_refuses_a_slot_of_the_wrong_shape(
    make_image: Callable[..., np.ndarray],
) -> None:
    geom = letterbox_geometry((480, 640), (320, 320))
    with pytest.raises(ValueError, match="out must be"):
        letterbox_into(make_image(480, 640), geom, np.zeros((3, 320, 256), np.float32))
