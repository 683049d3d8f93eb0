"""Labelled defects as ToCoAD Stage I anomalies: exemplars, their paste, the generator mix."""

from __future__ import annotations

import numpy as np
import pytest

from services.anomaly_map.ml.tocoad.defects import (
    DefectExemplar,
    augment,
    exemplars_from_boxes,
    exemplars_from_mask,
    model_scale,
    paste,
)
from services.anomaly_map.ml.tocoad.generator import AnomalyGenerator
from services.anomaly_map.params.tocoad import GeneratorConfig

SIZE = 64


def _grey(height: int, width: int, value: int = 120) -> np.ndarray:
    return np.full((height, width, 3), value, np.uint8)


def _with_dark_spot(height: int = 128, width: int = 256) -> tuple[np.ndarray, np.ndarray]:
    image, mask = _grey(height, width), np.zeros((height, width), np.uint8)
    image[40:60, 100:130] = 20
    mask[40:60, 100:130] = 255
    return image, mask


def test_model_scale_follows_how_training_images_reach_s() -> None:
    # tile: short side to S; pad: long side to S; squash: each side on its own
    assert model_scale(128, 256, SIZE, "tile") == (0.5, 0.5)
    assert model_scale(128, 256, SIZE, "pad") == (0.25, 0.25)
    assert model_scale(128, 256, SIZE, "squash") == (0.5, 0.25)


def test_a_mask_gives_one_exemplar_per_region_at_the_model_scale() -> None:
    # given two separate regions
    image, mask = _with_dark_spot()
    mask[100:110, 10:20] = 255
    image[100:110, 10:20] = 20
    # when
    exemplars = exemplars_from_mask(image, mask, SIZE, "tile")
    # then both, each with its margin of surroundings, the defect at weight 1
    assert len(exemplars) == 2
    big = max(exemplars, key=lambda e: e.alpha.size)
    assert big.alpha.shape[0] > 10  # 10 x 15 at scale 0.5, + margin
    assert big.alpha.shape[1] > 15
    assert big.alpha.max() == pytest.approx(1.0)
    assert big.alpha[0, 0] < 0.5  # a corner is background
    dark, ring = big.patch[big.alpha >= 0.99].mean(), big.patch[big.ring].mean()
    assert dark < ring - 50  # the defect (grown by a pixel to blend its edge) is what pastes


def test_tiny_regions_give_no_exemplar() -> None:
    image, mask = _grey(128, 128), np.zeros((128, 128), np.uint8)
    mask[5, 5] = 255
    assert exemplars_from_mask(image, mask, SIZE, "squash") == []


def test_a_box_gives_a_soft_blended_exemplar() -> None:
    # given
    image, _ = _with_dark_spot()
    # when
    [exemplar] = exemplars_from_boxes(image, [(100.0, 40.0, 130.0, 60.0)], SIZE, "tile")
    # then the weight is about 1 in the box's centre and falls off towards the crop's edge
    h, w = exemplar.alpha.shape
    assert exemplar.alpha[h // 2, w // 2] == pytest.approx(1.0, abs=1e-3)
    assert exemplar.alpha[0, 0] < exemplar.alpha[h // 2, w // 2]
    assert exemplar.ring.any()


def test_paste_matches_brightness_and_leaves_the_rest_untouched() -> None:
    # given a dark defect cut from a bright surround, pasted onto a darker image
    patch = _grey(12, 12, 200)
    patch[4:8, 4:8] = 100  # 100 below its surroundings
    alpha = np.zeros((12, 12), np.float32)
    alpha[4:8, 4:8] = 1.0
    target = _grey(SIZE, SIZE, 80)
    # when
    out, mask = paste(target, DefectExemplar(patch, alpha), np.random.default_rng(0))
    # then the defect lands at the target's level minus its contrast, not as a bright square
    assert mask.sum() == 16
    inside = out[mask > 0].astype(float)
    assert 0 <= inside.mean() < 80 - 50
    assert np.array_equal(out[mask == 0], target[mask == 0])  # alpha 0 outside the defect


def test_augment_keeps_the_exemplar_within_the_image() -> None:
    big = DefectExemplar(_grey(80, 20), np.ones((80, 20), np.float32))
    rng = np.random.default_rng(0)
    for _ in range(20):
        out = augment(big, SIZE, rng)
        assert max(out.alpha.shape) <= SIZE
        assert out.patch.shape[:2] == out.alpha.shape


def test_the_generator_mixes_labelled_pastes_in_at_its_share() -> None:
    # given exemplars of a flat black square, and p_labelled = 1
    black = DefectExemplar(_grey(10, 10, 0), np.ones((10, 10), np.float32))
    normals = _grey(SIZE, SIZE)[None].repeat(3, axis=0)
    cfg = GeneratorConfig(p_keep_normal=0.0, p_labelled=1.0, n_procedural_textures=2)
    generator = AnomalyGenerator(cfg, SIZE, normals, defects=[black])
    # when
    out, mask = generator(normals[0], np.random.default_rng(0))
    # then the pasted square is the mask
    assert mask.sum() >= 49  # 10 x 10 at a 0.75-1.33 size jitter
    assert out[mask > 0].max() < 30


def test_without_exemplars_the_generator_draws_exactly_as_before() -> None:
    # p_labelled never draws a random number when no exemplar is given: seeded runs repeat
    normals = np.random.default_rng(1).integers(0, 256, (3, SIZE, SIZE, 3), dtype=np.uint8)
    cfg = GeneratorConfig(n_procedural_textures=2)
    plain = AnomalyGenerator(cfg, SIZE, normals)
    mixed = AnomalyGenerator(cfg.model_copy(update={"p_labelled": 0.9}), SIZE, normals)
    a = plain.batch(normals, np.random.default_rng(3))
    b = mixed.batch(normals, np.random.default_rng(3))
    assert np.array_equal(a[0], b[0])
    assert np.array_equal(a[1], b[1])
