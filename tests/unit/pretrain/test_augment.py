"""Joint augmentation keeps image and map aligned; statistics and normalisation."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from services.pretrain.ml.augment import (
    AugmentConfig,
    Window,
    compute_mean_std,
    joint_augment,
    normalize_images,
    photometric_distortion,
    resized_map_window,
)

GEOMETRY_ONLY = AugmentConfig(
    crop_size=32, resize_base=40, map_interpolation="bilinear", photometric=False
)


def _pattern(size: int = 40) -> tuple[np.ndarray, np.ndarray]:
    # A bright off-centre rectangle, identical in the image (all channels) and the map.
    amap = np.zeros((size, size), dtype=np.float32)
    amap[5:15, 8:30] = 200.0
    image = np.repeat(amap[..., None], 3, axis=2).astype(np.uint8)
    return image, amap


@pytest.mark.parametrize("seed", range(6))
def test_map_follows_the_image_through_resize_crop_and_flip(seed: int) -> None:
    # given
    image, amap = _pattern()
    # when
    out_image, out_map = joint_augment(image, amap, np.random.default_rng(seed), GEOMETRY_ONLY)
    # then: same bilinear resize, crop and flip -> equal up to uint8 rounding
    assert out_image.shape == (32, 32, 3)
    assert out_map.shape == (32, 32)
    assert np.abs(out_image[..., 0].astype(np.float32) - out_map).max() <= 1.0


def test_nearest_map_resize_keeps_only_original_values() -> None:
    # given
    image, _ = _pattern()
    amap = np.array([[0.2, 1.7], [1.7, 0.2]], dtype=np.float32)
    cfg = AugmentConfig(crop_size=32, resize_base=40, photometric=False)
    # when
    _, out_map = joint_augment(image, amap, np.random.default_rng(0), cfg)
    # then
    assert np.isin(out_map, amap).all()


def test_photometric_distortion_changes_the_image_but_not_the_map() -> None:
    # given
    image = np.random.default_rng(1).integers(30, 220, (40, 40, 3), dtype=np.uint8)
    amap = np.random.default_rng(2).random((4, 4), dtype=np.float32)
    with_photo = AugmentConfig(crop_size=32, resize_base=40, photometric=True)
    without = AugmentConfig(crop_size=32, resize_base=40, photometric=False)
    # when: same seed, so the geometric draws (made first) coincide
    img_a, map_a = joint_augment(image, amap, np.random.default_rng(3), with_photo)
    img_b, map_b = joint_augment(image, amap, np.random.default_rng(3), without)
    # then
    assert np.array_equal(map_a, map_b)
    assert not np.array_equal(img_a, img_b)


def test_photometric_distortion_returns_uint8_of_the_same_shape() -> None:
    # given
    image = np.full((8, 6, 3), 128, dtype=np.uint8)
    # when
    out = photometric_distortion(image, np.random.default_rng(0))
    # then
    assert out.dtype == np.uint8
    assert out.shape == (8, 6, 3)


def test_mean_and_std_over_all_pixels_of_all_images() -> None:
    # given: one black and one image of value 10 in channel 0, 20 in channel 1, 0 in 2
    black = np.zeros((2, 2, 3), dtype=np.uint8)
    grey = np.zeros((2, 2, 3), dtype=np.uint8)
    grey[..., 0], grey[..., 1] = 10, 20
    # when
    mean, std = compute_mean_std([black, grey])
    # then
    assert mean == pytest.approx((5.0, 10.0, 0.0))
    assert std == pytest.approx((5.0, 10.0, 0.0))


def test_mean_and_std_need_an_image() -> None:
    with pytest.raises(ValueError, match="at least one"):
        compute_mean_std([])


def test_normalisation_uses_the_given_statistics() -> None:
    # given
    images = torch.full((1, 3, 2, 2), 20, dtype=torch.uint8)
    # when
    out = normalize_images(images, (10.0, 20.0, 30.0), (2.0, 4.0, 5.0))
    # then
    assert out[0, :, 0, 0].tolist() == pytest.approx([5.0, 0.0, -2.0])


def _geometries(count: int) -> list[tuple[int, int, Window]]:
    """(map height, map width, window): up- and downscaling, windows at every edge."""
    rng = np.random.default_rng(7)
    cases = []
    for i in range(count):
        height, width = (int(v) for v in rng.integers(1, 40, 2))
        size = int(rng.integers(1, 80))
        side = int(rng.integers(size, 400))
        edge = side - size
        corners = [(0, 0), (edge, edge), (0, edge)]
        drawn = (int(rng.integers(0, edge + 1)), int(rng.integers(0, edge + 1)))
        top, left = corners[i] if i < len(corners) else drawn
        cases.append((height, width, Window(side=side, top=top, left=left, size=size)))
    return cases


@pytest.mark.parametrize(("height", "width", "window"), _geometries(60))
def test_the_map_window_equals_a_full_resize_then_the_crop(
    height: int, width: int, window: Window
) -> None:
    # given
    amap = np.random.default_rng(height * 100 + width).random((height, width), dtype=np.float32)
    full = {
        mode: cv2.resize(amap, (window.side, window.side), interpolation=flag)
        for mode, flag in (("nearest", cv2.INTER_NEAREST), ("bilinear", cv2.INTER_LINEAR))
    }
    # when
    nearest = resized_map_window(amap, window, "nearest")
    bilinear = resized_map_window(amap, window, "bilinear")
    # then: nearest picks the same cells; bilinear agrees to float32 rounding
    assert nearest.dtype == bilinear.dtype == np.float32
    assert np.array_equal(nearest, full["nearest"][window.rows, window.cols])
    np.testing.assert_allclose(bilinear, full["bilinear"][window.rows, window.cols], atol=1e-5)


def _photometric_per_pixel(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """mmseg's PhotoMetricDistortion written out on float32 pixels (the reference)."""

    def to_uint8(values: np.ndarray) -> np.ndarray:
        return np.clip(values, 0, 255).astype(np.uint8)

    out = image.astype(np.float32)
    if rng.random() < 0.5:
        out = to_uint8(out + rng.uniform(-32, 32)).astype(np.float32)
    contrast_first = rng.random() < 0.5
    if contrast_first and rng.random() < 0.5:
        out = to_uint8(out * rng.uniform(0.5, 1.5)).astype(np.float32)
    hsv = cv2.cvtColor(to_uint8(out), cv2.COLOR_RGB2HSV).astype(np.float32)
    if rng.random() < 0.5:
        hsv[..., 1] *= rng.uniform(0.5, 1.5)
    if rng.random() < 0.5:
        hsv[..., 0] = (hsv[..., 0] + rng.integers(-18, 19)) % 180
    hsv = np.clip(hsv, 0, [179, 255, 255])
    out = cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2RGB).astype(np.float32)
    if not contrast_first and rng.random() < 0.5:
        out = out * rng.uniform(0.5, 1.5)
    return to_uint8(out)


@pytest.mark.parametrize("seed", range(40))
def test_photometric_lookup_tables_equal_the_per_pixel_steps(seed: int) -> None:
    # given: every combination of steps turns up over the seeds; a flipped (strided) view
    image = np.random.default_rng(100 + seed).integers(0, 256, (24, 20, 3), dtype=np.uint8)
    view = image[:, ::-1] if seed % 2 else image
    ours, reference = np.random.default_rng(seed), np.random.default_rng(seed)
    # when
    out = photometric_distortion(view, ours)
    # then: the same pixels, and the same draws from the generator
    assert np.array_equal(out, _photometric_per_pixel(view, reference))
    assert ours.random() == reference.random()
