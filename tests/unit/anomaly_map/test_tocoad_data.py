"""ToCoAD input geometry: aspect-kept padding, the content box and maps cropped back."""

from __future__ import annotations

import numpy as np
import pytest

from services.anomaly_map.ml.tocoad.data import (
    MAX_TILES,
    content_box,
    fit_square,
    resize_images,
    stitch_tiles,
    tile_layout,
    uncrop_maps,
)
from services.anomaly_map.ml.tocoad.presets import PRESETS, merge, preset_config


def _tall_crack(height: int = 320, width: int = 128) -> np.ndarray:
    """A grey tile 2.5 times taller than wide with a 2-pixel dark horizontal crack."""
    image = np.full((height, width, 3), 160, np.uint8)
    image[height // 2 : height // 2 + 2, :] = 20
    return image


def test_content_box_keeps_the_aspect_ratio_centred() -> None:
    # when
    box = content_box(320, 128, 64, "pad")
    # then the long side fills S, the short one is scaled by the same factor
    assert box == (0, 64, 19, 45)
    assert content_box(320, 128, 64, "squash") == (0, 64, 0, 64)


def test_tiles_keep_a_thin_crack_that_squashing_and_padding_fade() -> None:
    # given a 320 x 128 tile with a 2 px crack across it, brought to S = 64: squashing and
    # padding shrink the height 5x (the crack becomes 0.4 px of mixed grey), tiles 2x (1 px)
    image = _tall_crack()
    # when
    tiles = resize_images([image], 64, "tile")
    darkest = {
        "tile": int(tiles[..., 0].min()),
        "squash": int(fit_square(image, 64, "squash")[..., 0].min()),
        "pad": int(fit_square(image, 64, "pad")[..., 0].min()),
    }
    # then
    assert tiles.shape == (3, 64, 64, 3)  # 160 px of height in three overlapping tiles
    assert darkest["tile"] < 40
    assert darkest["squash"] > 80
    assert darkest["pad"] > 80


def test_tile_layout_covers_the_long_side_and_caps_the_count() -> None:
    # when
    layout = tile_layout(320, 128, 64)
    capped = tile_layout(1000, 50, 64)
    # then
    assert (layout.height, layout.width) == (160, 64)
    assert [y for y, _ in layout.origins] == [0, 48, 96]
    assert len(capped.origins) == MAX_TILES
    assert capped.height == MAX_TILES * 64


def test_stitched_tile_maps_return_to_the_squashed_layout() -> None:
    # given per-tile maps that mark the crack row of the middle tile
    layout = tile_layout(320, 128, 64)
    maps = np.zeros((3, 64, 64), np.float32)
    maps[1, 80 - 48 : 82 - 48, :] = 1.0  # rows 80-81 of the 160-px scaled image
    # when
    out, scores = stitch_tiles(maps, np.array([0.1, 0.9, 0.2], np.float32), [layout], 64)
    # then the hot rows sit at the middle of the squashed map, and the score is the tile max
    assert out.shape == (1, 64, 64)
    assert 30 <= int(out[0].mean(axis=1).argmax()) <= 33
    assert scores[0] == pytest.approx(0.9)


def test_padding_reflects_the_content_instead_of_flat_bands() -> None:
    # given a ramp image
    image = np.tile(np.linspace(0, 255, 40, dtype=np.uint8)[None, :, None], (100, 1, 3))
    # when
    out = fit_square(image, 64, "pad")
    _, _, x0, _ = content_box(100, 40, 64, "pad")
    # then the pad is a mirror of the content, not a constant
    assert x0 > 0
    assert len(np.unique(out[:, :x0, 0])) > 1


def test_uncrop_returns_maps_of_the_content_in_the_squashed_layout() -> None:
    # given a map that is 1 inside the content box, 0 in the padding
    box = content_box(100, 40, 64, "pad")
    maps = np.zeros((1, 64, 64), np.float32)
    y0, y1, x0, x1 = box
    maps[0, y0:y1, x0:x1] = 1.0
    # when
    out = uncrop_maps(maps, [box])
    # then the padding is gone: every pixel belongs to the image
    assert out.shape == (1, 64, 64)
    np.testing.assert_allclose(out, 1.0)


def test_resize_images_validates_and_pads_every_image() -> None:
    # when
    out = resize_images([_tall_crack(), _tall_crack(50, 90)], 64, "pad")
    # then
    assert out.shape == (2, 64, 64, 3)
    assert out.dtype == np.uint8


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_is_a_valid_config(name: str) -> None:
    # when
    cfg = preset_config(name)  # type: ignore[arg-type]
    # then
    assert cfg.aspect in ("tile", "pad")
    assert cfg.image_size % 32 == 0


def test_overrides_merge_into_a_preset_section_by_section() -> None:
    # when
    cfg = preset_config("cpu", {"stage1": {"iters": 7}})
    # then the other stage1 keys keep the preset's values
    assert cfg.stage1.iters == 7
    assert cfg.stage1.batch_size == PRESETS["cpu"]["stage1"]["batch_size"]
    assert merge({"a": {"b": 1, "c": 2}}, {"a": {"c": 3}}) == {"a": {"b": 1, "c": 3}}
