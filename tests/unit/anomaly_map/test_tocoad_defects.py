"""Labelled defects as ToCoAD Stage I anomalies: exemplars, their paste, the generator mix."""

from __future__ import annotations

import numpy as np
import pytest

from services.anomaly_map.ml.tocoad.data import resize_images
from services.anomaly_map.ml.tocoad.defects import (
    DefectExemplar,
    NativeSample,
    augment,
    augment_native,
    exemplars_from_boxes,
    exemplars_from_mask,
    model_scale,
    natives_from_boxes,
    natives_from_mask,
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


@pytest.mark.parametrize("aspect", ["tile", "pad", "squash"])
def test_native_samples_are_the_training_squares_of_the_image(aspect: str) -> None:
    # given a 128 x 256 image with a dark spot and its mask
    image, mask = _with_dark_spot()
    # when
    natives = natives_from_mask(image, mask, SIZE, aspect)  # type: ignore[arg-type]
    # then the images are exactly what training makes of it (every tile for tile)
    squares = resize_images([image], SIZE, aspect)  # type: ignore[arg-type]
    assert len(natives) == len(squares)
    for native, square in zip(natives, squares, strict=True):
        assert np.array_equal(native.image, square)
        assert native.mask.shape == (SIZE, SIZE)
        assert native.mask.dtype == np.float32
        # and the target covers the dark pixels, and no grey one
        dark, target = native.image[..., 0] < 60, native.mask > 0
        assert np.array_equal(dark & target, dark)
        assert not (target & (native.image[..., 0] > 110)).any()
    assert sum(float(n.mask.sum()) for n in natives) > 0


def test_native_targets_of_boxes_are_their_union_at_the_model_scale() -> None:
    # given a 128 x 256 image and two boxes, squashed to 64 x 64 (scale 0.5 down, 0.25 across)
    image = _grey(128, 256)
    boxes = [(100.0, 40.0, 132.0, 60.0), (0.0, 0.0, 16.0, 8.0)]
    # when
    (native,) = natives_from_boxes(image, boxes, SIZE, "squash")
    # then the target is the boxes' union, scaled
    expected = np.zeros((SIZE, SIZE), np.float32)
    expected[20:30, 25:33] = 1.0
    expected[0:4, 0:4] = 1.0
    assert np.array_equal(native.mask, expected)


def test_a_native_sample_turns_its_image_and_target_together() -> None:
    image, mask = _with_dark_spot(SIZE, SIZE)
    image[5:9, 50:60] = 200  # a bright mark outside the defect, to see the image move
    sample = NativeSample(image, (mask > 0).astype(np.float32))
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(30):
        out, target = augment_native(sample, rng)
        assert out.shape == image.shape
        assert target.shape == mask.shape
        assert np.array_equal(out[..., 0] < 60, target > 0)
        assert target.sum() == sample.mask.sum()
        seen.add(out.tobytes())
    assert len(seen) > 4  # flips and quarter turns, not one fixed view


def test_the_generator_draws_native_samples_at_their_share() -> None:
    # given one native sample (a dark spot) and p_native = 1
    image, mask = _with_dark_spot(SIZE, SIZE)
    native = NativeSample(image, (mask > 0).astype(np.float32))
    normals = _grey(SIZE, SIZE, 200)[None].repeat(3, axis=0)
    cfg = GeneratorConfig(p_native=1.0, n_procedural_textures=2)
    generator = AnomalyGenerator(cfg, SIZE, normals, natives=[native])
    # when
    out, target = generator(normals[0], np.random.default_rng(0))
    # then the sample is the labelled image with its own target, not the normal image
    assert target.sum() == native.mask.sum()
    assert np.array_equal(out[..., 0] < 60, target > 0)
    assert (out[target == 0] == 120).all()


def test_with_p_native_zero_the_generator_draws_exactly_as_without_natives() -> None:
    # p_native 0 draws no random number: seeded runs repeat those without natives
    normals = np.random.default_rng(1).integers(0, 256, (3, SIZE, SIZE, 3), dtype=np.uint8)
    black = DefectExemplar(_grey(10, 10, 0), np.ones((10, 10), np.float32))
    image, mask = _with_dark_spot(SIZE, SIZE)
    native = NativeSample(image, (mask > 0).astype(np.float32))
    cfg = GeneratorConfig(n_procedural_textures=2, p_native=0.0)
    plain = AnomalyGenerator(cfg, SIZE, normals, defects=[black])
    with_natives = AnomalyGenerator(cfg, SIZE, normals, defects=[black], natives=[native])
    a = plain.batch(normals, np.random.default_rng(3))
    b = with_natives.batch(normals, np.random.default_rng(3))
    assert np.array_equal(a[0], b[0])
    assert np.array_equal(a[1], b[1])
