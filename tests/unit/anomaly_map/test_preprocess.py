"""Preprocessing into CLIP inputs and bilinear map upsampling."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from services.anomaly_map.ml.clip.preprocess import preprocess, to_rgb, upsample_maps
from shared.errors import InvalidInputError

MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)


def test_a_constant_image_maps_to_its_normalised_value() -> None:
    # given: a non-square image, squashed to 16x16
    image = np.full((30, 50, 3), 51, dtype=np.uint8)

    # when
    batch = preprocess([image], size=16, mean=MEAN, std=STD)

    # then
    assert batch.shape == (1, 3, 16, 16)
    expected = (torch.tensor([0.2, 0.2, 0.2]) - torch.tensor(MEAN)) / torch.tensor(STD)
    torch.testing.assert_close(batch[0, :, 7, 7], expected, rtol=1e-5, atol=1e-5)


def test_gray_and_rgba_images_become_three_channels() -> None:
    # given
    gray = np.full((12, 12), 200, dtype=np.uint8)
    rgba = np.zeros((12, 12, 4), dtype=np.uint8)
    rgba[..., 0] = 200
    rgba[..., 3] = 7

    # when
    batch = preprocess([gray, rgba], size=8, mean=(0, 0, 0), std=(1, 1, 1))

    # then
    torch.testing.assert_close(batch[0], torch.full((3, 8, 8), 200 / 255))
    torch.testing.assert_close(batch[1, 0], torch.full((8, 8), 200 / 255))
    assert batch[1, 1:].abs().max().item() == 0.0


def test_squash_resize_keeps_the_layout_without_cropping() -> None:
    # given: left half dark, right half bright, 20x80
    image = np.zeros((20, 80, 3), dtype=np.uint8)
    image[:, 40:] = 255

    # when
    batch = preprocess([image], size=10, mean=(0, 0, 0), std=(1, 1, 1))

    # then
    assert batch[0, 0, :, :4].max().item() < 0.05
    assert batch[0, 0, :, 6:].min().item() > 0.95


def test_non_uint8_images_are_refused() -> None:
    # given / when / then
    with pytest.raises(InvalidInputError, match="uint8"):
        to_rgb(np.zeros((4, 4, 3), dtype=np.float32))


def test_upsampling_aligns_corners() -> None:
    # given
    maps = torch.tensor([[[0.0, 1.0], [2.0, 3.0]]])

    # when
    up = upsample_maps(maps, (3, 5))

    # then: corners kept, the centre is the mean, the top edge steps by 0.25
    assert up.shape == (1, 3, 5)
    assert up[0, 0, 0].item() == 0.0
    assert up[0, -1, -1].item() == 3.0
    assert up[0, 1, 2].item() == pytest.approx(1.5)
    torch.testing.assert_close(up[0, 0], torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0]))
