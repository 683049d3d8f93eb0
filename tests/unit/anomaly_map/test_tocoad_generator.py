"""ToCoAD anomaly generator G (tocoad-spec §3): masks, invariants, texture sources."""

from __future__ import annotations

import numpy as np
import pytest

from services.anomaly_map.ml.tocoad.generator import AnomalyGenerator
from services.anomaly_map.ml.tocoad.perlin import perlin_mask
from services.anomaly_map.ml.tocoad.textures import augment_texture, procedural_textures
from services.anomaly_map.params.tocoad import GeneratorConfig

SIZE = 32


def _normals(count: int = 4) -> np.ndarray:
    rng = np.random.default_rng(1)
    return rng.integers(0, 256, size=(count, SIZE, SIZE, 3), dtype=np.uint8)


def _generator(kind: str, p_keep_normal: float = 0.0) -> AnomalyGenerator:
    cfg = GeneratorConfig(kind=kind, p_keep_normal=p_keep_normal, n_procedural_textures=6)
    return AnomalyGenerator(cfg, SIZE, _normals())


@pytest.mark.parametrize("kind", ["perlin", "cutpaste"])
def test_generator_never_changes_pixels_outside_the_mask(kind: str) -> None:
    # given
    generator, image = _generator(kind), _normals(1)[0]
    rng = np.random.default_rng(0)

    # when
    samples = [generator(image, rng) for _ in range(30)]

    # then
    assert any(mask.any() for _, mask in samples)
    for out, mask in samples:
        outside = mask == 0
        assert np.array_equal(out[outside], image[outside])


@pytest.mark.parametrize("kind", ["perlin", "cutpaste"])
def test_generator_masks_are_binary_float_images_of_the_input_size(kind: str) -> None:
    # given
    generator = _generator(kind)

    # when
    images, masks = generator.batch(_normals(), np.random.default_rng(0))

    # then
    assert images.shape == (4, SIZE, SIZE, 3)
    assert images.dtype == np.uint8
    assert masks.shape == (4, SIZE, SIZE)
    assert masks.dtype == np.float32
    assert set(np.unique(masks)) <= {0.0, 1.0}


def test_generator_changes_pixels_inside_the_mask() -> None:
    # given
    generator, image = _generator("perlin"), _normals(1)[0]
    rng = np.random.default_rng(3)

    # when
    changed = [
        (out != image).any(-1)[mask > 0].mean()
        for out, mask in (generator(image, rng) for _ in range(20))
        if mask.any()
    ]

    # then
    assert np.mean(changed) > 0.5


def test_keep_normal_probability_one_returns_the_image_with_an_empty_mask() -> None:
    # given
    generator, image = _generator("perlin", p_keep_normal=1.0), _normals(1)[0]

    # when
    out, mask = generator(image, np.random.default_rng(0))

    # then
    assert np.array_equal(out, image)
    assert not mask.any()


def test_perlin_mask_is_binary_and_covers_part_of_the_image() -> None:
    # given
    rng = np.random.default_rng(0)

    # when
    masks = np.stack([perlin_mask(64, rng) for _ in range(20)])

    # then
    assert masks.shape == (20, 64, 64)
    assert set(np.unique(masks)) <= {0.0, 1.0}
    assert 0.0 < masks.mean() < 0.5


def test_procedural_textures_and_augmenter_keep_size_and_dtype() -> None:
    # given
    textures = procedural_textures(SIZE, 6, np.random.default_rng(0))

    # when
    augmented = [augment_texture(t, np.random.default_rng(i)) for i, t in enumerate(textures)]

    # then
    assert all(t.shape == (SIZE, SIZE, 3) and t.dtype == np.uint8 for t in textures + augmented)
    assert len({t.tobytes() for t in textures}) == 6
