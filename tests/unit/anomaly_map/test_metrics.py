"""Image/pixel AUROC and AUPRO on hand-made masks and maps with known answers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from services.anomaly_map.ml.metrics import aupro, image_auroc, pixel_auroc
from shared.errors import InvalidInputError


def _two_regions() -> np.ndarray:
    """One 8x8 image: region A is one pixel, region B a 3x3 block, far apart."""
    mask = np.zeros((1, 8, 8), dtype=bool)
    mask[0, 0, 0] = True
    mask[0, 4:7, 4:7] = True
    return mask


def test_image_auroc_of_a_perfect_a_reversed_and_a_tied_ranking() -> None:
    # given
    labels = np.array([0, 0, 1, 1])

    # when / then
    assert image_auroc(labels, np.array([0.1, 0.2, 0.8, 0.9])) == 1.0
    assert image_auroc(labels, np.array([0.9, 0.8, 0.2, 0.1])) == 0.0
    assert image_auroc(labels, np.full(4, 0.5)) == 0.5


def test_image_auroc_counts_pairs() -> None:
    # given: of the 4 (anomalous, normal) pairs, 3 are ordered correctly
    labels = torch.tensor([0, 0, 1, 1])
    scores = torch.tensor([0.1, 0.6, 0.5, 0.9])

    # when
    result = image_auroc(labels, scores)

    # then
    assert result == pytest.approx(0.75)


def test_pixel_auroc_over_all_pixels() -> None:
    # given
    masks = _two_regions()
    maps = masks.astype(np.float32)
    maps[0, 7, 7] = 2.0  # one normal pixel above every defect pixel

    # when
    result = pixel_auroc(masks, maps)

    # then: 1 of 54 normal pixels outranks all 10 defect pixels
    assert result == pytest.approx(1 - 1 / 54)


def test_auroc_needs_both_classes() -> None:
    # given / when / then
    with pytest.raises(InvalidInputError, match="both"):
        image_auroc(np.ones(3), np.arange(3.0))


def test_aupro_of_a_perfect_map_is_one() -> None:
    # given
    masks = _two_regions()

    # when
    result = aupro(masks, masks.astype(np.float64))

    # then
    assert result == pytest.approx(1.0)


def test_aupro_of_a_constant_map_is_the_diagonal_area() -> None:
    # given: one threshold step from (0, 0) to (1, 1): area 0.3^2 / 2 over 0.3
    masks = _two_regions()

    # when
    result = aupro(masks, np.zeros(masks.shape))

    # then
    assert result == pytest.approx(0.15)


def test_aupro_averages_regions_not_pixels() -> None:
    # given: the 1-pixel region is found first, the 9-pixel one only after every normal pixel
    masks = _two_regions()
    maps = np.full(masks.shape, 0.5)
    maps[0, 0, 0] = 1.0
    maps[0, 4:7, 4:7] = 0.0

    # when
    result = aupro(masks, maps)

    # then: PRO is 0.5 over the whole FPR range (a pixel-level TPR would be 0.1)
    assert result == pytest.approx(0.5)


def test_aupro_with_a_looser_fpr_limit() -> None:
    # given: as above, but region B is detected at the same threshold as half the normals
    masks = _two_regions()
    maps = np.zeros(masks.shape)
    maps[0, 0, 0] = 1.0
    normal_rows = np.argwhere(~masks[0])
    for y, x in normal_rows[:27]:
        maps[0, y, x] = 0.5
    maps[0, 4:7, 4:7] = 0.5

    # when
    result = aupro(masks, maps, fpr_limit=1.0)

    # then: (0, 0.5) -> (0.5, 1.0) linearly, then flat to 1: area 0.375 + 0.5
    assert result == pytest.approx(0.875)


def test_aupro_treats_diagonal_neighbours_as_one_region() -> None:
    # given: a 2x2 block plus one pixel touching its corner diagonally; the block scores high
    masks = np.zeros((1, 6, 6), dtype=bool)
    masks[0, 0:2, 0:2] = True
    masks[0, 2, 2] = True
    maps = masks.astype(np.float64)
    maps[0, 2, 2] = 0.0

    # when
    result = aupro(masks, maps, fpr_limit=1.0)

    # then: one 5-pixel region with PRO 0.8 at FPR 0 -> area 0.8 + 0.2 / 2
    # (4-connectivity would see two regions, PRO 0.5, area 0.75)
    assert result == pytest.approx(0.9)


def test_aupro_needs_a_defect() -> None:
    # given / when / then
    with pytest.raises(InvalidInputError, match="region"):
        aupro(np.zeros((1, 4, 4), dtype=bool), np.zeros((1, 4, 4)))
